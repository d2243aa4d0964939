"""The units that flow through a use case's hot path: columnar batches, not records.

:class:`Records` holds one batch column-wise — ids, keys, event times and numeric
columns as numpy arrays — so parsing, dispatch, reduction and inference touch whole
arrays. :class:`DeadLetter` is a record that could not go on, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np

__all__ = ["DeadLetter", "Records", "splitmix64"]


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be processed: the original bytes and why.

    ``topic``/``partition``/``offset`` say where it came from; ``stage`` which step
    refused it.
    """

    value: bytes | None
    key: bytes | None
    reason: str
    topic: str
    partition: int
    offset: int
    stage: str = "parse"

    @classmethod
    def of_message(
        cls,
        batch: Any,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        stage: str,
    ) -> DeadLetter:
        """The message at ``offset`` of a consumed ``batch`` (topic, partition), and why."""
        return cls(value, key, reason, batch.topic, batch.partition, offset, stage)


@dataclass
class Records:
    """A batch of records (or reduced rows) of one use case, column-wise.

    ``ids`` are stable numeric identities (``partition << 48 | offset`` for raw records)
    used for sampling; ``record_ids`` are their string form carried into predictions and
    samples; ``times`` are event times in epoch milliseconds.
    """

    record_ids: list[str]
    ids: np.ndarray
    keys: list[str]
    times: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    #: The numeric columns as one ``[rows, len(block_names)]`` array when the parser
    #: made them so: the model input without a copy per column.
    block: np.ndarray | None = None
    block_names: tuple[str, ...] = ()
    #: The original message bytes of each row, kept where a row may later become a dead
    #: letter (windows, stateful rules), so that dead letter carries what was consumed.
    raw: list[bytes | None] | None = None

    def __len__(self) -> int:
        return len(self.record_ids)

    def matrix(self, names: Sequence[str], dtype: type = np.float32) -> np.ndarray:
        """The columns ``names`` as one ``[rows, len(names)]`` array (model input)."""
        if not names:
            return np.empty((len(self), 0), dtype=dtype)
        if self.block is not None and tuple(names) == self.block_names:
            return self.block.astype(dtype, copy=False)
        return np.column_stack([self.columns[n] for n in names]).astype(dtype, copy=False)

    def take(self, index: np.ndarray) -> Records:
        """The rows at ``index`` (an integer or boolean array)."""
        positions = np.flatnonzero(index) if index.dtype == bool else index
        n = len(positions)
        if n > 1 and positions[-1] - positions[0] == n - 1 and (np.diff(positions) == 1).all():
            # a run of rows (a window's, in arrival order): the lists are sliced
            run = slice(int(positions[0]), int(positions[0]) + n)
            pick: Callable[[list[Any]], list[Any]] = lambda items: items[run]  # noqa: E731
        else:
            getter = itemgetter(*positions.tolist()) if n > 1 else None
            pick = lambda items: (  # noqa: E731
                list(getter(items)) if getter else [items[i] for i in positions.tolist()]
            )
        return self._derive(
            pick(self.record_ids),
            self.ids[positions],
            pick(self.keys),
            self.times[positions],
            lambda a: a[positions],
            None if self.raw is None else pick(self.raw),
        )

    def rows(self, start: int, stop: int) -> Records:
        """The rows ``start:stop`` (views of the arrays, slices of the lists)."""
        return self._derive(
            self.record_ids[start:stop],
            self.ids[start:stop],
            self.keys[start:stop],
            self.times[start:stop],
            lambda a: a[start:stop],
            None if self.raw is None else self.raw[start:stop],
        )

    def slices(self, size: int) -> list[Records]:
        """Consecutive pieces of at most ``size`` rows."""
        if len(self) <= size:
            return [self]
        return [
            self._derive(
                self.record_ids[i : i + size],
                self.ids[i : i + size],
                self.keys[i : i + size],
                self.times[i : i + size],
                lambda a, i=i: a[i : i + size],  # type: ignore[misc]
                None if self.raw is None else self.raw[i : i + size],
            )
            for i in range(0, len(self), size)
        ]

    def _derive(
        self,
        record_ids: list[str],
        ids: np.ndarray,
        keys: list[str],
        times: np.ndarray,
        rows: Callable[[np.ndarray], np.ndarray],
        raw: list[bytes | None] | None = None,
    ) -> Records:
        """A batch of some of these rows; ``rows`` selects them from any array."""
        block = None if self.block is None else rows(self.block)
        return Records(
            record_ids=record_ids,
            ids=ids,
            keys=keys,
            times=times,
            columns=_columns(block, self.block_names, self.columns, rows),
            block=block,
            block_names=self.block_names,
            raw=raw,
        )

    @staticmethod
    def concat(parts: Sequence[Records]) -> Records:
        """One batch of all ``parts`` in order (they share their column names)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        same = all(p.block is not None and p.block_names == first.block_names for p in parts)
        block = np.concatenate([p.block for p in parts]) if same else None  # type: ignore[misc]
        names = first.block_names if same else ()
        loose = {
            n: np.concatenate([p.columns[n] for p in parts])
            for n in first.columns
            if n not in names
        }
        return Records(
            record_ids=[r for p in parts for r in p.record_ids],
            ids=np.concatenate([p.ids for p in parts]),
            keys=[k for p in parts for k in p.keys],
            times=np.concatenate([p.times for p in parts]),
            columns=_columns(block, names, loose, lambda a: a),
            block=block,
            block_names=names,
            raw=(
                [v for p in parts for v in p.raw]  # type: ignore[union-attr]
                if all(p.raw is not None for p in parts)
                else None
            ),
        )


def _columns(
    block: np.ndarray | None,
    names: tuple[str, ...],
    others: dict[str, np.ndarray],
    rows: Callable[[np.ndarray], np.ndarray],
) -> dict[str, np.ndarray]:
    """Column views into ``block`` plus the selected rows of any other columns."""
    cols = {} if block is None else dict(zip(names, block.T, strict=True))  # column views
    for n, v in others.items():
        if n not in cols:
            cols[n] = rows(v)
    return cols


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A stable 64-bit mix of integer ids (the same in every process and version)."""
    z = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))
