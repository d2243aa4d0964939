"""The model life cycle on the real broker and chDB: publish, hot-swap, rollback, canary,
A/B, shadow, large and tampered artifacts."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.connectors.kafka import produce_records
from mlexec.connectors.reading import read_topic
from mlexec.connectors.samplestore import open_store
from mlexec.lifecycle.protocol import (
    Routing,
    artifact_messages,
    key_shares,
    manifest_of,
    routing_message,
)
from mlexec.operators.testing import make_mlp
from tests.dataflows.spine import (
    FIELDS,
    T0,
    identity_site,
    prepared,
    run_to_end,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _model(path: Path, seed: int, hidden: tuple[int, ...] = (32,)) -> Path:
    return make_mlp(path, inputs=16, hidden=hidden, seed=seed)


def _records(n: int, start: int = 0, keys: int = 8, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed + start)
    out = []
    for i in range(start, start + n):
        rec: dict[str, Any] = {"sensor": f"k{i % keys}", "ts": T0 + i * 10}
        rec.update({f: round(rng.uniform(-3, 3), 4) for f in FIELDS})
        out.append(rec)
    return out


def _produce(conf: dict[str, Any], topic: str, records: list[dict[str, Any]]) -> set[str]:
    """Produce ``records``; their record ids."""
    positions = produce_records(
        conf, topic, [(r["sensor"].encode(), orjson.dumps(r)) for r in records]
    )
    return {f"{topic}:{p}:{o}" for p, o in positions}


def _predictions(conf: dict[str, Any], topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(v) for _k, v, *_ in read_topic(conf, topic, timeout=60)]


def _expected(model: Path, records: dict[str, dict[str, Any]], ids: list[str]) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = np.asarray([[records[i][f] for f in FIELDS] for i in ids], dtype=np.float32)
    return session.run(None, {"x": x})[0][:, 0]


def _site(tmp_path: Path, broker: Any, uid: str, rate: float, batch: int = 256, **usecase: Any):  # type: ignore[no-untyped-def]
    """A one-site use case (identity reduction, micro-batches, sampling at ``rate``), ready."""
    path = identity_site(tmp_path, broker.bootstrap, uid, rate, batch, **usecase)
    return (path, *prepared(path))


def _pushed(usecase: str, version: str, data: bytes, width: int) -> list[tuple[bytes, bytes]]:
    """A version's messages as a publisher would write them, unchecked, made production."""
    manifest = manifest_of(
        usecase,
        "mlp",
        version,
        data,
        [("x", ["n", width])],
        [("y", "float", ["n", 1])],
        "production",
        0.0,
    )
    routing = Routing(usecase, production="10").promote(version)
    return [*artifact_messages(manifest, data), routing_message(routing)]


def _still_serving(
    path: Path, conf: dict[str, Any], uc: Any, messages: Any, version: str, first: int
) -> list[str]:
    """Push ``messages`` onto the registry, run 200 records: ``version`` predicts them all.

    Returns the use case's ``model`` alerts so far.
    """
    produce_records(conf, "mlexec.models", messages)
    ids = _produce(conf, uc.raw_topic, _records(200, first))
    run_to_end(path)
    later = [p for p in _predictions(conf, uc.predictions_topic) if p["id"] in ids]
    assert len(later) == 200 and {p["version"] for p in later} == {version}
    alerts = [orjson.loads(v) for _k, v, *_ in read_topic(conf, "mlexec.alerts")]
    return [a["message"] for a in alerts if a["usecase"] == uc.name and a["kind"] == "model"]


def _cli(*args: str) -> str:
    done = CliRunner().invoke(app, ["model", *args], env={"COLUMNS": "240"})
    assert done.exit_code == 0, done.output
    return " ".join(done.output.split())


def _by_id(conf: dict[str, Any], topic: str, ids: Any = None) -> dict[str, Any]:
    """Raw records by record id (topic:partition:offset), read back: all, or those in ``ids``."""
    out = {}
    for _k, value, _h, partition, offset in read_topic(conf, topic, timeout=60):
        rid = f"{topic}:{partition}:{offset}"
        if ids is None or rid in ids:
            out[rid] = orjson.loads(value)
    return out


