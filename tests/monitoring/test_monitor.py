"""Monitoring on the real broker and chDB: drift and quality in SQL against numpy/scipy,
accuracy against feedback labels, alerts on mlexec.alerts and in the alerts table."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from scipy import stats
from scipy.spatial.distance import jensenshannon

from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.connectors.samplesink import rows_to_arrow
from mlexec.connectors.samplestore import open_store
from mlexec.monitoring.monitor import Monitor
from mlexec.monitoring.sql import GRID
from mlexec.topologies import load_topology, plan_topology
from mlexec.usecase import samples_table
from tests.dataflows.spine import FIELDS, T0, identity_site, prepared, run_to_end

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _monitoring(reference_start: int, **extra: Any) -> dict[str, Any]:
    return {
        "window": "1h",
        "reference": {
            "kind": "range",
            "start": _at(reference_start).isoformat(),
            "end": _at(reference_start + HOUR_MS).isoformat(),
        },
        **extra,
    }


_ALL = {
    "psi": {"warning": 0.1, "critical": 0.25},
    "ks": {"warning": 0.08},
    "js": {"warning": 0.15},
    "wasserstein": {"warning": 0.4},
    "mean_shift": {"warning": 0.25},
    "quantile_shift": {"warning": 0.4},
    "null_rate": {"warning": 0.01},
    "out_of_range": {"warning": 0.02},
}


def _column(store: Any, table: str, column: str, start: int, end: int) -> np.ndarray:
    frame = store.query(
        f"SELECT {column} FROM {table} FINAL WHERE event_time >= fromUnixTimestamp64Milli({start}) "
        f"AND event_time < fromUnixTimestamp64Milli({end})"
    )
    return frame.get_column(column).to_numpy()


def _psi_js(ref: np.ndarray, cur: np.ndarray, edges: list[float]) -> tuple[float, float]:
    bins = len(edges) + 1
    p = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=bins) / len(cur)
    q = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=bins) / len(ref)
    pf, qf = np.maximum(p, 1e-6), np.maximum(q, 1e-6)
    return float(np.sum((pf - qf) * np.log(pf / qf))), float(jensenshannon(p, q, base=2))


def test_a_shift_in_one_feature_alerts_for_that_feature_only_and_equals_scipy(
    broker, tmp_path, uid
):
    """Records through the real dataflow into chDB; f3 shifted by 1.0 in the second hour."""
    watch = {f: {"psi": _ALL["psi"], "ks": _ALL["ks"]} for f in FIELDS}
    path = identity_site(
        tmp_path,
        broker.bootstrap,
        uid,
        1.0,
        monitoring=_monitoring(T0, watch=watch),
    )
    topology, plan, uc, conf = prepared(path)
    rng = random.Random(5)
    n = 4000
    records = []
    for i in range(2 * n):
        second = i >= n
        rec = {"sensor": f"s{i % 8}", "ts": T0 + i * (HOUR_MS // n)}
        rec.update({f: round(rng.uniform(-3, 3), 4) for f in FIELDS})
        if second:
            rec["f3"] = round(rec["f3"] + 1.0, 4)
        records.append(rec)
    produce_records(conf, uc.raw_topic, [(r["sensor"].encode(), orjson.dumps(r)) for r in records])
    run_to_end(path)

    now = _at(T0 + 2 * HOUR_MS)
    with open_store(topology.sites["here"].sample_store) as store:
        monitor = Monitor(plan, "here", store)
        monitor.prepare()
        (ev,) = monitor.run_once(now)
        assert ev.rows == n
        raised = {(a.subject, a.statistic) for a in ev.alerts}
        assert raised == {("f3", "psi"), ("f3", "ks")}
        assert {a.severity for a in ev.alerts} <= {"warning", "critical"}

        # every statistic of every feature against numpy / scipy on the stored values
        ref_edges = store.query(
            f"SELECT column, edges FROM mlexec_references FINAL WHERE usecase = '{uc.name}'"
        )
        edges = dict(zip(ref_edges["column"].to_list(), ref_edges["edges"].to_list(), strict=True))
        for f in FIELDS:
            ref = _column(store, uc.table, f, T0, T0 + HOUR_MS)
            cur = _column(store, uc.table, f, T0 + HOUR_MS, T0 + 2 * HOUR_MS)
            assert len(ref) == len(cur) == n
            psi, js = _psi_js(ref, cur, edges[f])
            assert ev.values[(f, "psi")] == pytest.approx(psi, rel=1e-9, abs=1e-12)
            assert ev.values[(f, "js")] == pytest.approx(js, rel=1e-9, abs=1e-12)
            ks = stats.ks_2samp(cur, ref).statistic
            assert ev.values[(f, "ks")] == pytest.approx(ks, abs=1.5 / GRID)
            w = stats.wasserstein_distance(cur, ref)
            assert ev.values[(f, "wasserstein")] == pytest.approx(w, rel=0.03, abs=0.01)
            shift = abs(cur.mean() - ref.mean()) / ref.std()
            assert ev.values[(f, "mean_shift")] == pytest.approx(shift, rel=1e-6, abs=1e-9)
            # numpy's default bins differ from the stored equal-frequency edges a little
            e = np.quantile(ref, np.arange(1, 10) / 10)
            assert ev.values[(f, "psi")] == pytest.approx(_psi_js(ref, cur, list(e))[0], abs=0.01)
        assert ev.values[("f3", "ks")] == pytest.approx(1 / 6, abs=0.03)

        # the alerts are on the topic and in the table; a lasting drift does not alert again
        on_topic = [orjson.loads(v) for _k, v, *_ in read_topic(conf, "mlexec.alerts")]
        mine = [a for a in on_topic if a["usecase"] == uc.name]
        assert {(a["subject"], a["statistic"]) for a in mine} == raised
        assert all(a["kind"] == "drift" and a["reference"] == ev.reference for a in mine)
        table = store.query(
            f"SELECT subject, statistic FROM mlexec_alerts WHERE usecase = '{uc.name}'"
        )
        assert set(zip(table["subject"], table["statistic"], strict=True)) == raised
        (again,) = monitor.run_once(now + timedelta(minutes=1))
        assert again.alerts == []
        stored = store.query(f"SELECT count() AS n FROM mlexec_drift WHERE usecase = '{uc.name}'")[
            "n"
        ][0]
        assert stored == 2 * len(FIELDS) * 8


def _direct_topology(tmp: Path, bootstrap: str, uid: str, monitoring: dict[str, Any]) -> Path:
    """A use case whose samples the test writes straight into the store."""
    return identity_site(tmp, bootstrap, uid, 1.0, monitoring=monitoring)


def _sample_rows(
    start: int, n: int, rng: np.random.Generator, **columns: np.ndarray
) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        row: dict[str, Any] = {
            "record_id": f"r{start}-{i}",
            "key": f"s{i % 8}",
            "event_time": start + i * (HOUR_MS // n),
            "model": "mlp",
            "model_version": "7",
            "variant": "production",
            "sample_reason": "rate",
            "inference_ms": 0.1,
            "sampled_at": start,
            "y": 0.0,
        }
        for f in FIELDS:
            row[f] = float(columns[f][i]) if f in columns else float(rng.normal())
        rows.append(row)
    return rows


def _monitor_over(store: Any, plan: Any, uc: Any, rows: list[dict[str, Any]]) -> Monitor:
    """Sample rows written straight into the use case's table, and a prepared monitor."""
    table = samples_table(uc)
    store.ensure_table(table)
    store.insert(table, rows_to_arrow(table, rows))
    monitor = Monitor(plan, "here", store)
    monitor.prepare()
    return monitor


