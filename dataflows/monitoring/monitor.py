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
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from mlexec.connectors.kafka import client_config, ensure_topics
from mlexec.connectors.runner import Checkpoint
from mlexec.connectors.samplestore import SampleStore
from mlexec.monitoring.alerts import judge_alerts, publish_alerts
from mlexec.monitoring.columns import MonitorError, now_utc
from mlexec.monitoring.evaluate import Evaluation, Evaluator
from mlexec.monitoring.ingest import Ingestion
from mlexec.monitoring.profiles import profiles_table
from mlexec.monitoring.references import References, read_reference_file
from mlexec.monitoring.sql import (
    ALERTS_TABLE,
    DRIFT_TABLE,
    METRICS_TABLE,
    feedback_ddl,
    feedback_table,
    quote,
    reference_rows_ddl,
    reference_table,
    tables_ddl,
)
from mlexec.topologies.plan import ALERTS_TOPIC, Plan, TopicSpec, UseCasePlan
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
        self.references = References(store, self.tables)
        self.ingestion = Ingestion(plan, site, store, self.usecases, self.conf, self._state)
        self.evaluator = Evaluator(store, self.references)
        #: Called with (use case, evaluation, now) after each evaluation and its alerts.
        self.subscribers: list[Callable[[UseCasePlan, Evaluation, datetime], None]] = []
        # the parts' entry points, on the monitor itself
        self.ingest = self.ingestion.ingest
        self.insert_metrics = self.ingestion.insert_metrics
        self.own_lag = self.ingestion.own_lag
        self.reference_name = self.references.reference_name
        self.record_reference = self.references.record_reference
        self.ensure_reference = self.references.ensure_reference
        self.evaluate = self.evaluator.evaluate

    @property
    def state(self) -> Checkpoint:
        """The monitor's checkpoint: ingestion offsets, alert severities, training times."""
        return self._state

    # ----------------------------------------------------------------- tables

    def prepare(self) -> None:
        """Create its topics and tables: monitoring's, and each use case's samples and labels."""
        ensure_topics(
            self.conf,
            [
                TopicSpec(ALERTS_TOPIC, 1),
                *(self.plan.topic_spec(t) for t in self.plan.metrics_topics_at(self.site)),
                *(TopicSpec(t, 1) for t in self.plan.alerts_topics_at(self.site)),
                *(
                    TopicSpec(uc.feedback_topic, uc.usecase.input.partitions)
                    for uc in self.usecases
                ),
            ],
        )
        for ddl in tables_ddl(self.store.database):
            self.store.command(ddl)
        profiles = profiles_table(self.usecases)
        if profiles is not None:
            self.store.ensure_table(profiles)
        for uc in self.usecases:
            table = self.tables[uc.name]
            self.store.ensure_table(table)
            retention = int(uc.usecase.retention.total_seconds())
            self.store.command(feedback_ddl(self.store.database, feedback_table(uc), retention))
            columns = watchable_columns(table)
            for ddl in reference_rows_ddl(self.store.database, reference_table(uc), columns):
                self.store.command(ddl)

    def run_once(self, now: datetime | None = None) -> list[Evaluation]:
        """Ingest, measure this site's lag, evaluate every monitored use case, alert.

        Each evaluation is then announced to :attr:`subscribers` (the life cycle's
        reaction, :func:`mlexec.lifecycle.reaction.follow`) — monitoring knows nothing
        of what acts on it.
        """
        now = now or now_utc()
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
            ev.alerts.extend(judge_alerts(ev, previous, self.site, now))
            severities[uc.name] = previous
            if ev.alerts:
                publish_alerts(self.store, self.conf, ev.alerts)
            for subscriber in self.subscribers:
                subscriber(uc, ev, now)
            out.append(ev)
        self._state.save({**(self._state.load() or {}), "severities": severities})
        return out

    def replay(
        self, start: datetime, end: datetime, every: timedelta | None = None
    ) -> list[Evaluation]:
        """Evaluate the event-time range ``[start, end)`` in windows, as live would have.

        For each monitored use case, windows of its ``monitoring.window`` end every
        ``every`` (default its ``monitoring.every``) from ``start + window`` to ``end``;
        alerts are judged against the previous window and published with the window's
        end as their time, and the drift history is written, so the dashboard shows the
        range. The live schedule's alert state is left as it was, and the life cycle is
        not told (a replay never retrains or promotes).
        """
        self.ingest()
        out: list[Evaluation] = []
        for uc in self.usecases:
            mon = uc.usecase.monitoring
            if mon is None:
                continue
            step = every or mon.every
            windows = int((end - start - mon.window) / step) + 1 if end - start >= mon.window else 0
            if windows > MAX_REPLAY_WINDOWS:
                msg = (
                    f"{uc.name}: {windows:,} windows of {mon.window} every {step} in "
                    f"[{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}); at most "
                    f"{MAX_REPLAY_WINDOWS:,}: give a longer --every or a shorter range"
                )
                raise MonitorError(msg)
            previous: dict[str, str] = {}
            now = start + mon.window
            while now <= end:
                ev = self.evaluate(uc, now)
                ev.alerts.extend(judge_alerts(ev, previous, self.site, now))
                if ev.alerts:
                    publish_alerts(self.store, self.conf, ev.alerts)
                out.append(ev)
                now += step
        return out

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


