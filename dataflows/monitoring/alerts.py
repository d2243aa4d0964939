"""Alerts: thresholds crossed or resolved become alerts, in ``mlexec_alerts`` and on ``mlexec.alerts``.

Only changes alert, so a lasting drift alerts once.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import orjson

from mlexec.connectors.kafka import produce_records
from mlexec.connectors.samplestore import SampleStore
from mlexec.monitoring.columns import (
    ALERT_COLUMNS,
    arrow_table,
    ms,
)
from mlexec.monitoring.evaluate import Evaluation
from mlexec.monitoring.sql import (
    ALERTS_TABLE,
    Alert,
    judge,
)
from mlexec.topologies.plan import ALERTS_TOPIC

__all__ = ["judge_alerts", "publish_alerts", "standing_at"]

_log = logging.getLogger(__name__)


def judge_alerts(ev: Evaluation, previous: dict[str, str], site: str, now: datetime) -> list[Alert]:
    """The alerts of an evaluation: only changes against ``previous`` (updated in place)."""
    alerts = []
    for subject, stat, value, limit, severity in judge(ev.values, ev.thresholds, previous):
        kind = (
            "health"
            if subject == "health"
            else "accuracy"
            if stat in ("mae", "rmse", "error_rate") or stat.startswith("estimated_")
            else "quality"
            if stat in ("null_rate", "out_of_range")
            else "drift"
        )
        alerts.append(
            Alert(
                usecase=ev.usecase,
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
                site=site,
            )
        )
        key = f"{subject}/{stat}"
        if severity == "resolved":
            previous.pop(key, None)
        else:
            previous[key] = severity
    return alerts


_RANK = {"warning": 1, "critical": 2}


def standing_at(evaluations: list[Evaluation], severity: str) -> list[str]:
    """Each watched value that stands at ``severity`` or above now, as text.

    Unlike the alerts (changes only), a lasting drift counts every time.
    """
    out = []
    for ev in evaluations:
        for (subject, stat), value in sorted(ev.values.items()):
            limits = ev.thresholds.get((subject, stat))
            now = limits.severity(value) if limits is not None and value == value else None
            if now is not None and _RANK[now] >= _RANK[severity]:
                out.append(f"{ev.usecase}: {stat} of {subject} is {value:.4g} ({now})")
    return out


def publish_alerts(store: SampleStore, conf: dict[str, Any], alerts: list[Alert]) -> None:
    """Alerts into ``mlexec_alerts`` and onto ``mlexec.alerts``."""
    if not alerts:
        return
    rows = [
        {
            **a.as_json(),
            "time": ms(a.at),
            "message": a.message(),
        }
        for a in alerts
    ]
    store.insert(ALERTS_TABLE, arrow_table(rows, ALERT_COLUMNS))
    produce_records(
        conf,
        ALERTS_TOPIC,
        [(a.usecase.encode(), orjson.dumps(a.as_json())) for a in alerts],
    )
    for a in alerts:
        _log.warning("alert: %s", a.message())