def test_unshifted_data_raises_no_alert_over_several_seeds_and_quality_is_judged(
    broker, tmp_path, uid
):
    seeds = [11, 12, 13, 14, 15]
    n = 3000
    store_url = None
    for s, seed in enumerate(seeds):
        start = T0 + s * 10 * HOUR_MS
        path = _direct_topology(
            tmp_path, broker.bootstrap, uid, _monitoring(start, watch={f: _ALL for f in FIELDS})
        )
        topology = load_topology(path)
        plan = plan_topology(topology)
        (uc,) = plan.usecases.values()
        store_url = topology.sites["here"].sample_store
        ensure_topics(client_config(topology.sites["here"].kafka), plan.topics_at("here"))
        with open_store(store_url) as store:
            rng = np.random.default_rng(seed)
            rows = _sample_rows(start, n, rng) + _sample_rows(start + HOUR_MS, n, rng)
            monitor = _monitor_over(store, plan, uc, rows)
            (ev,) = monitor.run_once(_at(start + 2 * HOUR_MS))
            assert ev.rows == n
            assert ev.alerts == [], [a.message() for a in ev.alerts]
            assert len(ev.values) == len(FIELDS) * 8

    # the last seed's next hour: f5 misses 5 % of its values, f6 leaves its range 4 %
    start = T0 + len(seeds) * 10 * HOUR_MS - 8 * HOUR_MS
    rng = np.random.default_rng(99)
    f5 = rng.normal(size=n)
    f5[rng.choice(n, n // 20, replace=False)] = np.nan
    f6 = rng.normal(size=n)
    f6[rng.choice(n, n // 25, replace=False)] = 50.0
    assert store_url is not None
    with open_store(store_url) as store:
        table = samples_table(uc)
        store.insert(table, rows_to_arrow(table, _sample_rows(start, n, rng, f5=f5, f6=f6)))
        monitor = Monitor(plan, "here", store)
        (ev,) = monitor.run_once(_at(start + HOUR_MS))
    quality = {(a.subject, a.statistic): a.value for a in ev.alerts if a.kind == "quality"}
    assert quality == {
        ("f5", "null_rate"): pytest.approx(0.05),
        ("f6", "out_of_range"): pytest.approx(0.04),
    }
    assert {a.subject for a in ev.alerts} <= {"f5", "f6"}


def test_a_file_reference_and_a_missing_model_reference_say_what_to_do(broker, tmp_path, uid):
    import polars as pl

    rng = np.random.default_rng(3)
    pl.DataFrame({f: rng.normal(size=500) for f in FIELDS}).write_parquet(tmp_path / "ref.parquet")
    path = _direct_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        {"reference": {"kind": "file", "path": "ref.parquet"}, "watch": {"f1": {}}},
    )
    topology = load_topology(path)
    plan = plan_topology(topology)
    (uc,) = plan.usecases.values()
    assert uc.usecase.monitoring.reference.path == str(tmp_path / "ref.parquet")
    ensure_topics(client_config(topology.sites["here"].kafka), plan.topics_at("here"))
    with open_store(topology.sites["here"].sample_store) as store:
        monitor = Monitor(plan, "here", store)
        monitor.prepare()
        assert monitor.ensure_reference(uc) == f"file:{tmp_path / 'ref.parquet'}"
        prof = store.query("SELECT n, mean FROM mlexec_references FINAL WHERE column = 'f1'")
        assert prof["n"][0] == 500
        frame = pl.read_parquet(tmp_path / "ref.parquet")
        assert prof["mean"][0] == pytest.approx(frame["f1"].mean())

    doc = yaml.safe_load(path.read_text())
    doc["usecases"][f"uc{uid}"]["monitoring"]["reference"] = {"kind": "model"}
    path.write_text(yaml.safe_dump(doc))
    plan = plan_topology(load_topology(path))
    (uc,) = plan.usecases.values()
    with open_store(topology.sites["here"].sample_store) as store:
        monitor = Monitor(plan, "here", store)
        (ev,) = monitor.run_once(_at(T0 + HOUR_MS))
        assert ev.values == {}
        assert "mlexec monitor reference" in ev.notes[0]
        assert "model:7" in ev.notes[0]


def test_accuracy_per_version_and_variant_from_labels_on_the_feedback_topic(broker, tmp_path, uid):
    monitoring = {"accuracy": {"output": "y", "metric": "mae", "thresholds": {"warning": 0.3}}}
    path = _direct_topology(tmp_path, broker.bootstrap, uid, monitoring)
    topology, plan, uc, conf = prepared(path)
    rng = np.random.default_rng(8)
    n = 400
    rows = _sample_rows(T0, n, rng)
    noise = {"7": 0.1, "8": 0.6}
    labels, expected = [], {"7": [], "8": []}
    for i, row in enumerate(rows):
        row["y"] = float(rng.uniform())
        if i % 2:
            row["model_version"], row["variant"] = "8", "canary"
        if i % 5 == 4:
            continue  # not every prediction gets a label
        label = row["y"] + float(rng.choice([-1, 1])) * noise[row["model_version"]]
        expected[row["model_version"]].append(abs(label - row["y"]))
        if i % 3:
            labels.append({"record_id": row["record_id"], "label": label})
        else:  # by key and event time
            labels.append({"key": row["key"], "time": row["event_time"], "label": label})
    produce_records(conf, uc.feedback_topic, [(None, orjson.dumps(x)) for x in labels])
    produce_records(conf, uc.feedback_topic, [(b"k", b'{"record_id": "r1", "label": "yes"}')])
    with open_store(topology.sites["here"].sample_store) as store:
        monitor = _monitor_over(store, plan, uc, rows)
        (ev,) = monitor.run_once(_at(T0 + HOUR_MS))
        by = {r["version"]: r for r in ev.accuracy}
        assert {v: r["variant"] for v, r in by.items()} == {"7": "production", "8": "canary"}
        for version, errors in expected.items():
            assert by[version]["labelled"] == len(errors)
            assert by[version]["mae"] == pytest.approx(np.mean(errors))
            assert by[version]["rmse"] == pytest.approx(np.sqrt(np.mean(np.square(errors))))
        (alert,) = ev.alerts
        assert (alert.kind, alert.subject, alert.statistic) == ("accuracy", "8/canary", "mae")
        # labels are stored once: a second round ingests nothing new
        assert monitor.ingest() == {"feedback": 0, "metrics": 0, "rejected": 0, "alerts": 0}
        stored = store.query(f"SELECT count() AS n FROM feedback_uc{uid}")["n"][0]
        assert stored == len(labels)
    # the unreadable label is a dead letter with the reason
    (dead,) = read_topic(conf, uc.deadletter_topic)
    assert dead[1] == b'{"record_id": "r1", "label": "yes"}'
    reason = dict(dead[2])["mlexec.reason"].decode()
    assert "numeric label" in reason and "'yes'" in reason


def test_monitor_commands_record_a_reference_evaluate_and_show(broker, tmp_path, uid):
    import time

    import polars as pl
    from typer.testing import CliRunner

    from mlexec.cli import app

    rng = np.random.default_rng(21)
    train = pl.DataFrame({f: rng.normal(size=1000) for f in FIELDS})
    train.write_parquet(tmp_path / "train.parquet")
    watch = {"f0": {"psi": {"warning": 0.1}}, "f1": {"psi": {"warning": 0.1}}}
    path = _direct_topology(
        tmp_path, broker.bootstrap, uid, {"reference": {"kind": "model"}, "watch": watch}
    )
    topology, plan, uc, _conf = prepared(path)
    start = int(time.time() * 1000) - HOUR_MS // 2
    shifted = rng.normal(size=1000) + 1.0
    with open_store(topology.sites["here"].sample_store) as store:
        table = samples_table(uc)
        store.ensure_table(table)
        rows = _sample_rows(start, 1000, rng, f0=shifted)
        for row in rows:
            row["event_time"] = start + (row["event_time"] - start) // 2  # within the last hour
        store.insert(table, rows_to_arrow(table, rows))

    runner = CliRunner()

    def text(args: list[str]) -> str:
        done = runner.invoke(app, args)
        assert done.exit_code == 0, done.output
        return " ".join(done.output.split())  # as read, whatever the terminal's width

    out = text(["monitor", "run", str(path), "--once"])
    assert "no training data is recorded as reference 'model:7'" in out
    assert "mlexec monitor reference" in out

    data = tmp_path / "train.parquet"
    out = text(["monitor", "reference", str(path), "--usecase", uc.name, "--data", str(data)])
    assert f"recorded 1,000 rows of {data} as reference model:7" in out

    out = text(["monitor", "run", str(path), "--once"])
    assert "1,000 samples" in out
    assert "warning" in out and "psi of f0" in out
    assert "psi of f1" not in out

    # a gate: the drift lasts, so it fails again though it is no new alert any more
    gate = runner.invoke(app, ["monitor", "run", str(path), "--once", "--fail-on", "warning"])
    said = " ".join(gate.output.split())
    assert gate.exit_code == 1 and "1 watched value(s) at warning or above" in said, said
    assert "psi of f0" in said and "of f1" not in said.split("error:")[1]  # (the uid may hold "f1")
    calm = runner.invoke(app, ["monitor", "run", str(path), "--once", "--fail-on", "critical"])
    assert calm.exit_code == 0, calm.output

    done = runner.invoke(app, ["monitor", "show", str(path), "--usecase", uc.name])
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    rows = {m.group(1): ln for ln in lines if (m := re.match(r"^\W*(f\d)\W+psi\W", ln))}
    assert set(rows) == {"f0", "f1"}
    assert "warning" in rows["f0"]
    assert re.search(r"\Wok\W", rows["f1"])
    assert any("psi of f0" in ln for ln in lines)  # the alerts table

    shown = runner.invoke(app, ["monitor", "show", str(path), "--usecase", uc.name, "--json"])
    assert shown.exit_code == 0, shown.output
    view = json.loads(shown.output)[uc.name]
    psi = {r["column"]: r for r in view["drift"] if r["statistic"] == "psi"}
    assert psi["f0"]["severity"] == "warning" and psi["f1"]["severity"] in ("", None, "ok")
    assert any("psi of f0" in a["message"] for a in view["alerts"])

    done = runner.invoke(app, ["monitor", "show", str(path), "--usecase", "nope"])
    assert done.exit_code == 2 and "no use case 'nope'" in done.output  # a usage error

    # publishing a version with its training data records its reference
    from mlexec.operators.testing import make_mlp

    v8 = make_mlp(tmp_path / "v8.onnx", inputs=16, hidden=(8,), seed=8)
    args = ["model", "publish", str(path), str(v8), "--usecase", uc.name, "--version", "8"]
    out = text([*args, "--training-data", str(data)])
    assert "its training data is reference model:8" in out
    with open_store(topology.sites["here"].sample_store) as store:
        refs = store.query(
            "SELECT column, n FROM mlexec_references FINAL WHERE reference = 'model:8'"
        )
    assert sorted(refs["column"].to_list()) == ["f0", "f1"] and set(refs["n"]) == {1000}


def test_a_range_reference_is_profiled_only_once_it_is_over(broker, tmp_path, uid):
    path = _direct_topology(tmp_path, broker.bootstrap, uid, _monitoring(T0, watch={"f0": {}}))
    topology, plan, uc, _conf = prepared(path)
    rng = np.random.default_rng(2)
    with open_store(topology.sites["here"].sample_store) as store:
        monitor = _monitor_over(store, plan, uc, _sample_rows(T0, 500, rng))
        (early,) = monitor.run_once(_at(T0 + HOUR_MS // 2))  # half of the range has come
        assert early.values == {} and "profiled once it is over" in early.notes[0]
        assert store.query("SELECT count() AS n FROM mlexec_references")["n"][0] == 0
        (later,) = monitor.run_once(_at(T0 + 2 * HOUR_MS))  # an empty window: no verdict
        assert (
            later.rows == 0 and later.values == {} and "0 samples in the window" in later.notes[0]
        )
        prof = store.query("SELECT n FROM mlexec_references FINAL WHERE column = 'f0'")
        assert prof["n"][0] == 500
