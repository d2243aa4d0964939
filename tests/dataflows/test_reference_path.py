"""The batched hot path gives what a plain per-record implementation gives.

The reference below handles one message at a time with the standard library — json,
its own type checks, onnxruntime on one row, its own splitmix64 — sharing no code with
the operators. The site dataflow (columnar batches, vectorised checks, one numpy batch
per inference, sampling decided on the batch) must agree with it on every prediction,
every dead letter and every sample.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from mlexec.connectors.reading import read_topic
from tests.dataflows.spine import FIELDS, feed, run_to_end, spine_topology

pytestmark = pytest.mark.integration

RATE = 0.3
_MASK = (1 << 64) - 1
_FLOAT32_MAX = 3.4028234663852886e38


def _splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _kept(partition: int, offset: int) -> bool:
    return (_splitmix64((partition << 48) | offset) >> 11) * 2.0**-53 < RATE


def _fits(record: Any) -> bool:
    if not isinstance(record, dict):
        return False
    if not isinstance(record.get("sensor"), str):
        return False
    ts = record.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float | str):
        return False
    for f in FIELDS:
        v = record.get(f)
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        if not math.isfinite(v) or abs(v) > _FLOAT32_MAX:
            return False
    return True


def reference(messages: list[tuple[int, int, bytes]], topic: str, model: str) -> dict[str, Any]:
    """One message at a time: parse, check, score one row, decide the sample."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    predictions, dead, samples = {}, set(), set()
    for partition, offset, value in messages:
        try:
            record = json.loads(value.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            dead.add((partition, offset))
            continue
        if not _fits(record):
            dead.add((partition, offset))
            continue
        x = np.array([[record[f] for f in FIELDS]], dtype=np.float32)
        y = float(session.run(None, {name: x})[0][0, 0])
        rid = f"{topic}:{partition}:{offset}"
        predictions[rid] = (record["sensor"], int(record["ts"]), y)
        if _kept(partition, offset):
            samples.add(rid)
    return {"predictions": predictions, "dead": dead, "samples": samples}


def test_batched_path_equals_the_per_record_reference(broker, tmp_path, uid):
    path = spine_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        dispatch="{kind: microbatch, max_records: 256, max_wait: 20ms}",
        reduction="{kind: identity}",
        sampling=f"{{rate: {RATE}}}",
    )
    _, _, uc, conf, values, positions, _, bad = feed(path, n=4000, bad_every=9)
    run_to_end(path)
    messages = [(p, o, v) for (p, o), v in zip(positions, values, strict=True)]
    want = reference(messages, uc.raw_topic, str(tmp_path / "model.onnx"))

    got_predictions = {}
    for _, value, _, _, _ in read_topic(conf, uc.predictions_topic):
        doc = orjson.loads(value)
        got_predictions[doc["id"]] = (doc["key"], doc["time"], doc["outputs"]["y"])
    got_dead = {
        (int(dict(h)["mlexec.partition"]), int(dict(h)["mlexec.offset"]))
        for _, _, h, _, _ in read_topic(conf, uc.deadletter_topic)
    }
    got_samples = {
        orjson.loads(v)["record_id"] for _, v, _, _, _ in read_topic(conf, uc.samples_topic)
    }

    assert len(want["dead"]) == len(bad) > 400
    assert got_dead == want["dead"]
    assert got_predictions.keys() == want["predictions"].keys()
    for rid, (key, ts, y) in want["predictions"].items():
        got_key, got_ts, got_y = got_predictions[rid]
        assert (got_key, got_ts) == (key, ts)
        assert got_y == pytest.approx(y, abs=1e-6)  # one row or a batch: float32 either way
    assert got_samples == want["samples"]
    assert 0.25 * len(want["predictions"]) < len(got_samples) < 0.35 * len(want["predictions"])
