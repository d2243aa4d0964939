"""``mlexec monitor``: drift, data quality, accuracy and runtime health → alerts.

A :class:`Monitor` serves the use cases whose store stage is on its site, on the
site's sample store. Each evaluation (``mlexec monitor run``, once or every
``monitoring.every``):

1. stores what arrived on the use cases' ``<uc>.feedback`` topics (labels) and on
   ``mlexec.metrics`` (the dataflows' runtime health, also mirrored from edge sites) —
   from offsets it keeps in its own checkpoint, so nothing is stored twice or skipped;
2. writes the lag and store backlog of the site's own dataflows, computed from their
   recovery state (end offsets minus processed offsets), into the metrics table;
3. per use case with ``monitoring``: makes sure the reference profile is stored, runs
   one drift-and-quality statement over the window's samples, the accuracy statement
   over samples joined with labels, and reads the latest runtime health; every value
   goes to ``mlexec_drift``; values crossing their thresholds become alerts in
   ``mlexec_alerts`` and on ``mlexec.alerts`` — only changes (a new or different
   severity, or ``resolved``), so a lasting drift alerts once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow as pa

from mlexec.connectors.kafka import client_config, ensure_topics, produce_records, read_topic
from mlexec.connectors.runner import Checkpoint
from mlexec.connectors.samplestore import SampleStore
from mlexec.monitoring.sql import (
    ALERTS_TABLE,
    DRIFT_TABLE,
    METRICS_TABLE,
    REFERENCES_TABLE,
    Alert,
    accuracy_sql,
    bin_counts_sql,
    drift_sql,
    feedback_ddl,
    feedback_table,
    judge,
    profile_sql,
    quote,
    reference_rows_ddl,
    reference_table,
    sql_time,
    tables_ddl,
)
from mlexec.operators.emit import deadletter_headers
from mlexec.operators.records import DeadLetter
from mlexec.runtime.lag import LagUnknown, pipeline_lag, store_backlog
from mlexec.topologies.errors import MlexecError
from mlexec.topologies.plan import ALERTS_TOPIC, Plan, TopicSpec, UseCasePlan
from mlexec.topologies.schema import (
    STATISTICS,
    FileReference,
    ModelReference,
    Monitoring,
    RangeReference,
    Thresholds,
)
from mlexec.usecase import samples_table, watchable_columns

__all__ = [
    "Evaluation",
    "Monitor",
    "MonitorError",
    "feedback_table",
    "latest",
    "read_reference_file",
    "reference_table",
]

_log = logging.getLogger(__name__)

_MS = pa.timestamp("ms", tz="UTC")


class MonitorError(MlexecError):
    """A reference or an evaluation cannot be made; the message says what to do."""


def _now() -> datetime:
    return datetime.now(UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


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


class Monitor:
    """Monitoring of the use cases stored on one site."""

    def __init__(
        self,
        plan: Plan,
        site: str,
        store: SampleStore,
        *,
        usecase: str | None = None,
        source: str = "<topology>",
    ) -> None:
        self.plan = plan
        self.site = site
        self.store = store
        self.usecases = plan.chosen_at(site, usecase, stage="store")
        if usecase is not None and not self.usecases:
            msg = f"use case {usecase!r} is not stored on site {site!r}; monitor it where its store stage runs"
            raise MonitorError(msg)
        self.tables = {uc.name: samples_table(uc, source) for uc in self.usecases}
        settings = plan.topology.sites[site]
        self.conf = client_config(settings.kafka)
        self._state = Checkpoint(
            Path(settings.state_dir) / "monitor" / f"{plan.topology.name}-{site}.json"
        )
        self._db = f"`{store.database}`"

    # ----------------------------------------------------------------- tables

    def prepare(self) -> None:
        """Create its topics and tables: monitoring's, and each use case's samples and labels."""
        ensure_topics(
            self.conf,
            [
                TopicSpec(ALERTS_TOPIC, 1),
                *(self.plan.topic_spec(t) for t in self.plan.metrics_topics_at(self.site)),
                *(
                    TopicSpec(uc.feedback_topic, uc.usecase.input.partitions)
                    for uc in self.usecases
                ),
            ],
        )
        for ddl in tables_ddl(self.store.database):
            self.store.command(ddl)
        for uc in self.usecases:
            table = self.tables[uc.name]
            self.store.ensure_table(table)
            retention = int(uc.usecase.retention.total_seconds())
            self.store.command(feedback_ddl(self.store.database, feedback_table(uc), retention))
            columns = watchable_columns(table)
            for ddl in reference_rows_ddl(self.store.database, reference_table(uc), columns):
                self.store.command(ddl)

    # ----------------------------------------------------------------- ingest

    def ingest(self) -> dict[str, int]:
        """Store the labels and runtime health that arrived since the last call."""
        state = self._state.load() or {}
        offsets: dict[str, dict[str, int]] = state.get("offsets", {})
        stored = {"feedback": 0, "metrics": 0, "rejected": 0}
        for uc in self.usecases:
            topic = uc.feedback_topic
            messages = read_topic(self.conf, topic, start=_start(offsets.get(topic)))
            rows, dead = _labels(topic, messages)
            if rows:
                self.store.insert(feedback_table(uc), _arrow(rows, _FEEDBACK_COLUMNS))
            if dead:
                produce_records(
                    self.conf,
                    uc.deadletter_topic,
                    [(d.key, d.value or b"") for d in dead],
                    [deadletter_headers(d) for d in dead],
                )
            stored["feedback"] += len(rows)
            stored["rejected"] += len(dead)
            _advance(offsets, topic, messages)
        for topic in self.plan.metrics_topics_at(self.site):
            messages = read_topic(self.conf, topic, start=_start(offsets.get(topic)))
            metrics = [row for m in messages for row in _metric_rows(m[1])]
            if metrics:
                self.insert_metrics(metrics)
            stored["metrics"] += len(metrics)
            _advance(offsets, topic, messages)
        self._state.save({**state, "offsets": offsets})
        return stored

    def insert_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rows of (time ms, site, part, usecase, name, value) into the metrics table."""
        self.store.insert(METRICS_TABLE, _arrow(rows, _METRIC_COLUMNS))

    def own_lag(self, now: datetime) -> list[dict[str, Any]]:
        """Lag and store backlog of this site's dataflows, from their recovery state."""
        rows = []
        for uc in self.plan.usecases_at(self.site):
            for name, measure in (("lag", pipeline_lag), ("store_backlog", store_backlog)):
                try:
                    measured = measure(self.plan, self.site, uc.name)
                except LagUnknown as exc:  # nothing to write rather than a wrong 0
                    _log.warning("%s of %s cannot be measured: %s", name, uc.name, exc)
                    measured = None
                if measured is not None:
                    rows.append(
                        {
                            "time": _ms(now),
                            "site": self.site,
                            "part": "monitor",
                            "usecase": uc.name,
                            "name": name,
                            "value": measured[0],
                        }
                    )
        return rows

    # -------------------------------------------------------------- references

    def reference_name(self, uc: UseCasePlan) -> str:
        """The stored name of the use case's reference."""
        ref = _monitoring(uc).reference
        if isinstance(ref, ModelReference):
            return f"model:{ref.version or uc.usecase.model.version}"
        assert ref is not None
        return ref.name()

    def record_reference(self, uc: UseCasePlan, frame: pl.DataFrame, name: str) -> int:
        """Store ``frame``'s rows as reference ``name`` and profile them; returns the rows.

        ``frame`` must hold every watched column; a newer recording of the same name
        replaces the older one.
        """
        columns = list(_monitoring(uc).watch)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            msg = f"the reference data for {uc.name} lacks the watched columns {missing}"
            raise MonitorError(msg)
        recorded = _now()
        table = {
            "reference": pa.array([name] * frame.height, pa.string()),
            "recorded_at": pa.array([_ms(recorded)] * frame.height, pa.int64()).cast(_MS),
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
        mon = _monitoring(uc)
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
            source = (
                f"{self._db}.`{uc.table}` FINAL WHERE event_time >= {sql_time(ref.start)} "
                f"AND event_time < {sql_time(ref.end)}"
            )
            self._profile(uc, name, source, list(mon.watch))
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

    def _profile(self, uc: UseCasePlan, name: str, source: str, columns: list[str]) -> None:
        mon = _monitoring(uc)
        prof = self.store.query(profile_sql(source, columns, mon.bins)).row(0, named=True)
        if prof["rows"] < mon.min_rows:
            msg = (
                f"the reference {name!r} of {uc.name} holds {prof['rows']} rows; "
                f"monitoring.min_rows is {mon.min_rows}"
            )
            raise MonitorError(msg)
        edges = {c: prof[f"c{i}_edges"] for i, c in enumerate(columns)}
        counts = self.store.query(bin_counts_sql(source, edges)).row(0, named=True)
        now = _ms(_now())
        rows = [
            {
                "usecase": uc.name,
                "reference": name,
                "column": col,
                "rows": prof["rows"],
                "n": prof[f"c{i}_n"],
                "mean": _num(prof[f"c{i}_mean"]),
                "std": _num(prof[f"c{i}_std"]),
                "min": _num(prof[f"c{i}_min"]),
                "max": _num(prof[f"c{i}_max"]),
                "edges": [float(e) for e in prof[f"c{i}_edges"]],
                "counts": [int(c) for c in counts[f"c{i}_counts"]],
                "grid": [float(g) for g in prof[f"c{i}_grid"]],
            }
            for i, col in enumerate(columns)
        ]
        for row in rows:
            row["created_at"] = now
        self.store.insert(REFERENCES_TABLE, _arrow(rows, _REFERENCE_COLUMNS))

    # --------------------------------------------------------------- evaluate

    def evaluate(self, uc: UseCasePlan, now: datetime) -> Evaluation:
        """Drift, quality, accuracy and health of one use case over the window ending ``now``."""
        mon = _monitoring(uc)
        start = now - mon.window
        ev = Evaluation(uc.name, start, now)
        where = f"event_time >= {sql_time(start)} AND event_time < {sql_time(now)}"
        if mon.watch:
            ev.reference = self.reference_name(uc)
            try:
                self.ensure_reference(uc, now)
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
                ev.values[(col, stat)] = _num(row[f"c{i}_{stat}"])
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
            _arrow(
                [
                    {
                        "time": _ms(now),
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
                        "window_start": _ms(ev.window_start),
                        "window_end": _ms(ev.window_end),
                        "reference": ev.reference,
                    }
                    for col, stat, value in rows
                ],
                _DRIFT_COLUMNS,
            ),
        )

    # -------------------------------------------------------------------- run

    def run_once(self, now: datetime | None = None) -> list[Evaluation]:
        """Ingest, measure this site's lag, evaluate every monitored use case, alert."""
        now = now or _now()
        self.ingest()
        own = self.own_lag(now)
        if own:
            self.insert_metrics(own)
        state = self._state.load() or {}
        severities: dict[str, dict[str, str]] = state.get("severities", {})
        out = []
        for uc in self.usecases:
            if uc.usecase.monitoring is None:
                continue
            ev = self.evaluate(uc, now)
            previous = severities.get(uc.name, {})
            for subject, stat, value, limit, severity in judge(ev.values, ev.thresholds, previous):
                kind = (
                    "health"
                    if subject == "health"
                    else "accuracy"
                    if stat in ("mae", "rmse", "error_rate")
                    else "quality"
                    if stat in ("null_rate", "out_of_range")
                    else "drift"
                )
                ev.alerts.append(
                    Alert(
                        usecase=uc.name,
                        kind=kind,
                        subject=subject,
                        statistic=stat,
                        value=value,
                        threshold=limit,
                        severity=severity,
                        at=now,
                        window_start=ev.window_start,
                        window_end=ev.window_end,
                        reference=ev.reference if kind == "drift" else "",
                        site=self.site,
                    )
                )
                key = f"{subject}/{stat}"
                if severity == "resolved":
                    previous.pop(key, None)
                else:
                    previous[key] = severity
            severities[uc.name] = previous
            self._alert(ev.alerts)
            self._life_cycle(uc, ev, now)
            out.append(ev)
        self._state.save({**(self._state.load() or {}), "severities": severities})
        return out

    def _life_cycle(self, uc: UseCasePlan, ev: Evaluation, now: datetime) -> None:
        """Retrain on the alerts the topology names; promote or roll back the canary."""
        from mlexec.lifecycle.policy import apply_policy, lifecycle_event
        from mlexec.lifecycle.registry import registry_site
        from mlexec.lifecycle.training import train

        life = uc.usecase.lifecycle
        if life is None:
            return
        conf = client_config(self.plan.topology.sites[registry_site(self.plan, uc)].kafka)
        spec = life.training
        triggers = [
            a
            for a in ev.alerts
            if spec is not None and a.kind in spec.retrain_on and a.severity != "resolved"
        ]
        if spec is not None and triggers:
            state = self._state.load() or {}
            trained = state.get("trained_at", {}).get(uc.name, 0)
            if now.timestamp() - trained >= spec.cooldown.total_seconds():
                watched = set(_monitoring(uc).watch)
                recorder = (
                    self.record_reference if watched and watched <= set(uc.features) else None
                )
                try:
                    done = train(
                        self.plan, self.site, self.store, conf, uc, record_reference=recorder
                    )
                except MlexecError as exc:
                    lifecycle_event(
                        conf, self.site, uc, "warning", f"{uc.name}: retraining failed: {exc}"
                    )
                else:
                    lifecycle_event(
                        conf,
                        self.site,
                        uc,
                        "info",
                        f"{uc.name}: retrained on {triggers[0].message()}: version {done.version} "
                        f"{done.metric} {done.candidate_error:.4g} on {done.holdout} held-out rows, "
                        f"production {done.production_version} {done.production_error:.4g}; {done.change}",
                    )
                state.setdefault("trained_at", {})[uc.name] = now.timestamp()
                self._state.save(state)
        apply_policy(self.store, conf, self.site, uc, ev.window_start, ev.window_end)

    def _alert(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        rows = [
            {
                **a.as_json(),
                "time": _ms(a.at),
                "message": a.message(),
            }
            for a in alerts
        ]
        self.store.insert(ALERTS_TABLE, _arrow(rows, _ALERT_COLUMNS))
        produce_records(
            self.conf,
            ALERTS_TOPIC,
            [(a.usecase.encode(), orjson.dumps(a.as_json())) for a in alerts],
        )
        for a in alerts:
            _log.warning("alert: %s", a.message())

    def every(self) -> float:
        """Seconds between scheduled evaluations: the shortest ``monitoring.every``."""
        periods = [
            uc.usecase.monitoring.every.total_seconds()
            for uc in self.usecases
            if uc.usecase.monitoring is not None
        ]
        return min(periods, default=60.0)

    def run(self, stop: threading.Event) -> None:
        """Evaluate every ``every()`` seconds until ``stop``; a failed round is logged and retried."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - a bad round must not end the schedule
                _log.error("monitoring round failed, retrying in %gs: %s", self.every(), exc)
            stop.wait(self.every())


# ------------------------------------------------------------------- helpers


def _monitoring(uc: UseCasePlan) -> Monitoring:
    mon = uc.usecase.monitoring
    if mon is None:
        msg = f"use case {uc.name} declares no monitoring"
        raise MonitorError(msg)
    return mon


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _start(offsets: dict[str, int] | None) -> dict[int, int]:
    return {int(p): o for p, o in (offsets or {}).items()}


def _advance(offsets: dict[str, dict[str, int]], topic: str, messages: list[Any]) -> None:
    done = offsets.setdefault(topic, {})
    for *_rest, partition, offset in messages:
        done[str(partition)] = max(done.get(str(partition), 0), offset + 1)


def _labels(topic: str, messages: list[Any]) -> tuple[list[dict[str, Any]], list[DeadLetter]]:
    """Feedback messages → label rows; what cannot be read → dead letters with the reason."""
    rows, dead = [], []
    now = _ms(_now())
    for key, value, _headers, partition, offset in messages:
        try:
            doc = orjson.loads(value or b"")
            if not isinstance(doc, dict):
                msg = "not a JSON object"
                raise TypeError(msg)
            record_id = str(doc.get("record_id") or doc.get("id") or "")
            label = doc["label"]
            if isinstance(label, bool):
                label = int(label)
            if not isinstance(label, int | float):
                msg = f"label must be a number, found {label!r}"
                raise TypeError(msg)
            if not record_id and (doc.get("key") is None or doc.get("time") is None):
                msg = "no record_id, nor key and time"
                raise KeyError(msg)
            rows.append(
                {
                    "record_id": record_id,
                    "key": str(doc.get("key") or ""),
                    "event_time": int(doc.get("time") or 0),
                    "label": float(label),
                    "received_at": now,
                }
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            reason = f"a label needs record_id (or key and time) and a numeric label: {exc}"
            dead.append(DeadLetter(value, key, reason, topic, partition, offset, "feedback"))
    return rows, dead


def _arrow(rows: list[dict[str, Any]], columns: dict[str, pa.DataType]) -> pa.Table:
    """Rows (times in epoch ms) as an Arrow table of ``columns``."""
    arrays = {}
    for name, kind in columns.items():
        values = [r[name] for r in rows]
        arrays[name] = (
            pa.array(values, pa.int64()).cast(kind) if kind == _MS else pa.array(values, kind)
        )
    return pa.table(arrays)


_STR, _F64, _U64 = pa.string(), pa.float64(), pa.uint64()
_FEEDBACK_COLUMNS = {
    "record_id": _STR,
    "key": _STR,
    "event_time": _MS,
    "label": _F64,
    "received_at": _MS,
}
_METRIC_COLUMNS = {
    "time": _MS,
    "site": _STR,
    "part": _STR,
    "usecase": _STR,
    "name": _STR,
    "value": _F64,
}
_REFERENCE_COLUMNS = {
    "usecase": _STR,
    "reference": _STR,
    "column": _STR,
    "rows": _U64,
    "n": _U64,
    "mean": _F64,
    "std": _F64,
    "min": _F64,
    "max": _F64,
    "edges": pa.list_(_F64),
    "counts": pa.list_(_U64),
    "grid": pa.list_(_F64),
    "created_at": _MS,
}
_DRIFT_COLUMNS = {
    "time": _MS,
    "usecase": _STR,
    "column": _STR,
    "statistic": _STR,
    "value": _F64,
    "severity": _STR,
    "rows": _U64,
    "window_start": _MS,
    "window_end": _MS,
    "reference": _STR,
}
_ALERT_COLUMNS = {
    "time": _MS,
    "usecase": _STR,
    "site": _STR,
    "kind": _STR,
    "subject": _STR,
    "statistic": _STR,
    "value": _F64,
    "threshold": _F64,
    "severity": _STR,
    "window_start": _MS,
    "window_end": _MS,
    "reference": _STR,
    "message": _STR,
}


def _metric_rows(value: bytes | None) -> list[dict[str, Any]]:
    try:
        snap = orjson.loads(value or b"")
        return [
            {
                "time": int(snap["time"]),
                "site": str(snap["site"]),
                "part": str(snap["part"]),
                "usecase": str(r["usecase"]),
                "name": str(r["name"]),
                "value": float(r["value"]),
            }
            for r in snap["rows"]
        ]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        _log.warning("skipping an unreadable runtime health snapshot: %s", exc)
        return []


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


def latest(store: SampleStore, uc: UseCasePlan) -> dict[str, pl.DataFrame]:
    """What ``mlexec monitor show`` prints: the latest evaluation, health and alerts."""
    db, name = f"`{store.database}`", quote(uc.name)
    return {
        "drift": store.query(
            f"SELECT column, statistic, value, severity, rows, window_end FROM {db}.{DRIFT_TABLE} "
            f"WHERE usecase = {name} AND time = (SELECT max(time) FROM {db}.{DRIFT_TABLE} "
            f"WHERE usecase = {name}) ORDER BY column, statistic"
        ),
        "health": store.query(
            f"SELECT site, part, name, argMax(value, time) AS value, max(time) AS at "
            f"FROM {db}.{METRICS_TABLE} WHERE usecase = {name} GROUP BY site, part, name "
            "ORDER BY site, part, name"
        ),
        "alerts": store.query(
            f"SELECT time, severity, kind, message FROM {db}.{ALERTS_TABLE} "
            f"WHERE usecase = {name} ORDER BY time DESC LIMIT 10"
        ),
    }