def test_a_running_dataflow_swaps_versions_on_publish_and_rollback_without_a_restart(
    broker, tmp_path, uid
):
    path, topology, plan, uc, conf = _site(tmp_path, broker, uid, 0.0, batch=64)
    v7, v8 = tmp_path / "model.onnx", _model(tmp_path / "v8.onnx", seed=8)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlexec.cli",
            "run",
            str(path),
            "--site",
            "here",
            "--part",
            "pipeline",
        ],
        cwd=os.getcwd(),
    )
    try:
        _produce(conf, uc.raw_topic, _records(1500))
        wait_for(
            lambda: len(_predictions(conf, uc.predictions_topic)) == 1500,
            90,
            "the first predictions",
        )

        # records keep coming while v8 is published: the swap lands between two batches
        fed = threading.Event()

        def feed_while_publishing() -> None:
            for i in range(30):
                _produce(conf, uc.raw_topic, _records(100, 1500 + 100 * i))
                if i == 3:
                    fed.set()  # records are flowing: publish now
                time.sleep(0.1)  # the pace of the feed, not a wait for anything

        feeding = threading.Thread(target=feed_while_publishing)
        feeding.start()
        assert fed.wait(60), "the feed did not start"
        out = _cli(
            "publish",
            str(path),
            str(v8),
            "--usecase",
            uc.name,
            "--version",
            "8",
            "--stage",
            "production",
        )
        assert "version 8" in out and "8 promoted to production" in out
        feeding.join()
        wait_for(
            lambda: len(_predictions(conf, uc.predictions_topic)) >= 4500, 90, "all predictions"
        )
        preds = _predictions(conf, uc.predictions_topic)
        ids = [p["id"] for p in preds]
        assert len(ids) == len(set(ids)) == 4500  # none lost, none doubled
        records = _by_id(conf, uc.raw_topic)
        assert len(records) == 4500
        by_partition: dict[str, list[tuple[int, str]]] = {}
        for p in preds:
            _topic, partition, offset = p["id"].rsplit(":", 2)
            by_partition.setdefault(partition, []).append((int(offset), p["version"]))
        for rows in by_partition.values():
            versions = [v for _, v in sorted(rows)]
            switch = versions.index("8")  # once a partition sees v8, only v8 follows
            assert set(versions[:switch]) == {"7"} and set(versions[switch:]) == {"8"}
        for version, model in (("7", v7), ("8", v8)):
            mine = [p for p in preds if p["version"] == version]
            assert mine and all(p["variant"] == "production" for p in mine)
            want = _expected(model, records, [p["id"] for p in mine])
            got = np.asarray([p["outputs"]["y"] for p in mine])
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)

        out = _cli("rollback", str(path), "--usecase", uc.name)
        assert "rolled back from 8 to 7" in out
        serving = Path(topology.sites["here"].state_dir) / "models" / uc.name / "serving.json"
        wait_for(
            lambda: Routing.parse(serving.read_bytes()).production == "7",
            60,
            "the running dataflow to serve 7 again",
        )
        late = _produce(conf, uc.raw_topic, _records(500, 4500))
        wait_for(
            lambda: len(_predictions(conf, uc.predictions_topic)) >= 5000,
            90,
            "the rolled-back ones",
        )
        after = [p for p in _predictions(conf, uc.predictions_topic) if p["id"] in late]
        assert len(after) == 500 and {p["version"] for p in after} == {"7"}
        listed = _cli("list", str(path), "--usecase", uc.name)
        assert re.search(r"\b7\W+production\W", listed) and re.search(r"\b8\W+retired\W", listed)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_canary_shares_keys_stickily_across_a_restart_and_ab_splits_by_variant(
    broker, tmp_path, uid
):
    path, topology, plan, uc, conf = _site(tmp_path, broker, uid, 0.0)
    v8 = _model(tmp_path / "v8.onnx", seed=8)
    _cli(
        "publish",
        str(path),
        str(v8),
        "--usecase",
        uc.name,
        "--version",
        "8",
        "--stage",
        "canary",
        "--traffic",
        "0.1",
    )
    n = 10_000
    _produce(conf, uc.raw_topic, _records(n, keys=n))
    run_to_end(path)
    first = {
        p["key"]: (p["variant"], p["version"]) for p in _predictions(conf, uc.predictions_topic)
    }
    assert len(first) == n
    canary = {k for k, (variant, _) in first.items() if variant == "canary"}
    assert all(first[k][1] == "8" for k in canary)
    assert all(v == ("production", "7") for k, v in first.items() if k not in canary)
    sigma = (0.1 * 0.9 / n) ** 0.5
    assert abs(len(canary) / n - 0.1) < 4 * sigma
    shares = key_shares(list(first))
    assert canary == {k for k, s in zip(first, shares, strict=True) if s < 0.1}

    # a restart (the flow resumes from recovery): the same keys, the same variants
    again = _produce(conf, uc.raw_topic, _records(n, start=n, keys=n))
    run_to_end(path)
    second = [p for p in _predictions(conf, uc.predictions_topic) if p["id"] in again]
    assert len(second) == n
    assert all(first[p["key"]] == (p["variant"], p["version"]) for p in second)

    # A/B: half the keys each, named
    _cli("split", str(path), "--usecase", uc.name, "A=7:0.5", "B=8:0.5")
    split = _produce(conf, uc.raw_topic, _records(4000, start=2 * n, keys=4000))
    run_to_end(path)
    third = [p for p in _predictions(conf, uc.predictions_topic) if p["id"] in split]
    counts = {v: sum(p["variant"] == v for p in third) for v in ("A", "B")}
    assert sum(counts.values()) == 4000 and abs(counts["A"] / 4000 - 0.5) < 0.05
    assert all(p["version"] == {"A": "7", "B": "8"}[p["variant"]] for p in third)


