"""Runtime health of a running pipeline: its Prometheus endpoint, its lag while paused,
its snapshots in the metrics table, and a lag alert raised and resolved."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlexec.connectors.broker import free_port
from mlexec.connectors.reading import read_topic
from mlexec.connectors.samplestore import open_store
from mlexec.monitoring.monitor import Monitor
from mlexec.runtime.lag import pipeline_lag
from tests.dataflows.spine import feed, identity_site, prepared
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _scrape(port: int, usecase: str) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("usecase") == usecase:
                out[sample.name] = sample.value
    return out


def _processed(conf: dict[str, Any], uc: Any) -> dict[int, int]:
    """Per raw partition, one past the highest offset that left as a prediction or dead letter."""
    done: dict[int, int] = {}
    for _k, value, *_ in read_topic(conf, uc.predictions_topic):
        _topic, partition, offset = orjson.loads(value)["id"].rsplit(":", 2)
        done[int(partition)] = max(done.get(int(partition), 0), int(offset) + 1)
    for _k, _v, headers, *_ in read_topic(conf, uc.deadletter_topic):
        h = dict(headers)
        partition, offset = int(h["mlexec.partition"]), int(h["mlexec.offset"])
        done[partition] = max(done.get(partition, 0), offset + 1)
    return done


def test_lag_of_a_paused_pipeline_is_end_minus_processed_and_prometheus_serves_its_health(
    broker, tmp_path, uid
):
    path = identity_site(
        tmp_path,
        broker.bootstrap,
        uid,
        0.0,
        batch=64,
        monitoring={"health": {"lag": {"warning": 500}}},
    )
    topology, plan, uc, conf, _values, _pos, good, bad = feed(path, 1000, bad_every=10)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlexec.cli", "run", str(path), "--site", "here"]
        + ["--part", "pipeline", "--metrics-port", str(port), "--health-every", "0.5"],
        cwd=os.getcwd(),
    )
    try:
        wait_for(lambda: pipeline_lag(plan, "here") == (0, 1000), 90, "the first 1,000 records")
        health = _scrape(port, uc.name)
        assert health["mlexec_records_in_total"] == 1000
        assert health["mlexec_predictions_total"] == len(good) == 900
        assert health["mlexec_deadletters_total"] == len(bad) == 100
        assert health["mlexec_lag"] == 0
        assert health["mlexec_dispatches_total"] >= 900 / 64
        assert 0 < health["mlexec_latency_p50_ms"] <= health["mlexec_latency_p99_ms"]
        assert 1 <= health["mlexec_dispatch_rows"] <= 64

        proc.send_signal(signal.SIGSTOP)  # paused: it holds its consumers, processes nothing
        *_, positions, _good, _bad = feed(path, 700, bad_every=0, start=1000)
        ends: dict[int, int] = {}
        for partition, offset in positions:
            ends[partition] = max(ends.get(partition, 0), offset + 1)
        done = _processed(conf, uc)
        expected = sum(end - done.get(p, 0) for p, end in ends.items())
        assert expected == 700
        assert pipeline_lag(plan, "here") == (700, 1000)
        with open_store(topology.sites["here"].sample_store) as store:
            monitor = Monitor(plan, "here", store)
            monitor.prepare()
            (row,) = [r for r in monitor.own_lag(datetime.now(UTC)) if r["name"] == "lag"]
            assert row["value"] == expected
            (ev,) = monitor.run_once()
            assert ev.health["lag"] == 700
            (alert,) = ev.alerts
            assert (alert.kind, alert.statistic, alert.severity) == ("health", "lag", "warning")

        proc.send_signal(signal.SIGCONT)
        wait_for(lambda: pipeline_lag(plan, "here") == (0, 1700), 90, "the paused records")
        wait_for(lambda: _scrape(port, uc.name)["mlexec_records_in_total"] == 1700, 30, "a scrape")
        assert _scrape(port, uc.name)["mlexec_lag"] == 0
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(60)
    with open_store(topology.sites["here"].sample_store) as store:
        monitor = Monitor(plan, "here", store)
        (ev,) = monitor.run_once()
        assert [(a.statistic, a.severity) for a in ev.alerts] == [("lag", "resolved")]
        reported = store.query(
            "SELECT part, name, max(value) AS top FROM mlexec_metrics "
            f"WHERE usecase = '{uc.name}' GROUP BY part, name"
        )
        top = {(p, n): v for p, n, v in reported.iter_rows()}
        assert top[("pipeline", "records_in")] == 1700  # the snapshot sent at stop
        assert top[("pipeline", "deadletters")] == 100
        assert top[("monitor", "lag")] == 700
        assert ("pipeline", "records_in_per_s") in top


def test_a_running_site_monitors_on_its_schedule_and_serves_the_dashboard(broker, tmp_path, uid):
    """``mlexec run``: the store process stores samples, evaluates every second, alerts."""
    import random

    from mlexec.connectors.kafka import produce_records
    from tests.dataflows.spine import FIELDS

    hour = 3_600_000
    start = (int(time.time() * 1000) // hour - 3) * hour
    reference = {
        "kind": "range",
        "start": datetime.fromtimestamp(start / 1000, UTC).isoformat(),
        "end": datetime.fromtimestamp((start + hour) / 1000, UTC).isoformat(),
    }
    path = identity_site(
        tmp_path,
        broker.bootstrap,
        uid,
        1.0,
        monitoring={
            "every": "1s",
            "window": "3h",  # all 2,000 shifted records, whatever the minute
            "min_rows": 1000,  # no verdict on a window still filling
            "reference": reference,
            "watch": {f: {"psi": {"warning": 0.2}} for f in FIELDS[:6]},
        },
    )
    topology, plan, uc, conf = prepared(path)
    rng = random.Random(2)
    records = []
    for i in range(3000):  # 1,000 in the reference hour, 2,000 in the last two, f2 shifted
        late = i >= 1000
        ts = start + (hour + (i - 1000) * (2 * hour // 2000) if late else i * (hour // 1000))
        rec = {"sensor": f"s{i % 8}", "ts": ts, **{f: rng.uniform(-3, 3) for f in FIELDS}}
        if late:
            rec["f2"] += 2.0
        records.append(rec)
    produce_records(conf, uc.raw_topic, [(r["sensor"].encode(), orjson.dumps(r)) for r in records])
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlexec.cli", "run", str(path), "--site", "here"]
        + ["--dashboard-port", str(port), "--health-every", "1"],
        cwd=os.getcwd(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:

        def alerted() -> list[dict[str, Any]]:
            found = [orjson.loads(v) for _k, v, *_ in read_topic(conf, "mlexec.alerts")]
            return [a for a in found if a["usecase"] == uc.name]

        wait_for(lambda: alerted(), 120, "a drift alert from the running site")
        assert {(a["subject"], a["statistic"]) for a in alerted()} == {("f2", "psi")}
        board = httpx.get(f"http://127.0.0.1:{port}/api/usecase?name={uc.name}", timeout=10)
        drift = board.json()["drift"]["psi"]
        assert set(drift) == set(FIELDS[:6])
        assert (
            max(drift["f2"]["v"]) > 0.2 > max(max(drift[f]["v"]) for f in FIELDS[:6] if f != "f2")
        )
    finally:
        proc.terminate()
        said, _ = proc.communicate(timeout=60)
    # the page's address is said on stdout (not logged as a warning), and what runs where
    assert f"monitoring dashboard of site here at http://127.0.0.1:{port}" in said, said
    assert "site here: pipeline of" in said


def test_a_links_health_counts_what_waits_to_go_up_and_what_went():
    from mlexec.connectors.runner import ConnectorStatus
    from mlexec.runtime.mirror import LinkHealth

    up = ConnectorStatus("mirror", "plant-1->cloud", "mirror", "", produced=10, behind=400)
    down = ConnectorStatus("mirror", "cloud->plant-1", "mirror", "", produced=3, behind=7)
    health = LinkHealth("plant-1", [up, down])
    first = health.report()
    assert (first["site"], first["part"]) == ("plant-1", "mirror")
    values = {r["name"]: r["value"] for r in first["rows"]}
    # only what goes from this site counts: the models coming down are not its backlog
    assert values == {"link_backlog": 400.0, "link_sent": 10.0, "link_errors": 0.0}
    up.produced, up.behind = 110, 300
    later = {r["name"]: r["value"] for r in health.report()["rows"]}
    assert later["link_backlog"] == 300.0 and later["link_sent_per_s"] > 0
    assert later["link_errors_per_s"] == 0.0
