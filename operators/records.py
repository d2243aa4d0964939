"""The units that flow through a use case's hot path: columnar batches, not records.

:class:`Records` holds one batch column-wise — ids, keys, event times and numeric
columns as numpy arrays — so parsing, dispatch, reduction and inference touch whole
arrays. :class:`DeadLetter` is a record that could not go on, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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

    def __len__(self) -> int:
        return len(self.record_ids)

    def matrix(self, names: Sequence[str], dtype: type = np.float32) -> np.ndarray:
        """The columns ``names`` as one ``[rows, len(names)]`` array (model input)."""
        if not names:
            return np.empty((len(self), 0), dtype=dtype)
        return np.column_stack([self.columns[n] for n in names]).astype(dtype, copy=False)

    def take(self, index: np.ndarray) -> Records:
        """The rows at ``index`` (an integer or boolean array)."""
        positions = np.flatnonzero(index) if index.dtype == bool else index
        return Records(
            record_ids=[self.record_ids[i] for i in positions],
            ids=self.ids[positions],
            keys=[self.keys[i] for i in positions],
            times=self.times[positions],
            columns={k: v[positions] for k, v in self.columns.items()},
        )

    def slices(self, size: int) -> list[Records]:
        """Consecutive pieces of at most ``size`` rows."""
        if len(self) <= size:
            return [self]
        return [
            Records(
                record_ids=self.record_ids[i : i + size],
                ids=self.ids[i : i + size],
                keys=self.keys[i : i + size],
                times=self.times[i : i + size],
                columns={k: v[i : i + size] for k, v in self.columns.items()},
            )
            for i in range(0, len(self), size)
        ]

    @staticmethod
    def concat(parts: Sequence[Records]) -> Records:
        """One batch of all ``parts`` in order (they share their column names)."""
        if len(parts) == 1:
            return parts[0]
        names = parts[0].columns.keys()
        return Records(
            record_ids=[r for p in parts for r in p.record_ids],
            ids=np.concatenate([p.ids for p in parts]),
            keys=[k for p in parts for k in p.keys],
            times=np.concatenate([p.times for p in parts]),
            columns={n: np.concatenate([p.columns[n] for p in parts]) for n in names},
        )


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
