"""Reduction: the deterministic step that shapes a dispatch's records for the model.

- identity: the records go to the model as they are (per-record models);
- aggregate: per key (and window, when the dispatch made windows) each declared
  field is aggregated by a polars expression; the reduced row's columns are
  ``<field>_<aggregation>`` and its id is ``<usecase>:<key>:<window start>``.

Standard deviations are population ones (``ddof=0``), so a one-record group gives 0
rather than a missing value the model cannot take.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import polars as pl

from operators.dispatch import Dispatched
from operators.records import Records

__all__ = ["AGGREGATION_EXPRESSIONS", "Reducer"]

#: Aggregation name → polars expression over one column.
AGGREGATION_EXPRESSIONS: dict[str, Callable[[pl.Expr], pl.Expr]] = {
    "mean": lambda c: c.mean(),
    "std": lambda c: c.std(ddof=0),
    "min": lambda c: c.min(),
    "max": lambda c: c.max(),
    "sum": lambda c: c.sum(),
    "count": lambda c: c.count().cast(pl.Float64),
    "first": lambda c: c.first(),
    "last": lambda c: c.last(),
    "rms": lambda c: (c * c).mean().sqrt(),
    "ptp": lambda c: c.max() - c.min(),
}


class Reducer:
    """Reduce a :class:`Dispatched` batch to the rows the model sees."""

    def __init__(self, usecase: str, fields: Mapping[str, Sequence[str]] | None) -> None:
        self.usecase = usecase
        self.fields = {k: list(v) for k, v in (fields or {}).items()}
        self.columns = [f"{f}_{a}" for f, aggs in self.fields.items() for a in aggs]
        self._exprs = [
            AGGREGATION_EXPRESSIONS[a](pl.col(f)).alias(f"{f}_{a}")
            for f, aggs in self.fields.items()
            for a in aggs
        ]

    def __call__(self, batch: Dispatched) -> Records | None:
        records = batch.records
        if records is None or len(records) == 0:
            return None
        if not self.fields:
            return records
        return self._aggregate(records, batch.window_starts)

    def _aggregate(self, records: Records, window_starts: np.ndarray | None) -> Records:
        starts = window_starts if window_starts is not None else np.full(len(records), -1, np.int64)
        frame = pl.DataFrame(
            {
                "key": records.keys,
                "window": starts,
                "time": records.times,
                **{f: records.columns[f] for f in self.fields},
            }
        ).sort(["key", "window", "time"], maintain_order=True)
        out = frame.group_by(["key", "window"], maintain_order=True).agg(
            pl.col("time").min().alias("first_time"), *self._exprs
        )
        keys = out["key"].to_list()
        windows = out["window"].to_numpy()
        times = np.where(windows >= 0, windows, out["first_time"].to_numpy()).astype(np.int64)
        record_ids = [f"{self.usecase}:{k}:{t}" for k, t in zip(keys, times, strict=True)]
        return Records(
            record_ids=record_ids,
            ids=_ids_of(record_ids),
            keys=keys,
            times=times,
            columns={c: out[c].to_numpy().astype(np.float64) for c in self.columns},
        )


def _ids_of(record_ids: list[str]) -> np.ndarray:
    return np.fromiter(
        ((zlib.crc32(r.encode()) << 32) | zlib.crc32(r[::-1].encode()) for r in record_ids),
        dtype=np.uint64,
        count=len(record_ids),
    )