def test_shadow_predictions_go_to_the_sample_store_only(broker, tmp_path, uid):
    path, topology, plan, uc, conf = _site(tmp_path, broker, uid, 1.0)
    v9 = _model(tmp_path / "v9.onnx", seed=9)
    _cli("publish", str(path), str(v9), "--usecase", uc.name, "--version", "9", "--stage", "shadow")
    records = _records(800)
    _produce(conf, uc.raw_topic, records)
    run_to_end(path)
    preds = _predictions(conf, uc.predictions_topic)
    assert len(preds) == 800
    assert {(p["version"], p["variant"]) for p in preds} == {("7", "production")}
    with open_store(topology.sites["here"].sample_store) as store:
        rows = store.query(
            f"SELECT record_id, model_version, variant, y FROM {uc.table} FINAL ORDER BY record_id"
        )
    shadow = rows.filter(rows["variant"] == "shadow")
    assert shadow.height == 800 and set(shadow["model_version"]) == {"9"}
    assert rows.filter(rows["variant"] == "production").height == 800
    by_id = _by_id(conf, uc.raw_topic)
    want = _expected(v9, by_id, shadow["record_id"].to_list())
    np.testing.assert_allclose(shadow["y"].to_numpy(), want, rtol=1e-6, atol=1e-7)


