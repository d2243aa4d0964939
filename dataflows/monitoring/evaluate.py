"""Evaluation: one statement each for drift and quality, accuracy against labels, and health."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mlexec.connectors.samplestore import SampleStore
from mlexec.monitoring.columns import (
    DRIFT_COLUMNS,
    MonitorError,
    arrow_table,
    monitoring_of,
    ms,
    num,
)
from mlexec.monitoring.references import References
from mlexec.monitoring.sql import (
    DRIFT_TABLE,
    METRICS_TABLE,
    Alert,
    accuracy_sql,
    drift_sql,
    feedback_table,
    quote,
    sql_time,
)
from mlexec.topologies.plan import UseCasePlan
from mlexec.topologies.schema import (
    STATISTICS,
    Monitoring,
    Thresholds,
)

__all__ = ["Evaluation", "Evaluator"]


@dataclass
class Evaluation:
    """One evaluation of one use case."""

    usecase: str
    window_start: datetime
    window_end: datetime
    rows: int = 0
    reference: str = ""
    #: (subject, statistic) → value: every statistic of every watched column, the accuracy
    #: metric per ``version/variant``, and ``("health", measure)`` for judged health
    values: dict[tuple[str, str], float] = field(default_factory=dict)
    #: per (model version, variant): labelled, mae, rmse, error_rate
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    #: measure → latest value
    health: dict[str, float] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    #: (subject, statistic) → the thresholds judged against
    thresholds: dict[tuple[str, str], Thresholds] = field(default_factory=dict)
    #: Why a part gave no verdict (too few rows, no reference yet).
    notes: list[str] = field(default_factory=list)


class Evaluator:
    """Drift, quality, accuracy and health of a use case over a window; written to ``mlexec_drift``."""

    def __init__(self, store: SampleStore, references: References) -> None:
        self.store = store
        self.references = references
        self._db = f"`{store.database}`"

    def evaluate(self, uc: UseCasePlan, now: datetime) -> Evaluation:
        """Drift, quality, accuracy and health of one use case over the window ending ``now``."""
        mon = monitoring_of(uc)
        start = now - mon.window
        ev = Evaluation(uc.name, start, now)
        where = f"event_time >= {sql_time(start)} AND event_time < {sql_time(now)}"
        if mon.watch:
            try:
                ev.reference = self.references.reference_name(uc)
                self.references.ensure_reference(uc, now)
            except MonitorError as exc:
                ev.notes.append(str(exc))
            else:
                self._drift(uc, mon, ev, where)
        if mon.accuracy is not None:
            self._accuracy(uc, mon, ev, where)
        self._health(uc, mon, ev, now)
        self._write_drift(ev, now)
        return ev

    def _drift(
        self,
        uc: UseCasePlan,
        mon: Monitoring,
        ev: Evaluation,
        where: str,
    ) -> None:
        columns = list(mon.watch)
        ranges = {c: w.range for c, w in mon.watch.items()}
        source = f"{self._db}.`{uc.table}` FINAL WHERE {where}"
        sql = drift_sql(
            source, self.store.database, uc.name, ev.reference, columns, mon.bins, ranges
        )
        row = self.store.query(sql).row(0, named=True)
        ev.rows = int(row["rows"])
        if ev.rows < mon.min_rows:
            ev.notes.append(f"{ev.rows} samples in the window; drift needs {mon.min_rows}")
            return
        for i, col in enumerate(columns):
            for stat in STATISTICS:
                ev.values[(col, stat)] = num(row[f"c{i}_{stat}"])
            for stat, limits in mon.watch[col].thresholds().items():
                ev.thresholds[(col, stat)] = limits

    def _accuracy(
        self,
        uc: UseCasePlan,
        mon: Monitoring,
        ev: Evaluation,
        where: str,
    ) -> None:
        acc = mon.accuracy
        assert acc is not None
        samples = f"{self._db}.`{uc.table}`"
        feedback = f"{self._db}.`{feedback_table(uc)}`"
        frame = self.store.query(accuracy_sql(samples, feedback, acc.output, where))
        for row in frame.iter_rows(named=True):
            ev.accuracy.append(row)
            if row["labelled"] >= acc.min_labels:
                subject = f"{row['version']}/{row['variant']}"
                ev.values[(subject, acc.metric)] = float(row[acc.metric])
                ev.thresholds[(subject, acc.metric)] = acc.thresholds

    def _health(
        self,
        uc: UseCasePlan,
        mon: Monitoring,
        ev: Evaluation,
        now: datetime,
    ) -> None:
        recent = now - max(mon.every * 3, timedelta(minutes=1))
        frame = self.store.query(
            f"SELECT site, part, name, argMax(value, time) AS value FROM {self._db}.{METRICS_TABLE} "
            f"WHERE usecase = {quote(uc.name)} AND time >= {sql_time(recent)} "
            "GROUP BY site, part, name"
        )
        for row in frame.iter_rows(named=True):
            name = row["name"]
            ev.health[name] = max(ev.health.get(name, 0.0), float(row["value"]))
        for name in ("lag", "deadletter_rate", "latency_p99_ms", "store_backlog"):
            limits = getattr(mon.health, name)
            if limits is not None and name in ev.health:
                ev.values[("health", name)] = ev.health[name]
                ev.thresholds[("health", name)] = limits

    def _write_drift(self, ev: Evaluation, now: datetime) -> None:
        rows = [
            (col, stat, value)
            for (col, stat), value in ev.values.items()
            if col != "health" and value == value
        ]
        if not rows:
            return
        self.store.insert(
            DRIFT_TABLE,
            arrow_table(
                [
                    {
                        "time": ms(now),
                        "usecase": ev.usecase,
                        "column": col,
                        "statistic": stat,
                        "value": value,
                        "severity": (
                            limits.severity(value)
                            if (limits := ev.thresholds.get((col, stat)))
                            else None
                        )
                        or "",
                        "rows": ev.rows,
                        "window_start": ms(ev.window_start),
                        "window_end": ms(ev.window_end),
                        "reference": ev.reference,
                    }
                    for col, stat, value in rows
                ],
                DRIFT_COLUMNS,
            ),
        )