#: The most windows one ``replay`` evaluates (a year of hourly windows is 8,760).
MAX_REPLAY_WINDOWS = 20_000


def latest(store: SampleStore, uc: UseCasePlan) -> dict[str, pl.DataFrame]:
    """What ``mlexec monitor show`` prints: the latest evaluation, health and alerts."""
    db, name = f"`{store.database}`", quote(uc.name)
    evaluated = store.query(
        f"SELECT column, segment, statistic, value, severity, rows, window_end "
        f"FROM {db}.{DRIFT_TABLE} WHERE usecase = {name} AND time = (SELECT max(time) "
        f"FROM {db}.{DRIFT_TABLE} WHERE usecase = {name}) ORDER BY column, statistic"
    )
    if not evaluated.height:
        empty = evaluated.drop("segment", strict=False)
        return {"drift": empty, "performance": empty, "segments": empty, **_health(store, uc)}
    performance = pl.col("statistic").is_in(["mae", "rmse", "error_rate"]) | pl.col(
        "statistic"
    ).str.starts_with("estimated_")
    whole = evaluated.filter(pl.col("segment") == "").drop("segment")
    return {
        "drift": whole.filter(~performance),
        # per version/variant: realized (from labels) beside estimated (before them)
        "performance": (
            whole.filter(performance)
            .rename({"column": "subject"})
            .select("subject", "statistic", "value", "severity")
        ),
        "segments": top_segments(evaluated.filter(pl.col("segment") != ""), uc),
        **_health(store, uc),
    }


def top_segments(rows: pl.DataFrame, uc: UseCasePlan) -> pl.DataFrame:
    """The judged values of segments, the farthest past (or nearest to) their threshold first."""
    mon = uc.usecase.monitoring
    assert mon is not None
    limits: dict[tuple[str, str], float] = {}
    for col, watched in mon.watch.items():
        for stat, t in watched.thresholds().items():
            limits[(col, stat)] = t.warning if t.warning is not None else (t.critical or 0.0)
    acc = mon.accuracy
    judged = []
    for row in rows.iter_rows(named=True):
        limit = limits.get((row["column"], row["statistic"]))
        if limit is None and acc is not None and row["statistic"] == acc.metric:
            t = acc.thresholds
            limit = t.warning if t.warning is not None else t.critical
        if limit:
            judged.append({**row, "of_threshold": row["value"] / limit})
    top = mon.segments.top if mon.segments is not None else 10
    if not judged:
        return pl.DataFrame(
            schema={
                "segment": pl.String,
                "column": pl.String,
                "statistic": pl.String,
                "value": pl.Float64,
                "severity": pl.String,
                "of_threshold": pl.Float64,
            }
        )
    frame = pl.DataFrame(judged).sort("of_threshold", descending=True).head(top)
    return frame.select("segment", "column", "statistic", "value", "severity", "of_threshold")


def _health(store: SampleStore, uc: UseCasePlan) -> dict[str, pl.DataFrame]:
    db, name = f"`{store.database}`", quote(uc.name)
    return {
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