def test_a_5_mb_model_serves_and_a_tampered_or_unfit_one_is_refused(broker, tmp_path, uid):
    path, topology, plan, uc, conf = _site(tmp_path, broker, uid, 0.0)
    big = _model(tmp_path / "big.onnx", seed=10, hidden=(1300, 1000))
    assert big.stat().st_size > 5_000_000
    out = _cli(
        "publish",
        str(path),
        str(big),
        "--usecase",
        uc.name,
        "--version",
        "10",
        "--stage",
        "production",
    )
    assert "in 11 chunk(s)" in out
    first = _records(600)
    _produce(conf, uc.raw_topic, first)
    run_to_end(path)
    preds = _predictions(conf, uc.predictions_topic)
    assert {p["version"] for p in preds} == {"10"}
    by_id = _by_id(conf, uc.raw_topic)
    want = _expected(big, by_id, [p["id"] for p in preds])
    np.testing.assert_allclose([p["outputs"]["y"] for p in preds], want, rtol=1e-5, atol=1e-6)

    # version 11 with one chunk changed on the way: refused, 10 keeps serving, an alert
    data = _model(tmp_path / "v11.onnx", seed=11, hidden=(1300, 1000)).read_bytes()
    messages = _pushed(uc.name, "11", data, 16)
    key, chunk = messages[3]
    messages[3] = (key, chunk[:100] + bytes([chunk[100] ^ 0xFF]) + chunk[101:])
    refused = _still_serving(path, conf, uc, messages, "10", first=600)
    assert len(refused) == 1 and "sha256" in refused[0] and "10 keeps serving" in refused[0]

    # a model that does not fit the use case is refused by the dataflow when it is pushed
    # onto the registry past the command's check, and before it is published by the command
    narrow = make_mlp(tmp_path / "narrow.onnx", inputs=8, hidden=(4,), seed=1).read_bytes()
    refused = _still_serving(path, conf, uc, _pushed(uc.name, "12", narrow, 8), "10", first=900)
    assert len(refused) == 2 and "version 12" in refused[1] and "takes 8 columns" in refused[1]
    done = CliRunner().invoke(
        app,
        [
            "model",
            "publish",
            str(path),
            str(tmp_path / "narrow.onnx"),
            "--usecase",
            uc.name,
            "--version",
            "12",
        ],
    )
    assert done.exit_code == 1
    assert "takes 8 columns" in " ".join(done.output.split())


def test_drift_to_promotion_train_publish_canary_promote_end_to_end(broker, tmp_path, uid):
    """An inaccurate production model, labels on the feedback topic: the accuracy alert
    trains a better version, it serves a canary, the policy promotes it."""
    from mlexec.lifecycle.reaction import follow
    from mlexec.monitoring.monitor import Monitor
    from mlexec.operators.testing import make_linear

    rng = np.random.default_rng(5)
    truth = rng.normal(size=(16, 1))
    monitoring = {
        "window": "1h",
        "accuracy": {"output": "y", "metric": "mae", "thresholds": {"warning": 0.5}},
    }
    lifecycle = {
        "min_labels": 50,
        "promote_when_better_by": 0.1,
        "rollback_when_worse_by": 0.1,
        "training": {
            "entrypoint": "tests.lifecycle.trainers:fit_linear",
            "min_rows": 300,
            "canary": 0.3,
            "retrain_on": ["accuracy"],
        },
    }
    path, topology, plan, uc, conf = _site(
        tmp_path, broker, uid, 1.0, monitoring=monitoring, lifecycle=lifecycle
    )
    make_linear(tmp_path / "model.onnx", truth + rng.normal(scale=0.5, size=(16, 1)))  # v7: off

    def serve(n: int, start: int) -> None:
        """n records through the site; their true labels onto the feedback topic."""
        records = _records(n, start, keys=500)
        ids = _produce(conf, uc.raw_topic, records)
        run_to_end(path)
        by_id = _by_id(conf, uc.raw_topic, ids)
        labels = [
            (
                None,
                orjson.dumps(
                    {"record_id": i, "label": float(np.dot([r[f] for f in FIELDS], truth[:, 0]))}
                ),
            )
            for i, r in by_id.items()
        ]
        produce_records(conf, uc.feedback_topic, labels)

    serve(1000, 0)
    store_url = topology.sites["here"].sample_store
    with open_store(store_url) as store:
        monitor = follow(Monitor(plan, "here", store))
        monitor.prepare()
        (ev,) = monitor.run_once(_ms(T0 + 3_600_000))
    (accuracy,) = [a for a in ev.alerts if a.kind == "accuracy"]
    assert accuracy.subject == "7/production"
    events = _lifecycle(conf, uc.name)
    assert len(events) == 1 and "retrained" in events[0] and "version 8" in events[0]
    assert "8 canary 30%" in events[0]
    listed = _cli("list", str(path), "--usecase", uc.name)
    assert re.search(r"\b8\W+canary 30%", listed)
    doc = json.loads(_cli("list", str(path), "--usecase", uc.name, "--json"))[uc.name]
    assert doc["routing"]["canary"] == ["8", 0.3]
    assert {v["version"]: v["stage_now"] for v in doc["versions"]}["8"].startswith("canary")

    serve(2000, 1000)  # the canary serves its share of the keys
    compared = _cli("compare", str(path), "--usecase", uc.name, "--window", "2h")
    assert "canary" in compared and "production" in compared
    with open_store(store_url) as store:
        monitor = follow(Monitor(plan, "here", store))
        (ev,) = monitor.run_once(_ms(T0 + 3_600_000))
    events = _lifecycle(conf, uc.name)
    assert len(events) == 2 and "canary 8" in events[1] and "promoted to production" in events[1]

    serve(500, 3000)  # everything on 8 now
    preds = _predictions(conf, uc.predictions_topic)
    last = sorted(preds, key=lambda p: p["time"])[-500:]
    assert {(p["version"], p["variant"]) for p in last} == {("8", "production")}
    # and version 8 is the better model on those records
    errors = [abs(p["outputs"]["y"] - _label(p, conf, uc, truth)) for p in last[:50]]
    assert np.mean(errors) < 0.1


