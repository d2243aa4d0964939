"""On-request dispatch on the real broker: every request gets exactly one correlated reply."""

from __future__ import annotations

import random
import subprocess
import sys
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import polars as pl
import pytest
import yaml

from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.runtime.run import prepare_site, run_pipeline
from mlexec.topologies import load_topology, plan_topology
from tests.dataflows.spine import FIELDS, T0, spine_topology
from tests.waiting import wait_for

MLEXEC = [sys.executable, "-m", "mlexec.cli"]
AGGS = {"f0": ["mean", "max"], "f1": ["std", "slope"]}
KEYS = 8
STEP_MS = 100


def _topology(tmp, bootstrap: str, uid: str, raw: str | None = None):
    path = spine_topology(
        tmp,
        bootstrap,
        uid,
        dispatch="{kind: request, timeout: 3s, keep: 1h, idle_close: 1s}",
        reduction=f"{{kind: aggregate, fields: {orjson.dumps(AGGS).decode()}}}",
        sampling="{rate: 0.0}",
    )
    if raw is not None:
        doc = yaml.safe_load(path.read_text())
        (uc_doc,) = doc["usecases"].values()
        uc_doc["input"]["topic"] = raw
        path.write_text(yaml.safe_dump(doc))
    plan = plan_topology(load_topology(path))
    conf = client_config(plan.topology.sites["here"].kafka)
    ensure_topics(conf, plan.topics_at("here"))
    return path, plan, conf


def _records(n: int) -> list[dict[str, Any]]:
    rng = random.Random(11)
    out = []
    for i in range(n):
        rec = {"sensor": f"s{i % KEYS}", "ts": T0 + i * STEP_MS}
        rec.update({f: round(rng.uniform(-3, 3), 4) for f in FIELDS})
        out.append(rec)
    return out


def _range_requests(count: int, span_ms: int, horizon_ms: int) -> list[dict[str, Any]]:
    rng = random.Random(5)
    out = []
    for i in range(count):
        start = T0 + rng.randrange(0, horizon_ms - span_ms, STEP_MS)
        out.append(
            {
                "request_id": f"r{i}",
                "key": f"s{rng.randrange(KEYS)}",
                "from": start,
                "to": start + span_ms,
            }
        )
    return out


def _expected(records: list[dict], request: dict, model: ort.InferenceSession) -> float:
    frame = pl.DataFrame(records).filter(
        (pl.col("sensor") == request["key"])
        & (pl.col("ts") >= request["from"])
        & (pl.col("ts") < request["to"])
    )
    x = frame["f0"].to_numpy()
    t, y = frame["ts"].to_numpy() / 1000.0, frame["f1"].to_numpy()
    slope = np.polyfit(t - t.mean(), y, 1)[0] if len(t) > 1 else 0.0
    features = np.array([[x.mean(), x.max(), y.std(), slope]], dtype=np.float32)
    return float(model.run(None, {model.get_inputs()[0].name: features})[0][0, 0])


def _replies(conf: dict[str, Any], topic: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for key, value, _, _, _ in read_topic(conf, topic):
        doc = orjson.loads(value)
        assert key == doc["request_id"].encode()
        out.setdefault(doc["request_id"], []).append(doc)
    return out


@pytest.mark.integration
def test_a_thousand_requests_get_a_thousand_correlated_replies_and_errors_are_replies(
    broker, tmp_path, uid
):
    path, plan, conf = _topology(tmp_path, broker.bootstrap, uid)
    (uc,) = plan.usecases.values()
    records = _records(2_000)  # 200 s of event time over 8 keys
    produce_records(conf, uc.raw_topic, [(r["sensor"].encode(), orjson.dumps(r)) for r in records])
    requests = _range_requests(950, span_ms=5_000, horizon_ms=190_000)
    payloads = [{"request_id": f"p{i}", "payload": records[i * 7 : i * 7 + 3]} for i in range(48)]
    unknown = {"request_id": "unknown", "key": "nobody", "from": T0, "to": T0 + 1_000}
    future = {"request_id": "late", "key": "s1", "from": T0, "to": T0 + 10**9}
    everything = [*requests, *payloads, unknown, future]
    assert len(everything) == 1_000
    proc = subprocess.Popen(
        [*MLEXEC, "run", str(path), "--site", "here"], stderr=subprocess.PIPE, text=True
    )
    try:
        produce_records(
            conf,
            uc.requests_topic,
            [(r["request_id"].encode(), orjson.dumps(r)) for r in everything],
        )
        got: list[dict[str, list[dict[str, Any]]]] = [{}]

        def replied() -> bool:
            got[0] = _replies(conf, uc.replies_topic)
            return len(got[0]) >= 1_000

        try:
            wait_for(replied, 120, "1,000 replies", every=0.5)
        except AssertionError:
            pass  # said below, with the run's stderr
        replies = got[0]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert len(replies) == 1_000, f"{len(replies)} replies; stderr: {err[-2000:]}"
    assert all(len(v) == 1 for v in replies.values()), "one reply per request"
    model = ort.InferenceSession(str(tmp_path / "model.onnx"))
    for request in requests:
        (reply,) = replies[request["request_id"]]
        assert reply["ok"], reply
        (prediction,) = reply["predictions"]
        assert prediction["id"] == f"{uc.name}:{request['key']}:{request['from']}"
        assert prediction["outputs"]["y"] == pytest.approx(
            _expected(records, request, model), abs=1e-5
        )
    for p in payloads:
        (reply,) = replies[p["request_id"]]
        assert reply["ok"] and len(reply["predictions"]) == 3  # a record each
    assert replies["unknown"][0] == {
        "request_id": "unknown",
        "ok": False,
        "error": "unknown key 'nobody'",
    }
    assert not replies["late"][0]["ok"] and replies["late"][0]["error"].startswith("timeout:")


@pytest.mark.integration
def test_one_and_two_workers_reply_the_same(broker, tmp_path, uid):
    records = _records(600)
    requests = _range_requests(200, span_ms=3_000, horizon_ms=58_000)
    outcomes = []
    for workers in (1, 2):
        (tmp_path / f"w{workers}").mkdir()
        _, plan, conf = _topology(
            tmp_path / f"w{workers}", broker.bootstrap, f"{uid}w{workers}", raw=f"raw-{uid}"
        )
        (uc,) = plan.usecases.values()
        if workers == 1:
            rows = [(r["sensor"].encode(), orjson.dumps(r)) for r in records]
            produce_records(conf, uc.raw_topic, rows)
        produce_records(
            conf, uc.requests_topic, [(r["request_id"].encode(), orjson.dumps(r)) for r in requests]
        )
        run = prepare_site(plan, "here")
        run_pipeline(run, until_end=True, workers=workers, recovery=False, batch_size=50)
        prefix = f"{uc.name}:"
        outcomes.append(
            {
                rid: [
                    (p["id"].removeprefix(prefix), p["outputs"]["y"])
                    for p in docs[0]["predictions"]
                ]
                for rid, docs in _replies(conf, uc.replies_topic).items()
            }
        )
    assert len(outcomes[0]) == 200
    assert outcomes[0] == outcomes[1]
