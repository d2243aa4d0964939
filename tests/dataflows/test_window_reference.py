"""The batched window path gives what a plain per-record implementation of windows gives.

The reference below takes one message at a time, in each partition's order, with the
standard library only: json, its own type checks, its own per-partition watermark
(the newest event time read minus the lateness), its own tumbling-window assignment
and aggregations in plain Python floats, onnxruntime on one row per window. It shares
no code with the operators. The site dataflow (columnar window assignment, one polars
aggregation per closed batch, one inference batch) must agree with it on every
window's id, features (its samples) and prediction, and every dead letter — on 1 and 2 workers.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from mlexec.connectors.kafka import produce_records
from mlexec.connectors.reading import read_topic
from mlexec.runtime.run import prepare_site, run_pipeline
from mlexec.topologies import load_topology, plan_topology
from tests.dataflows.spine import FIELDS, T0, malformed_record, prepared, spine_topology

pytestmark = pytest.mark.integration

SIZE_MS, LATENESS_MS = 2_000, 500
AGGREGATIONS = {
    "f0": ["mean", "std", "min", "max"],
    "f1": ["sum", "count", "slope"],
    "f2": ["quantile(0.9)", "ptp", "rms"],
}
FEATURES = [
    f"{field}_{spec.replace('(', '_').replace(')', '').replace('.', '_')}"
    for field, specs in AGGREGATIONS.items()
    for spec in specs
]


def _aggregate(spec: str, values: list[float], times: list[float]) -> float:
    n = len(values)
    mean = math.fsum(values) / n
    if spec == "mean":
        return mean
    if spec == "std":
        return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    if spec == "min":
        return min(values)
    if spec == "max":
        return max(values)
    if spec == "sum":
        return math.fsum(values)
    if spec == "count":
        return float(n)
    if spec == "ptp":
        return max(values) - min(values)
    if spec == "rms":
        return math.sqrt(math.fsum(v * v for v in values) / n)
    if spec == "slope":
        t_mean = math.fsum(times) / n
        den = math.fsum((t - t_mean) ** 2 for t in times)
        num = math.fsum((t - t_mean) * (v - mean) for t, v in zip(times, values, strict=True))
        return num / den if den else 0.0
    assert spec == "quantile(0.9)"
    ordered = sorted(values)
    at = 0.9 * (n - 1)
    lo = math.floor(at)
    hi = min(lo + 1, n - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (at - lo)


def _fits(record: Any) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("sensor"), str):
        return False
    if isinstance(record.get("ts"), bool) or not isinstance(record.get("ts"), int):
        return False
    for f in FIELDS:
        v = record.get(f)
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        if not math.isfinite(v) or abs(v) > 3.4028234663852886e38:
            return False
    return True


def reference(messages: list[tuple[int, int, bytes]], uc: str, model: str) -> dict[str, Any]:
    """One message at a time: parse, check, assign, judge late, aggregate, score one row."""
    newest: dict[int, int] = {}
    windows: dict[tuple[str, int], list[tuple[int, int, dict[str, Any]]]] = defaultdict(list)
    dead = set()
    for partition, offset, value in sorted(messages):  # each partition in offset order
        try:
            record = json.loads(value.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            dead.add((partition, offset))
            continue
        if not _fits(record):
            dead.add((partition, offset))
            continue
        ts = record["ts"]
        start = ts - ts % SIZE_MS
        watermark = newest.get(partition, -(2**62)) - LATENESS_MS
        newest[partition] = max(newest.get(partition, ts), ts)
        if start + SIZE_MS <= watermark:  # its window had closed on this partition
            dead.add((partition, offset))
            continue
        windows[(record["sensor"], start)].append((partition, offset, record))
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    predictions = {}
    for (key, start), members in windows.items():
        members.sort(key=lambda m: (m[2]["ts"], m[0], m[1]))
        first = min(m[2]["ts"] for m in members)
        times = [(m[2]["ts"] - first) / 1000.0 for m in members]
        row = [
            _aggregate(spec, [float(m[2][field]) for m in members], times)
            for field, specs in AGGREGATIONS.items()
            for spec in specs
        ]
        (y,) = session.run(None, {name: np.array([row], dtype=np.float32)})
        predictions[f"{uc}:{key}:{start}"] = (row, float(y[0, 0]))
    return {"predictions": predictions, "dead": dead}


def _produce(conf: dict[str, Any], topic: str, n: int) -> list[tuple[int, int, bytes]]:
    """Keyed records on two partitions, out of order by up to 0.4 s, 3 % far behind, some
    malformed, some with extreme but valid values."""
    rng = random.Random(11)
    keys, values = [], []
    for i in range(n):
        if i % 41 == 40:
            value, _ = malformed_record(i, rng)
            keys.append(b"s0")
            values.append(value)
            continue
        behind = rng.randint(2_500, 6_000) if rng.random() < 0.03 else rng.randint(0, 400)
        rec: dict[str, Any] = {"sensor": f"s{i % 5}", "ts": T0 + i * 25 - behind}
        rec.update({f: round(rng.uniform(-3, 3), 4) for f in FIELDS})
        if i % 97 == 0:
            rec["f0"] = 3.0e38 if i % 2 else -1e-300  # extreme, within float32's range
        keys.append(rec["sensor"].encode())
        values.append(orjson.dumps(rec))
    positions = produce_records(conf, topic, list(zip(keys, values, strict=True)))
    return [(p, o, v) for (p, o), v in zip(positions, values, strict=True)]


@pytest.mark.parametrize("workers", [1, 2])
def test_windows_equal_the_per_record_reference(broker, tmp_path, uid, workers):
    aggregate = json.dumps({"kind": "aggregate", "fields": AGGREGATIONS})
    path = spine_topology(
        tmp_path,
        broker.bootstrap,
        f"{uid}w{workers}",
        dispatch=f"{{kind: tumbling, size: {SIZE_MS}ms, lateness: {LATENESS_MS}ms}}",
        reduction=aggregate,
        sampling="{rate: 1.0}",  # every window's features go to the samples topic
    )
    _, plan, uc, conf = prepared(path)
    messages = _produce(conf, uc.raw_topic, 3_000)
    run = prepare_site(plan_topology(load_topology(path)), "here")
    run_pipeline(run, until_end=True, workers=workers, recovery=False, batch_size=64)
    want = reference(messages, uc.name, str(tmp_path / "model.onnx"))

    got = {}
    for _, value, _, _, _ in read_topic(conf, uc.predictions_topic):
        doc = orjson.loads(value)
        assert doc["id"] not in got, f"window {doc['id']} out twice"
        got[doc["id"]] = doc["outputs"]["y"]
    features = {}
    for _, value, _, _, _ in read_topic(conf, uc.samples_topic):
        doc = orjson.loads(value)
        features[doc["record_id"]] = [doc[c] for c in FEATURES]
    dead = {
        (int(dict(h)["mlexec.partition"]), int(dict(h)["mlexec.offset"]))
        for _, _, h, _, _ in read_topic(conf, uc.deadletter_topic)
    }
    malformed = sum(1 for _, _, v in messages if not _fits(_loads(v)))
    assert len(want["dead"]) - malformed > 20, "the far-behind records are late"
    assert dead == want["dead"]
    assert got.keys() == want["predictions"].keys() == features.keys()
    for wid, (row, y) in want["predictions"].items():
        assert features[wid] == pytest.approx(row, rel=1e-9, abs=1e-12), wid
        assert got[wid] == pytest.approx(y, rel=1e-5, abs=1e-6), wid
    # every record is in exactly one window (its count) or a dead letter
    members = FEATURES.index("f1_count")
    assert sum(f[members] for f in features.values()) + len(dead) == len(messages)


def _loads(value: bytes) -> Any:
    try:
        return json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def picky(frame: Any) -> Any:
    """A python reduction that fails on any window of key s3 (the others: f0's mean)."""
    import polars as pl

    if "s3" in frame["key"].to_list():
        raise ValueError("s3 is not reducible")
    return frame.group_by(["key", "group"], maintain_order=True).agg(
        pl.col("group_time").first().alias("time"), pl.col("f0").mean().alias("level")
    )


def test_a_window_the_reduction_fails_on_costs_only_its_own_records(broker, tmp_path, uid):
    """Windows of every bucket closed at once are reduced together; when the reduction
    fails, it is retried window by window and only the failing windows' records are
    dead letters (stage reduce, with the reason) — every other window is predicted."""
    path = spine_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        dispatch=f"{{kind: tumbling, size: {SIZE_MS}ms, lateness: {LATENESS_MS}ms}}",
        reduction="{kind: python, entrypoint: 'tests.dataflows.test_window_reference:picky', "
        "columns: [level]}",
        sampling="{rate: 0.0}",
    )
    _, plan, uc, conf = prepared(path)
    rng = random.Random(5)
    rows = []
    for i in range(1_200):  # in order: no late records; keys s0..s5
        rec: dict[str, Any] = {"sensor": f"s{i % 6}", "ts": T0 + i * 20}
        rec.update({f: round(rng.uniform(-3, 3), 4) for f in FIELDS})
        rows.append((rec["sensor"].encode(), orjson.dumps(rec)))
    positions = produce_records(conf, uc.raw_topic, rows)
    run_pipeline(prepare_site(plan, "here"), until_end=True, workers=1, recovery=False)

    keys = {pos: orjson.loads(v)["sensor"] for pos, (_, v) in zip(positions, rows, strict=True)}
    windows = {(k, T0 + i * 20 - (T0 + i * 20) % SIZE_MS) for i, k in enumerate(
        orjson.loads(v)["sensor"] for _, v in rows
    )}  # fmt: skip
    got = {orjson.loads(v)["id"] for _, v, _, _, _ in read_topic(conf, uc.predictions_topic)}
    assert got == {f"{uc.name}:{k}:{w}" for k, w in windows if k != "s3"}
    dead = {}
    for _, _, h, _, _ in read_topic(conf, uc.deadletter_topic):
        head = {k: v.decode() for k, v in h}
        dead[(int(head["mlexec.partition"]), int(head["mlexec.offset"]))] = head
    assert set(dead) == {pos for pos, k in keys.items() if k == "s3"}
    assert all(h["mlexec.stage"] == "reduce" for h in dead.values())
    assert all("s3 is not reducible" in h["mlexec.reason"] for h in dead.values())