def _ms(ms: int):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC)


def _lifecycle(conf: dict[str, Any], usecase: str) -> list[str]:
    alerts = [orjson.loads(v) for _k, v, *_ in read_topic(conf, "mlexec.alerts")]
    return [a["message"] for a in alerts if a["usecase"] == usecase and a["kind"] == "lifecycle"]


def _label(pred: dict[str, Any], conf: dict[str, Any], uc: Any, truth: np.ndarray) -> float:
    rec = _by_id(conf, uc.raw_topic, {pred["id"]})[pred["id"]]
    return float(np.dot([rec[f] for f in FIELDS], truth[:, 0]))


def test_a_worse_canary_is_rolled_back_by_policy_and_train_publishes_a_better_candidate(
    broker, tmp_path, uid
):
    from mlexec.lifecycle.reaction import follow
    from mlexec.monitoring.monitor import Monitor
    from mlexec.operators.testing import make_linear

    rng = np.random.default_rng(6)
    truth = rng.normal(size=(16, 1))
    path = identity_site(
        tmp_path,
        broker.bootstrap,
        uid,
        1.0,
        monitoring={"accuracy": {"output": "y", "metric": "rmse", "thresholds": {"critical": 99}}},
        lifecycle={
            "min_labels": 50,
            "rollback_when_worse_by": 0.2,
            "promote_when_better_by": 0.2,
            "training": {
                "entrypoint": "tests.lifecycle.trainers:fit_linear",
                "min_rows": 300,
                "canary": 0,
            },
        },
    )
    make_linear(tmp_path / "model.onnx", truth + rng.normal(scale=0.1, size=(16, 1)))  # v7: close
    worse = make_linear(tmp_path / "v8.onnx", truth + rng.normal(scale=1.0, size=(16, 1)))
    topology, plan, uc, conf = prepared(path)
    out = _cli(
        "publish",
        str(path),
        str(worse),
        "--usecase",
        uc.name,
        "--version",
        "8",
        "--stage",
        "canary",
        "--traffic",
        "0.5",
    )
    assert "8 canary 50%" in out
    records = _records(1200, keys=300)
    ids = _produce(conf, uc.raw_topic, records)
    run_to_end(path)
    by_id = _by_id(conf, uc.raw_topic, ids)
    produce_records(
        conf,
        uc.feedback_topic,
        [
            (
                None,
                orjson.dumps(
                    {"record_id": i, "label": float(np.dot([r[f] for f in FIELDS], truth[:, 0]))}
                ),
            )
            for i, r in by_id.items()
        ],
    )
    with open_store(topology.sites["here"].sample_store) as store:
        monitor = follow(Monitor(plan, "here", store))
        monitor.prepare()
        monitor.run_once(_ms(T0 + 3_600_000))
    (event,) = _lifecycle(conf, uc.name)
    assert "canary 8 rmse" in event and "rolled back" in event
    listed = _cli("list", str(path), "--usecase", uc.name)
    assert re.search(r"\b8\W+retired", listed) and re.search(r"\b7\W+production", listed)

    # by hand: mlexec train fits on the labelled samples and beats 7 on the held-out rows
    done = CliRunner().invoke(app, ["train", str(path), "--usecase", uc.name])
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "trained" in text and "version 9" in text and "9 published as a candidate" in text
    listed = _cli("list", str(path), "--usecase", uc.name)
    assert re.search(r"\b9\W+candidate", listed)
    out = _cli(
        "stage",
        str(path),
        "--usecase",
        uc.name,
        "--version",
        "9",
        "--stage",
        "canary",
        "--traffic",
        "0.2",
    )
    assert "9 canary 20%" in out
    done = CliRunner().invoke(
        app,
        ["model", "stage", str(path), "--usecase", uc.name, "--version", "77", "--stage", "shadow"],
    )
    assert done.exit_code == 1 and "no published version 77" in " ".join(done.output.split())


