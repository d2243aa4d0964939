"""Deciding which predictions become actions: a filter on the outputs and a per-key debounce.

Both work on decoded prediction objects (the ``<uc>.predictions`` contract). The
filter is a polars SQL condition evaluated on a batch at once; the debounce keeps, per
key, when it last let an action through and the value it carried, bounded in keys and
with an injectable clock so tests decide what time it is.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl

from mlexec.errors import TopologyError

__all__ = ["ActionFilter", "ActionFilterError", "Debouncer", "action_frame"]

_META = ("key", "id", "time", "model", "version", "variant")


class ActionFilterError(TopologyError, ValueError):
    """A ``when`` condition that polars SQL cannot parse or evaluate."""


def action_frame(predictions: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """Columns a condition may use: the prediction's metadata and its outputs flattened."""
    cols: dict[str, list[Any]] = {name: [p.get(name) for p in predictions] for name in _META}
    for p in predictions:  # other top-level scalars (an alert's severity, use case, ...)
        for name, value in p.items():
            if name not in cols and name != "outputs" and not isinstance(value, dict | list):
                cols[name] = [q.get(name) for q in predictions]
    names: dict[str, int] = {}
    for p in predictions:
        for name, value in p.get("outputs", {}).items():
            width = len(value) if isinstance(value, list) else 0
            names[name] = max(names.get(name, 0), width)
    for name, width in names.items():
        if width == 0:
            cols[name] = [p.get("outputs", {}).get(name) for p in predictions]
        else:
            for i in range(width):
                cols[f"{name}_{i}"] = [
                    _item(p.get("outputs", {}).get(name), i) for p in predictions
                ]
    return pl.DataFrame(cols, strict=False)


def _item(value: Any, i: int) -> Any:
    return value[i] if isinstance(value, list) and i < len(value) else None


class ActionFilter:
    """Keep the predictions a ``when`` condition holds for (all, without one)."""

    def __init__(self, when: str | None) -> None:
        self.when = when
        try:
            self._expr = pl.sql_expr(when) if when else None
        except Exception as exc:
            msg = f"a polars SQL condition, found {when!r} ({exc})"
            raise ActionFilterError(msg) from exc

    def __call__(self, predictions: Sequence[dict[str, Any]]) -> np.ndarray:
        """A keep mask, one entry per prediction."""
        if self._expr is None or not predictions:
            return np.ones(len(predictions), dtype=bool)
        try:
            result = action_frame(predictions).select(self._expr.alias("keep"))
        except Exception as exc:
            msg = f"when {self.when!r} cannot be evaluated: {exc}"
            raise ActionFilterError(msg) from exc
        return result["keep"].fill_null(False).to_numpy().astype(bool)


class Debouncer:
    """Per key, at most one action per ``every`` and/or only when ``on_change`` changes.

    ``clock`` returns seconds (default ``time.time``). The state — per key the time of
    the last action and the value it carried — is bounded to ``max_keys``, forgetting
    the keys acted on longest ago; :meth:`state` and ``state=`` carry it across restarts.
    """

    def __init__(
        self,
        every: timedelta | None,
        on_change: str | None,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.time,
        state: list[list[Any]] | None = None,
    ) -> None:
        self.every = every.total_seconds() if every is not None else None
        self.on_change = on_change
        self.max_keys = max_keys
        self.clock = clock
        self._last: OrderedDict[str, tuple[float, Any]] = OrderedDict(
            (k, (t, v)) for k, t, v in (state or [])
        )

    def state(self) -> list[list[Any]]:
        return [[k, t, v] for k, (t, v) in self._last.items()]

    def __call__(self, predictions: Sequence[dict[str, Any]]) -> np.ndarray:
        """A keep mask; the kept ones count as acted on now."""
        keep = np.zeros(len(predictions), dtype=bool)
        now = self.clock()
        for i, p in enumerate(predictions):
            key = str(p.get("key"))
            value = p.get("outputs", {}).get(self.on_change) if self.on_change else None
            seen = self._last.get(key)
            if seen is not None:
                at, before = seen
                if self.every is not None and now - at < self.every:
                    continue
                if self.on_change is not None and value == before:
                    continue
            keep[i] = True
            self._last[key] = (now, value)
            self._last.move_to_end(key)
            if len(self._last) > self.max_keys:
                self._last.popitem(last=False)
        return keep
