"""Alerts from thresholds, as pure logic: only changes are news, and NaN is no verdict."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mlexec.monitoring.alerts import judge_alerts
from mlexec.monitoring.evaluate import Evaluation
from mlexec.monitoring.sql import judge, quote, sql_time
from mlexec.topologies.schema import Thresholds

LIMITS = Thresholds(warning=0.1, critical=0.25)
KEY = ("temperature", "psi")


def _round(
    value: float, previous: dict[str, str]
) -> list[tuple[str, str, float, float | None, str]]:
    found = judge({KEY: value}, {KEY: LIMITS}, previous)
    for subject, stat, _value, _limit, severity in found:
        if severity == "resolved":
            previous.pop(f"{subject}/{stat}")
        else:
            previous[f"{subject}/{stat}"] = severity
    return found


def test_a_lasting_drift_alerts_once_per_severity_and_once_when_resolved():
    previous: dict[str, str] = {}
    severities = [[a[4] for a in _round(v, previous)] for v in (0.05, 0.12, 0.13, 0.3, 0.31, 0.02)]
    assert severities == [[], ["warning"], [], ["critical"], [], ["resolved"]]


def test_a_value_without_data_or_thresholds_gives_no_verdict():
    assert judge({KEY: float("nan")}, {KEY: LIMITS}, {"temperature/psi": "critical"}) == []
    assert judge({KEY: 9.0}, {}, {}) == []


def test_alerts_name_their_kind_site_window_and_the_threshold_crossed():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    ev = Evaluation("uc", datetime(2029, 12, 31, tzinfo=UTC), now, reference="model:1")
    ev.values = {KEY: 0.3, ("health", "lag"): 50_000.0, ("1/production", "mae"): 2.0}
    ev.thresholds = {
        KEY: LIMITS,
        ("health", "lag"): Thresholds(warning=10_000),
        ("1/production", "mae"): Thresholds(critical=1.0),
    }
    previous: dict[str, str] = {}
    alerts = {a.kind: a for a in judge_alerts(ev, previous, "edge", now)}
    assert set(alerts) == {"drift", "health", "accuracy"}
    assert (alerts["drift"].severity, alerts["drift"].threshold) == ("critical", 0.25)
    assert alerts["drift"].reference == "model:1" and alerts["health"].reference == ""
    assert {a.site for a in alerts.values()} == {"edge"}
    assert previous == {
        "temperature/psi": "critical",
        "health/lag": "warning",
        "1/production/mae": "critical",
    }
    assert judge_alerts(ev, previous, "edge", now) == []  # nothing changed: no news


def test_sql_literals_are_quoted_and_times_exact_to_the_millisecond():
    assert quote("it's") == "'it\\'s'"
    moment = datetime(2030, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    assert f"toInt64({int(moment.timestamp() * 1000)})" in sql_time(moment)
    assert sql_time(moment).endswith("'UTC')")


def test_watching_without_a_reference_is_a_note_not_a_crash(tmp_path):
    from mlexec.connectors.samplestore import open_store
    from mlexec.monitoring.columns import MonitorError
    from mlexec.monitoring.references import References
    from mlexec.topologies import load_topology, plan_topology
    from tests.dataflows.spine import spine_topology

    path = spine_topology(
        tmp_path,
        "127.0.0.1:1",
        "noref",
        dispatch="{kind: microbatch}",
        reduction="{kind: identity}",
        sampling="{rate: 1.0}",
        monitoring={"watch": {"f0": {"null_rate": {"warning": 0.1}, "range": [0, 1]}}},
    )
    (uc,) = plan_topology(load_topology(path), str(path)).usecases.values()
    with open_store(f"chdb://{tmp_path}/store") as store:
        with pytest.raises(MonitorError, match="declares no monitoring.reference"):
            References(store, {}).reference_name(uc)
