"""The bytewax sink that writes sample rows into the site's sample store.

Rows are buffered per table and inserted as one columnar (Arrow) statement when a
table holds ``max_rows`` rows or its oldest row is ``max_age`` old, and always at a
snapshot and at close — ClickHouse wants few large inserts. A failed insert keeps the
rows: they are retried with backoff and, until they are in, they are the partition's
recovery state, so a crash loses nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from mlexec.connectors.samplestore import SamplesTable, SampleStore, SampleStoreError, open_store

__all__ = ["SampleStoreSink", "rows_to_arrow"]

_log = logging.getLogger(__name__)

#: (table name, rows as dicts)
Pending = dict[str, list[dict[str, Any]]]


def rows_to_arrow(table: SamplesTable, rows: list[dict[str, Any]]) -> pa.Table:
    """Sample rows (dicts with every column) as an Arrow table in the table's schema."""
    schema = table.arrow_schema()
    nan = float("nan")
    columns = {}
    for f in schema:
        values = [r.get(f.name) for r in rows]
        if pa.types.is_floating(f.type):  # JSON has no NaN: a missing value came as null
            values = [nan if v is None else v for v in values]
        elif pa.types.is_string(f.type):
            values = ["" if v is None else v for v in values]
        columns[f.name] = pa.array(values, f.type)
    return pa.table(columns, schema=schema)


class _StorePartition(StatefulSinkPartition[tuple[str, list[dict[str, Any]]], Pending]):
    def __init__(
        self,
        url: str,
        tables: Mapping[str, SamplesTable],
        max_rows: int,
        max_age: float,
        resume: Pending | None,
    ) -> None:
        self._store: SampleStore = open_store(url, owner=True)
        self._tables = dict(tables)
        self._max_rows = max_rows
        self._max_age = max_age
        self._pending: Pending = {k: list(v) for k, v in (resume or {}).items()}
        self._oldest: dict[str, float] = {k: time.monotonic() for k in self._pending}
        self._retry_at = 0.0
        self._backoff = 0.5

    def write_batch(self, values: list[tuple[str, list[dict[str, Any]]]]) -> None:
        now = time.monotonic()
        for table, rows in values:
            self._pending.setdefault(table, []).extend(rows)
            self._oldest.setdefault(table, now)
        due = [
            t
            for t, rows in self._pending.items()
            if len(rows) >= self._max_rows or now - self._oldest.get(t, now) >= self._max_age
        ]
        if due and now >= self._retry_at:
            self._flush(due)
        # A long outage: past the cap, wait here for the store rather than hold the rows
        # in memory (and in every snapshot); the samples wait in Kafka meanwhile.
        while sum(len(r) for r in self._pending.values()) > self._max_rows * 4:
            time.sleep(max(0.0, self._retry_at - time.monotonic()))
            self._flush(list(self._pending))

    def _flush(self, tables: list[str]) -> bool:
        for name in tables:
            rows = self._pending.get(name)
            if not rows:
                continue
            try:
                self._store.insert(self._tables[name], rows_to_arrow(self._tables[name], rows))
            except SampleStoreError as exc:
                self._retry_at = time.monotonic() + self._backoff
                _log.warning(
                    "sample store insert of %d rows failed, will retry in %.1fs: %s",
                    len(rows),
                    self._backoff,
                    exc,
                )
                self._backoff = min(self._backoff * 2, 30.0)
                return False
            del self._pending[name]
            self._oldest.pop(name, None)
            self._backoff = 0.5
        return True

    def snapshot(self) -> Pending:
        if time.monotonic() >= self._retry_at:  # during an outage: at the backoff it said
            self._flush(list(self._pending))
        return {k: list(v) for k, v in self._pending.items()}

    def close(self) -> None:
        try:
            if not self._flush(list(self._pending)):
                left = sum(len(v) for v in self._pending.values())
                msg = f"{left} sample rows could not be stored at close"
                raise SampleStoreError(msg)
        finally:
            self._store.close()


class SampleStoreSink(FixedPartitionedSink[tuple[str, list[dict[str, Any]]], Pending]):
    """Items are ``(table name, rows)``; one partition owns the store connection."""

    def __init__(
        self,
        url: str,
        tables: Mapping[str, SamplesTable],
        *,
        max_rows: int = 50_000,
        max_age: float = 1.0,
    ) -> None:
        self._url = url
        self._tables = dict(tables)
        self._max_rows = max_rows
        self._max_age = max_age

    def list_parts(self) -> list[str]:
        return ["store"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(
        self, step_id: str, for_part: str, resume_state: Pending | None
    ) -> _StorePartition:
        return _StorePartition(self._url, self._tables, self._max_rows, self._max_age, resume_state)
