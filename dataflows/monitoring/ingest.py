"""Ingestion: labels from ``<uc>.feedback``, runtime health from ``mlexec.metrics``, own lag.

The alerts an edge raised itself (a version it refused, a fallback) come up as
``<edge>.mlexec.alerts`` and are kept in ``mlexec_alerts`` under the edge's name.

A label that cannot be read goes to the use case's dead-letter topic with the reason.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import orjson

from mlexec.connectors.kafka import produce_records
from mlexec.connectors.reading import read_topic
from mlexec.connectors.runner import Checkpoint
from mlexec.connectors.samplestore import SampleStore
from mlexec.monitoring.columns import (
    ALERT_COLUMNS,
    FEEDBACK_COLUMNS,
    METRIC_COLUMNS,
    SERVING_COLUMNS,
    arrow_table,
    ms,
    now_utc,
)
from mlexec.monitoring.sql import (
    ALERTS_TABLE,
    METRICS_TABLE,
    SERVING_TABLE,
    feedback_table,
)
from mlexec.operators.emit import deadletter_headers
from mlexec.operators.records import DeadLetter
from mlexec.runtime.lag import LagUnknown, pipeline_lag, store_backlog
from mlexec.topologies.plan import METRICS_TOPIC, Plan, UseCasePlan

__all__ = ["Ingestion"]

_log = logging.getLogger(__name__)


class Ingestion:
    """What arrives for monitoring: labels, runtime health, and this site's own lag.

    From offsets kept in the monitor's checkpoint, so nothing is stored twice or skipped.
    """

    def __init__(
        self,
        plan: Plan,
        site: str,
        store: SampleStore,
        usecases: list[UseCasePlan],
        conf: dict[str, Any],
        state: Checkpoint,
    ) -> None:
        self.plan = plan
        self.site = site
        self.store = store
        self.usecases = usecases
        self.conf = conf
        self._state = state

    def ingest(self) -> dict[str, int]:
        """Store the labels and runtime health that arrived since the last call."""
        state = self._state.load() or {}
        offsets: dict[str, dict[str, int]] = state.get("offsets", {})
        stored = {"feedback": 0, "metrics": 0, "rejected": 0, "alerts": 0}
        for uc in self.usecases:
            topic = uc.feedback_topic
            messages = read_topic(self.conf, topic, start=_start(offsets.get(topic)))
            rows, dead = _labels(topic, messages)
            if rows:
                self.store.insert(feedback_table(uc), arrow_table(rows, FEEDBACK_COLUMNS))
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
            # a mirrored <site>.mlexec.metrics speaks for that site, whatever it says
            site = self.site if topic == METRICS_TOPIC else topic.partition(".")[0]
            metrics = [row for m in messages for row in _metric_rows(m[1], site)]
            if metrics:
                self.insert_metrics(metrics)
            serving = [row for m in messages for row in _serving_rows(m[1], site)]
            if serving:
                self.store.insert(SERVING_TABLE, arrow_table(serving, SERVING_COLUMNS))
            stored["metrics"] += len(metrics)
            _advance(offsets, topic, messages)
        for topic in self.plan.alerts_topics_at(self.site):
            messages = read_topic(self.conf, topic, start=_start(offsets.get(topic)))
            site = topic.partition(".")[0]  # the edge it came up from, whatever it says
            alerts = [row for m in messages for row in _alert_rows(m[1], site)]
            if alerts:
                self.store.insert(ALERTS_TABLE, arrow_table(alerts, ALERT_COLUMNS))
            stored["alerts"] += len(alerts)
            _advance(offsets, topic, messages)
        self._state.save({**state, "offsets": offsets})
        return stored

    def insert_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rows of (time ms, site, part, usecase, name, value) into the metrics table."""
        self.store.insert(METRICS_TABLE, arrow_table(rows, METRIC_COLUMNS))

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
                            "time": ms(now),
                            "site": self.site,
                            "part": "monitor",
                            "usecase": uc.name,
                            "name": name,
                            "value": measured[0],
                        }
                    )
        return rows


def _start(offsets: dict[str, int] | None) -> dict[int, int]:
    return {int(p): o for p, o in (offsets or {}).items()}


def _advance(offsets: dict[str, dict[str, int]], topic: str, messages: list[Any]) -> None:
    done = offsets.setdefault(topic, {})
    for *_rest, partition, offset in messages:
        done[str(partition)] = max(done.get(str(partition), 0), offset + 1)


def _labels(topic: str, messages: list[Any]) -> tuple[list[dict[str, Any]], list[DeadLetter]]:
    """Feedback messages → label rows; what cannot be read → dead letters with the reason."""
    rows, dead = [], []
    now = ms(now_utc())
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


def _alert_rows(value: bytes | None, site: str) -> list[dict[str, Any]]:
    """An edge's alert as a row of the alerts table; none if it cannot be read."""
    try:
        doc = orjson.loads(value or b"")
        at = int(doc["at"])
        return [
            {
                "time": at,
                "usecase": str(doc.get("usecase", "")),
                "site": site,
                "kind": str(doc.get("kind", "")),
                "subject": str(doc.get("subject", "")),
                "statistic": str(doc.get("statistic", "")),
                "value": float(doc.get("value") or 0.0),
                "threshold": None if doc.get("threshold") is None else float(doc["threshold"]),
                "severity": str(doc.get("severity", "warning")),
                "window_start": int(doc.get("window_start", at)),
                "window_end": int(doc.get("window_end", at)),
                "reference": str(doc.get("reference", "")),
                "message": str(doc.get("message", "")),
            }
        ]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        _log.warning("an alert from %s that cannot be read is skipped: %.200r", site, value)
        return []


def _serving_rows(value: bytes | None, site: str) -> list[dict[str, Any]]:
    """A snapshot's heartbeat (what the process serves) as a row; none if it has none."""
    try:
        snap = orjson.loads(value or b"")
        serving = snap["serving"]
        return [
            {
                "time": int(snap["time"]),
                "site": site,
                "part": str(snap["part"]),
                "topology": str(serving["topology"]),
                "models": orjson.dumps(serving["models"]).decode(),
            }
        ]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return []  # an older process's snapshot, or one _metric_rows reports


def _metric_rows(value: bytes | None, site: str) -> list[dict[str, Any]]:
    try:
        snap = orjson.loads(value or b"")
        return [
            {
                "time": int(snap["time"]),
                "site": site,
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
