"""References: a use case's reference data, profiled once.

A time range of its samples, a file, or the training data recorded with a model version.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
import pyarrow as pa

from mlexec.connectors.samplestore import SamplesTable, SampleStore
from mlexec.monitoring.columns import (
    MS_TIME,
    REFERENCE_COLUMNS,
    MonitorError,
    arrow_table,
    monitoring_of,
    ms,
    now_utc,
    num,
)
from mlexec.monitoring.sql import (
    NULLS_TABLE,
    REFERENCES_TABLE,
    bin_counts_sql,
    profile_sql,
    quote,
    reference_table,
    sql_time,
)
from mlexec.topologies.plan import UseCasePlan
from mlexec.topologies.schema import (
    FileReference,
    ModelReference,
    RangeReference,
)
from mlexec.usecase import watchable_columns

__all__ = ["References", "read_reference_file"]


class References:
    """The reference profiles drift is measured against, stored in ``mlexec_references``."""

    def __init__(self, store: SampleStore, tables: dict[str, SamplesTable]) -> None:
        self.store = store
        self.tables = tables
        self._db = f"`{store.database}`"

    def reference_name(self, uc: UseCasePlan) -> str:
        """The stored name of the use case's reference."""
        ref = monitoring_of(uc).reference
        if isinstance(ref, ModelReference):
            return f"model:{ref.version or uc.usecase.model.version}"
        if ref is None:  # valid when only quality is judged, and it has a declared range
            msg = (
                f"{uc.name} declares no monitoring.reference: the watched values' statistics "
                "are measured against one (kind range, file or model)"
            )
            raise MonitorError(msg)
        return ref.name()

    def record_reference(self, uc: UseCasePlan, frame: pl.DataFrame, name: str) -> int:
        """Store ``frame``'s rows as reference ``name`` and profile them; returns the rows.

        ``frame`` must hold every watched column; a newer recording of the same name
        replaces the older one.
        """
        columns = list(monitoring_of(uc).watch)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            msg = f"the reference data for {uc.name} lacks the watched columns {missing}"
            raise MonitorError(msg)
        recorded = now_utc()
        table = {
            "reference": pa.array([name] * frame.height, pa.string()),
            "recorded_at": pa.array([ms(recorded)] * frame.height, pa.int64()).cast(MS_TIME),
        }
        for col in watchable_columns(self.tables[uc.name]):
            if col in frame.columns:
                values = frame.get_column(col).cast(pl.Float64).fill_null(float("nan"))
                table[col] = pa.array(values.to_numpy(), pa.float64())
        self.store.insert(reference_table(uc), pa.table(table))
        source = (
            f"{self._db}.`{reference_table(uc)}` WHERE reference = {quote(name)} AND "
            f"recorded_at = {sql_time(recorded)}"
        )
        self._profile(uc, name, source, columns)
        return frame.height

    def ensure_reference(self, uc: UseCasePlan, now: datetime | None = None) -> str:
        """Profile the use case's reference unless every watched column has one stored.

        A range reference is profiled once its range is over (``now`` past its end).
        """
        mon = monitoring_of(uc)
        name = self.reference_name(uc)
        have = self.store.query(
            f"SELECT column FROM {self._db}.{REFERENCES_TABLE} FINAL WHERE usecase = "
            f"{quote(uc.name)} AND reference = {quote(name)}"
        )
        stored = set(have.get_column("column").to_list()) if have.height else set()
        if all(c in stored for c in mon.watch):
            return name
        ref = mon.reference
        if isinstance(ref, RangeReference):
            if now is not None and now < ref.end:
                msg = (
                    f"the reference range of {uc.name} ends at {ref.end.isoformat()}; "
                    "it is profiled once it is over"
                )
                raise MonitorError(msg)
            self._profile(uc, name, self.reference_source(uc), list(mon.watch))
        elif isinstance(ref, FileReference):
            self.record_reference(uc, read_reference_file(ref.path), name)
        else:
            latest = self.store.query(
                f"SELECT max(recorded_at) AS at, count() AS n FROM {self._db}.`{reference_table(uc)}` "
                f"WHERE reference = {quote(name)}"
            )
            if not latest.height or not latest.get_column("n")[0]:
                msg = (
                    f"no training data is recorded as reference {name!r} of {uc.name}; record it "
                    f"with: mlexec monitor reference TOPOLOGY --usecase {uc.name} --data FILE"
                )
                raise MonitorError(msg)
            at = latest.get_column("at")[0]
            source = (
                f"{self._db}.`{reference_table(uc)}` WHERE reference = {quote(name)} AND "
                f"recorded_at = {sql_time(at)}"
            )
            self._profile(uc, name, source, list(mon.watch))
        return name

    def reference_source(self, uc: UseCasePlan) -> str:
        """The reference's rows as a table expression (with its ``WHERE``), once profiled."""
        ref = monitoring_of(uc).reference
        if isinstance(ref, RangeReference):
            return (
                f"{self._db}.`{uc.table}` FINAL WHERE event_time >= {sql_time(ref.start)} "
                f"AND event_time < {sql_time(ref.end)}"
            )
        name = self.reference_name(uc)
        table = f"{self._db}.`{reference_table(uc)}`"
        return (
            f"{table} WHERE reference = {quote(name)} AND recorded_at = (SELECT "
            f"max(recorded_at) FROM {table} WHERE reference = {quote(name)})"
        )

    def _profile(self, uc: UseCasePlan, name: str, source: str, columns: list[str]) -> None:
        mon = monitoring_of(uc)
        prof = self.store.query(profile_sql(source, columns, mon.bins)).row(0, named=True)
        if prof["rows"] < mon.min_rows:
            msg = (
                f"the reference {name!r} of {uc.name} holds {prof['rows']} rows; "
                f"monitoring.min_rows is {mon.min_rows}"
            )
            raise MonitorError(msg)
        edges = {c: prof[f"c{i}_edges"] for i, c in enumerate(columns)}
        counts = self.store.query(bin_counts_sql(source, edges)).row(0, named=True)
        now = ms(now_utc())
        rows = [
            {
                "usecase": uc.name,
                "reference": name,
                "column": col,
                "rows": prof["rows"],
                "n": prof[f"c{i}_n"],
                "mean": num(prof[f"c{i}_mean"]),
                "std": num(prof[f"c{i}_std"]),
                "min": num(prof[f"c{i}_min"]),
                "max": num(prof[f"c{i}_max"]),
                "edges": [float(e) for e in prof[f"c{i}_edges"]],
                "counts": [int(c) for c in counts[f"c{i}_counts"]],
                "grid": [float(g) for g in prof[f"c{i}_grid"]],
            }
            for i, col in enumerate(columns)
        ]
        for row in rows:
            row["created_at"] = now
        self.store.insert(REFERENCES_TABLE, arrow_table(rows, REFERENCE_COLUMNS))
        # a new profile of the reference: its no-drift distributions are drawn again
        exists = self.store.query(f"EXISTS TABLE {self._db}.{NULLS_TABLE}")
        if exists.height and exists.row(0)[0]:
            self.store.command(
                f"DELETE FROM {self._db}.{NULLS_TABLE} WHERE usecase = {quote(uc.name)} "
                f"AND reference = {quote(name)}"
            )


def read_reference_file(path: str) -> pl.DataFrame:
    """Reference rows from a Parquet or CSV file."""
    file = Path(path)
    if not file.is_file():
        msg = f"the reference file {path} does not exist"
        raise MonitorError(msg)
    try:
        return pl.read_parquet(file) if file.suffix.lower() == ".parquet" else pl.read_csv(file)
    except Exception as exc:
        msg = f"cannot read the reference file {path}: {exc}"
        raise MonitorError(msg) from exc
