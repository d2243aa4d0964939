"""The spine end to end on the real broker and chDB: predictions, dead letters, samples."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import orjson
import polars as pl
import pytest

from mlexec.connectors.reading import read_topic
from mlexec.connectors.samplestore import open_store
from mlexec.outputs import prepare_outputs, run_outputs
from tests.dataflows.spine import FIELDS, feed, run_to_end, spine_topology


@pytest.mark.integration
def test_every_valid_record_gets_one_prediction_equal_to_onnxruntime(broker, tmp_path, uid):
    path = spine_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        dispatch="{kind: microbatch, max_records: 128, max_wait: 20ms}",
        reduction="{kind: identity}",
        sampling='{rate: 0.2, keep_when: "y > 0.8"}',
        outputs=[{"kind": "kafka", "topic": f"actuate-{uid}"}],
    )
    topology, plan, uc, conf, values, positions, good, bad = feed(path, n=4000, bad_every=37)
    run_to_end(path)

    predictions = [orjson.loads(v) for _, v, _, _, _ in read_topic(conf, uc.predictions_topic)]
    by_id = {p["id"]: p for p in predictions}
    assert len(by_id) == len(predictions) == len(good)  # exactly one each

    expected_ids = [f"{uc.raw_topic}:{positions[i][0]}:{positions[i][1]}" for i in good]
    assert set(by_id) == set(expected_ids)
    x = np.array([[good[i][f] for f in FIELDS] for i in good], dtype=np.float32)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    got = np.array([by_id[rid]["outputs"]["y"] for rid in expected_ids])
    np.testing.assert_allclose(got, y[:, 0], rtol=1e-5, atol=1e-6)
    sample = by_id[expected_ids[0]]
    assert (
        sample["model"] == "mlp" and sample["version"] == "7" and sample["variant"] == "production"
    )
    assert (
        sample["key"] == good[next(iter(good))]["sensor"]
        and sample["time"] == good[next(iter(good))]["ts"]
    )
    assert sample["latency_ms"] >= 0
    run_outputs(prepare_outputs(plan, "here"), once=True)  # `mlexec act --once`
    extra = read_topic(conf, f"actuate-{uid}")  # a declared Kafka output gets the same answers
    assert sorted(v for _, v, _, _, _ in extra) == sorted(
        v for _, v, _, _, _ in read_topic(conf, uc.predictions_topic)
    )

    # every malformed record is in the dead-letter topic, original bytes and a reason
    dead = read_topic(conf, uc.deadletter_topic)
    assert len(dead) == len(bad)
    by_position = {}
    for _key, value, headers, _p, _o in dead:
        h = dict(headers)
        by_position[(int(h["mlexec.partition"]), int(h["mlexec.offset"]))] = (value, h)
    for i, (value, _kind) in bad.items():
        got_value, h = by_position[positions[i]]
        assert got_value == value
        assert h["mlexec.topic"].decode() == uc.raw_topic
        assert h["mlexec.reason"], "a dead letter must say why"
    reasons = {h["mlexec.reason"].decode().split(":")[0] for _, h in by_position.values()}
    assert len(reasons) >= 4  # different mistakes get different reasons

    # samples: the condition keeps all, the rate keeps ~20 % of the rest
    scores = dict(zip(expected_ids, y[:, 0].tolist(), strict=True))
    with open_store(topology.sites["here"].sample_store) as store:
        rows = store.query(f"SELECT record_id, sample_reason, y, f0 FROM mlexec.{uc.table} FINAL")
    kept = dict(zip(rows["record_id"].to_list(), rows["sample_reason"].to_list(), strict=True))
    must_keep = {rid for rid, s in scores.items() if s > 0.8}
    assert must_keep, "the test data should trigger the condition"
    assert must_keep <= set(kept)
    assert all(kept[rid] == "condition" for rid in must_keep)
    rest = len(scores) - len(must_keep)
    by_rate = sum(1 for rid, why in kept.items() if why == "rate")
    sigma = math.sqrt(rest * 0.2 * 0.8)
    assert abs(by_rate - 0.2 * rest) < 4 * sigma, (by_rate, rest)
    assert set(kept) <= set(scores)
    # sampled inputs are the record's own
    first = rows.filter(pl.col("record_id") == rows["record_id"][0])
    idx = expected_ids.index(first["record_id"][0])
    assert first["f0"][0] == pytest.approx(good[list(good)[idx]]["f0"])


@pytest.mark.integration
def test_replaying_the_input_does_not_duplicate_samples(broker, tmp_path, uid):
    path = spine_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        dispatch="{kind: microbatch, max_records: 256, max_wait: 10ms}",
        reduction="{kind: identity}",
        sampling="{rate: 0.3}",
    )
    topology, plan, uc, conf, *_ = feed(path, n=1500, bad_every=0)
    run_to_end(path)
    table = f"mlexec.{uc.table}"
    with open_store(topology.sites["here"].sample_store) as store:
        first = store.query(f"SELECT record_id FROM {table} FINAL ORDER BY record_id")
    run_to_end(path)  # no recovery: the same input again, from the beginning
    samples_sent = read_topic(conf, uc.samples_topic)
    assert len(samples_sent) == 2 * len(first)  # the replay did sample the same records again
    with open_store(topology.sites["here"].sample_store) as store:
        again = store.query(f"SELECT record_id FROM {table} FINAL ORDER BY record_id")
        store.command(f"OPTIMIZE TABLE {table} FINAL")
        merged = store.query(f"SELECT count() AS n, uniqExact(record_id) AS u FROM {table}")
    assert again["record_id"].to_list() == first["record_id"].to_list()
    assert merged["n"][0] == merged["u"][0] == len(first)
    assert 0.2 * 1500 < len(first) < 0.4 * 1500


@pytest.mark.integration
def test_tumbling_window_rows_equal_a_polars_reference(broker, tmp_path, uid):
    path = spine_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        dispatch="{kind: tumbling, size: 10s, lateness: 0s}",
        reduction="{kind: aggregate, fields: {f0: [mean, std, min, max, last, count]}}",
        sampling="{rate: 1.0}",
    )
    topology, plan, uc, conf, values, positions, good, bad = feed(path, n=3000, bad_every=0)
    run_to_end(path)

    frame = pl.DataFrame(
        {
            "key": [r["sensor"] for r in good.values()],
            "ts": [r["ts"] for r in good.values()],
            "f0": [r["f0"] for r in good.values()],
        }
    )
    reference = (
        frame.with_columns(window=pl.col("ts") - pl.col("ts") % 10_000)
        .sort(["key", "window", "ts"])
        .group_by(["key", "window"])
        .agg(
            f0_mean=pl.col("f0").mean(),
            f0_std=pl.col("f0").std(ddof=0),
            f0_min=pl.col("f0").min(),
            f0_max=pl.col("f0").max(),
            f0_last=pl.col("f0").last(),
            f0_count=pl.len().cast(pl.Float64),
        )
        .sort(["key", "window"])
    )
    predictions = [orjson.loads(v) for _, v, _, _, _ in read_topic(conf, uc.predictions_topic)]
    assert len(predictions) == reference.height  # one per key and window
    assert len({p["id"] for p in predictions}) == reference.height

    with open_store(topology.sites["here"].sample_store) as store:
        stored = store.query(
            f"""SELECT key, toUnixTimestamp64Milli(event_time) AS window, f0_mean, f0_std,
                       f0_min, f0_max, f0_last, f0_count
                FROM mlexec.{uc.table} FINAL ORDER BY key, window"""
        )
    assert stored.height == reference.height
    assert stored["key"].to_list() == reference["key"].to_list()
    assert stored["window"].to_list() == reference["window"].to_list()
    for col in ("f0_mean", "f0_std", "f0_min", "f0_max", "f0_last", "f0_count"):
        np.testing.assert_allclose(
            stored[col].to_numpy(), reference[col].to_numpy(), rtol=1e-9, atol=1e-9
        )
    assert read_topic(conf, uc.deadletter_topic) == []
