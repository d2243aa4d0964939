"""Sampling: which predictions, with their reduced inputs, go to the sample store.

A record is kept when its stable hash falls under ``rate`` — the same records are
chosen on every replay, so de-duplication by ``record_id`` removes replays exactly —
or when the ``keep_when`` SQL condition on outputs and features holds (polars SQL,
e.g. ``"label = 1"`` or ``"probabilities_1 > 0.9"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from mlexec.errors import TopologyError
from mlexec.operators.infer import Predictions
from mlexec.operators.records import splitmix64

__all__ = ["Sampler", "SamplingError", "condition_frame"]

_TO_UNIT = 2.0**-53


class SamplingError(TopologyError, ValueError):
    """A ``keep_when`` condition that polars SQL cannot parse or evaluate."""


def condition_frame(pred: Predictions, features: Sequence[str]) -> pl.DataFrame:
    """Columns a condition may use: key, features, outputs (``name_i`` per vector column)."""
    cols: dict[str, object] = {"key": pred.records.keys}
    for name in features:
        column = pred.records.columns[name]
        if column.ndim > 1:
            continue  # a sequence: not a condition's column
        cols[name] = column.tolist() if column.dtype == object else column
    for name, arr in pred.outputs.items():
        if arr.ndim == 1:
            cols[name] = arr.tolist() if arr.dtype == object else arr
        else:
            for i in range(arr.shape[1]):
                cols[f"{name}_{i}"] = arr[:, i]
    return pl.DataFrame(cols)


class Sampler:
    """Decide per prediction whether to keep it, and why (``rate`` or ``condition``)."""

    def __init__(self, rate: float, keep_when: str | None, features: Sequence[str]) -> None:
        self.rate = rate
        self.keep_when = keep_when
        self.features = list(features)
        try:
            self._condition = pl.sql_expr(keep_when) if keep_when else None
        except Exception as exc:
            msg = f"a polars SQL condition, found {keep_when!r} ({exc})"
            raise SamplingError(msg) from exc

    def check(self, example: Predictions) -> None:
        """Evaluate the condition once on ``example`` so a bad column name fails early."""
        self(example)

    def __call__(self, pred: Predictions) -> tuple[np.ndarray, np.ndarray]:
        """(keep mask, reason per row: ``"condition"``, ``"rate"`` or ``""``)."""
        n = len(pred.records)
        unit = (splitmix64(pred.records.ids) >> np.uint64(11)).astype(np.float64) * _TO_UNIT
        by_rate = unit < self.rate
        by_condition = np.zeros(n, dtype=bool)
        if self._condition is not None and n:
            try:
                result = condition_frame(pred, self.features).select(self._condition.alias("keep"))
            except Exception as exc:
                msg = f"keep_when {self.keep_when!r} cannot be evaluated: {exc}"
                raise SamplingError(msg) from exc
            by_condition = result["keep"].fill_null(False).to_numpy().astype(bool)
        reasons = np.where(by_condition, "condition", np.where(by_rate, "rate", ""))
        return by_rate | by_condition, reasons