def _fails_when_run() -> bytes:
    """A model that fits the use case's signature (16 floats in, ``y`` out) but fails in
    onnxruntime on every batch: it gathers a column the input does not have."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "idx"], ["y"], axis=1)],
        "fails",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor("idx", TensorProto.INT64, [1], [100])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_a_version_that_fails_at_serve_time_falls_back_and_dead_letters_its_batch(
    broker, tmp_path, uid
):
    """A version that fails inside onnxruntime, pushed past the publish check: the flow goes
    on — the batch it failed on is dead-lettered, a model alert goes out, the topology's
    version serves every later record, and a restart does not serve the bad one again."""
    path, topology, plan, uc, conf = _site(tmp_path, broker, uid, 0.0)
    data = _fails_when_run()
    manifest = manifest_of(
        uc.name,
        "mlp",
        "12",
        data,
        [("x", ["n", 16])],
        [("y", "float", ["n", 1])],
        "production",
        0.0,
    )
    routing = Routing(uc.name, production="7").promote("12")
    produce_records(
        conf, "mlexec.models", [*artifact_messages(manifest, data), routing_message(routing)]
    )
    first = _produce(conf, uc.raw_topic, _records(600))
    run_to_end(path)
    preds = {p["id"]: p for p in _predictions(conf, uc.predictions_topic)}
    dead = {
        f"{dict(h)['mlexec.topic'].decode()}:{dict(h)['mlexec.partition'].decode()}:"
        f"{dict(h)['mlexec.offset'].decode()}": dict(h)
        for _k, _v, h, *_ in read_topic(conf, uc.deadletter_topic)
    }
    assert set(preds) | set(dead) == first and not set(preds) & set(dead)  # each once
    assert dead and all(h["mlexec.stage"] == b"infer" for h in dead.values())
    reason = next(iter(dead.values()))["mlexec.reason"].decode()
    assert "version 12 failed at serve time" in reason and "7 serves instead" in reason
    assert {p["version"] for p in preds.values()} == {"7"}
    by_id = _by_id(conf, uc.raw_topic)
    ids = sorted(preds)
    want = _expected(tmp_path / "model.onnx", by_id, ids)
    np.testing.assert_allclose([preds[i]["outputs"]["y"] for i in ids], want, rtol=1e-5, atol=1e-6)
    alerts = [orjson.loads(v) for _k, v, *_ in read_topic(conf, "mlexec.alerts")]
    model_alerts = [a for a in alerts if a["usecase"] == uc.name and a["kind"] == "model"]
    assert (
        len(model_alerts) == 1 and "version 12 failed at serve time" in model_alerts[0]["message"]
    )

    # a restart reads the same registry: 12 is not served again, nothing is dead-lettered
    later = _produce(conf, uc.raw_topic, _records(200, 600))
    run_to_end(path)
    again = {p["id"]: p for p in _predictions(conf, uc.predictions_topic) if p["id"] in later}
    assert set(again) == later and {p["version"] for p in again.values()} == {"7"}
    assert len(read_topic(conf, uc.deadletter_topic)) == len(dead)
