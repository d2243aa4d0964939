"""Drift and accuracy per segment: one machine drifting among eight, which the whole hides."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import yaml

from mlexec.connectors.kafka import produce_records
from mlexec.connectors.samplestore import open_store
from mlexec.monitoring.dashboard import DashboardData
from mlexec.monitoring.monitor import latest
from mlexec.topologies import TopologyError, load_topology, plan_topology
from mlexec.usecase import UseCaseRuntime
from tests.dataflows.spine import T0, prepared
from tests.monitoring.test_monitor import (
    HOUR_MS,
    _at,
    _direct_topology,
    _monitor_over,
    _monitoring,
    _sample_rows,
)

pytestmark = pytest.mark.integration

N = 8_000  # per hour; keys s0…s7 take turns, so 1,000 rows a key


def _segmented(**extra: object) -> dict[str, object]:
    return _monitoring(
        T0,
        watch={"f1": {"psi": {"warning": 0.1}}, "f2": {"psi": {"warning": 0.1}}},
        accuracy={"output": "y", "metric": "mae", "thresholds": {"warning": 0.3}},
        segments={"by": "key", "min_rows": 200, "top": 3},
        **extra,
    )


def test_a_drift_and_an_error_only_one_segment_has_are_found_there(broker, tmp_path, uid):
    path = _direct_topology(tmp_path, broker.bootstrap, uid, _segmented())
    topology, plan, uc, conf = prepared(path)
    rng = np.random.default_rng(17)
    rows = _sample_rows(T0, N, rng)
    shifted = rng.normal(size=N)
    shifted[3::8] += 1.0  # machine s3 (rows 3, 11, 19, …) drifts by one standard deviation
    rows += _sample_rows(T0 + HOUR_MS, N, rng, f1=shifted)
    labels = []
    for i, row in enumerate(rows[N:]):
        row["y"] = float(rng.uniform())
        wrong = 0.8 if row["key"] == "s5" else 0.05  # machine s5's predictions are off
        labels.append({"record_id": row["record_id"], "label": row["y"] + wrong})
        assert row["key"] == f"s{i % 8}"
    produce_records(conf, uc.feedback_topic, [(None, orjson.dumps(x)) for x in labels])
    with open_store(topology.sites["here"].sample_store) as store:
        monitor = _monitor_over(store, plan, uc, rows)
        (ev,) = monitor.run_once(_at(T0 + 2 * HOUR_MS))
        shown = latest(store, uc)
        board = DashboardData(plan, "here", store, hours=24 * 365 * 10).usecase(uc.name)

    # the whole window hides both: 1/8 of f1 moved, 1/8 of the predictions wrong
    assert ev.values[("f1", "psi")] < 0.05
    assert ev.values[("7/production", "mae")] < 0.3
    raised = {(a.subject, a.statistic) for a in ev.alerts}
    assert raised == {("f1 @ key=s3", "psi"), ("7/production @ key=s5", "mae")}
    assert ev.values[("f1 @ key=s3", "psi")] > 0.5
    assert all(ev.values[(f"f1 @ key=s{k}", "psi")] < 0.1 for k in range(8) if k != 3)
    assert ev.values[("f2 @ key=s3", "psi")] < 0.1  # only f1 drifted there

    top = shown["segments"].to_dicts()
    assert len(top) == 3  # top: 3
    assert (top[0]["segment"], top[0]["column"]) in {("key=s3", "f1"), ("key=s5", "7/production")}
    assert {(t["segment"], t["statistic"]) for t in top[:2]} == {
        ("key=s3", "psi"),
        ("key=s5", "mae"),
    }
    assert top[0]["of_threshold"] >= top[1]["of_threshold"] >= top[2]["of_threshold"]
    assert "" not in shown["drift"]["column"].to_list() and shown["drift"].height == 2 * 8
    assert [s["segment"] for s in board["segments"]] == [t["segment"] for t in top]
    # the whole window's line is the whole window's value, never a segment's
    assert board["drift"]["psi"]["f1"]["v"] == [pytest.approx(ev.values[("f1", "psi")])]


def test_a_segment_column_that_is_not_there_or_not_text_is_refused(broker, tmp_path, uid):
    for by, found in (("machine", "'machine'"), ("f1", "'f1'")):
        path = _direct_topology(tmp_path, broker.bootstrap, uid, _segmented())
        doc = yaml.safe_load(path.read_text())
        doc["usecases"][f"uc{uid}"]["monitoring"]["segments"]["by"] = by
        path.write_text(yaml.safe_dump(doc))
        (uc,) = plan_topology(load_topology(path)).usecases.values()
        with pytest.raises(TopologyError, match=rf"monitoring.segments.by: .*found {found}"):
            UseCaseRuntime.build(uc, str(path))


def test_thousands_of_tiny_segments_are_skipped_and_an_odd_segment_name_is_kept(
    broker, tmp_path, uid
):
    path = _direct_topology(tmp_path, broker.bootstrap, uid, _segmented())
    topology, plan, uc, conf = prepared(path)
    rng = np.random.default_rng(4)
    rows = _sample_rows(T0, N, rng)
    window = _sample_rows(T0 + HOUR_MS, N, rng)
    odd = "o'brien \\ ✓"  # a quote, a backslash and a non-ASCII mark in a key
    for i, row in enumerate(window):
        if i < 600:
            row["key"], row["f1"] = odd, row["f1"] + 2.0
        else:
            row["key"] = f"one-off-{i}"  # 7,400 segments of a single row each
    with open_store(topology.sites["here"].sample_store) as store:
        monitor = _monitor_over(store, plan, uc, rows + window)
        (ev,) = monitor.run_once(_at(T0 + 2 * HOUR_MS))
    segmented = {s for s, _ in ev.values if " @ " in s}
    assert segmented == {f"f1 @ key={odd}", f"f2 @ key={odd}"}  # only it has 200 rows
    assert (f"f1 @ key={odd}", "psi") in {(a.subject, a.statistic) for a in ev.alerts}
