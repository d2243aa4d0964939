"""Every dispatch rule in a real site dataflow on the real broker.

One worker and two workers give the same predictions and the same dead letters; a
stateful reduction continues from bytewax recovery after a restart.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest
import yaml

from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.operators.testing import make_linear
from mlexec.runtime.run import prepare_site, run_pipeline
from mlexec.topologies import load_topology, plan_topology
from tests.dataflows.spine import FIELDS, T0, spine_topology

WINDOWED = "{kind: aggregate, fields: {f0: [mean, max, 'quantile(0.9)'], f1: [std, slope]}}"

KINDS = {
    "record": ("{kind: record}", "{kind: identity}"),
    "microbatch": ("{kind: microbatch, max_records: 50, max_wait: 20ms}", "{kind: identity}"),
    "tumbling": ("{kind: tumbling, size: 2s, lateness: 1s}", WINDOWED),
    "tumbling-correction": (
        "{kind: tumbling, size: 2s, lateness: 1s, late: correction, correct_for: 4s}",
        WINDOWED,
    ),
    "sliding": ("{kind: sliding, size: 3s, hop: 1s, lateness: 1s}", WINDOWED),
    "session": ("{kind: session, gap: 700ms, lateness: 1s}", WINDOWED),
    "count": ("{kind: count, count: 5}", WINDOWED),
    "cron": ("{kind: cron, schedule: '0 0 1 1 *'}", WINDOWED),
    "microbatch-onnx": (
        "{kind: microbatch, max_records: 50, max_wait: 20ms}",
        "{kind: onnx, path: pre.onnx, inputs: [f0, f1, f2], columns: [p, q]}",
    ),
    "tumbling-python": (
        "{kind: tumbling, size: 2s, lateness: 1s}",
        "{kind: python, entrypoint: 'tests.dataflows.test_dispatch_kinds:levels', "
        "columns: [level, spread]}",
    ),
    "condition": (
        "{kind: condition, field: f2, above: 2.0, clear: 0.0, cooldown: 1s, lookback: 2s}",
        WINDOWED,
    ),
}


def levels(frame: pl.DataFrame) -> pl.DataFrame:
    """A reduction entry point: per key and window, the mean of f0 and the range of f1."""
    return frame.group_by(["key", "group"], maintain_order=True).agg(
        pl.col("group_time").first().alias("time"),
        pl.col("f0").mean().alias("level"),
        (pl.col("f1").max() - pl.col("f1").min()).alias("spread"),
    )


def produce_jittered(conf: dict[str, Any], topic: str, n: int, seed: int = 7) -> list[dict]:
    """Keyed records on two partitions: out of order by up to 0.8 s, 3 % far behind."""
    rng = random.Random(seed)
    rows, records = [], []
    for i in range(n):
        late = rng.random() < 0.03
        behind = rng.randint(4_000, 9_000) if late else rng.randint(0, 800)
        rec = {"sensor": f"s{i % 6}", "ts": T0 + i * 50 - behind}
        rec.update({f: round(rng.uniform(-3, 3), 4) for f in FIELDS})
        records.append(rec)
        rows.append((rec["sensor"].encode(), orjson.dumps(rec)))
    produce_records(conf, topic, rows)
    return records


def _outcome(conf: dict[str, Any], plan) -> tuple[dict[str, Any], list[tuple[int, int]], int]:
    (uc,) = plan.usecases.values()
    final: dict[str, Any] = {}
    corrections = 0
    for _, value, _, _, _ in read_topic(conf, uc.predictions_topic):
        doc = orjson.loads(value)
        final[doc["id"]] = doc["outputs"]  # a correction replaces the first answer
        corrections += bool(doc.get("correction"))
    dead = sorted(
        (int(dict(h)["mlexec.partition"]), int(dict(h)["mlexec.offset"]))
        for _, _, h, _, _ in read_topic(conf, uc.deadletter_topic)
    )
    return final, dead, corrections


@pytest.mark.integration
@pytest.mark.parametrize("kind", list(KINDS))
def test_one_and_two_workers_give_the_same_predictions_and_dead_letters(
    broker, tmp_path, uid, kind
):
    dispatch, reduction = KINDS[kind]
    outcomes = []
    for workers in (1, 2):
        (tmp_path / f"w{workers}").mkdir()
        weights = np.arange(6, dtype=np.float32).reshape(3, 2) / 5
        make_linear(tmp_path / f"w{workers}" / "pre.onnx", weights)
        path = spine_topology(
            tmp_path / f"w{workers}",
            broker.bootstrap,
            f"{uid}w{workers}",
            dispatch=dispatch,
            reduction=reduction,
            sampling="{rate: 0.0}",
        )
        doc = yaml.safe_load(path.read_text())
        (uc_doc,) = doc["usecases"].values()
        uc_doc["input"]["topic"] = f"raw-{uid}"  # both read the same records
        path.write_text(yaml.safe_dump(doc))
        plan = plan_topology(load_topology(path))
        conf = client_config(plan.topology.sites["here"].kafka)
        ensure_topics(conf, plan.topics_at("here"))
        if workers == 1:
            produce_jittered(conf, f"raw-{uid}", 1_500)
        run = prepare_site(plan, "here")
        run_pipeline(run, until_end=True, workers=workers, recovery=False, batch_size=50)
        final, dead, corrections = _outcome(conf, plan)
        prefix = f"uc{uid}w{workers}:"
        outcomes.append(({k.removeprefix(prefix): v for k, v in final.items()}, dead))
        assert (corrections > 0) == (kind == "tumbling-correction")
    (one, dead_one), (two, dead_two) = outcomes
    assert one, f"{kind}: no predictions"
    assert one.keys() == two.keys()
    for record_id, outputs in one.items():
        assert np.allclose(outputs["y"], two[record_id]["y"], atol=1e-6), record_id
    assert dead_one == dead_two
    if kind.startswith(("tumbling", "sliding", "session")):
        assert dead_one, "the far-behind records are late"


@pytest.mark.integration
def test_a_stateful_reduction_continues_from_recovery_after_a_restart(broker, tmp_path, uid):
    path = spine_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        dispatch="{kind: tumbling, size: 1s}",
        reduction=(
            "{kind: aggregate, fields: {f0: [mean]}, publish: true, "
            "stateful: {ewma: {columns: [f0_mean], alpha: 0.4}, diff: [f0_mean]}}"
        ),
        sampling="{rate: 0.0}",
        model={"name": "mlp", "version": "7", "path": "model.onnx", "inputs": ["f0_mean"]},
    )
    # the model takes one column; the spine topology sized it for the declared three
    from mlexec.operators.testing import make_mlp

    make_mlp(tmp_path / "model.onnx", inputs=1, hidden=(8,), seed=3)
    plan = plan_topology(load_topology(path))
    (uc,) = plan.usecases.values()
    conf = client_config(plan.topology.sites["here"].kafka)
    ensure_topics(conf, plan.topics_at("here"))
    rng = random.Random(3)
    rows = []
    for i in range(400):  # in order; the restart falls on a window boundary (10 s)
        rec = {"sensor": f"s{i % 3}", "ts": T0 + i * 50}
        rec.update({f: round(rng.uniform(-3, 3), 4) for f in FIELDS})
        rows.append(rec)
    run = prepare_site(plan, "here")
    for part in (rows[:200], rows[200:]):
        produce_records(conf, uc.raw_topic, [(r["sensor"].encode(), orjson.dumps(r)) for r in part])
        run_pipeline(run, until_end=True, recovery=True)  # the second run resumes

    got: dict[str, tuple[float, float]] = {}
    for _, value, _, _, _ in read_topic(conf, uc.reduced_topic):
        doc = orjson.loads(value)
        for i, rid in enumerate(doc["record_id"]):
            got[rid] = (doc["columns"]["f0_mean_ewma"][i], doc["columns"]["f0_mean_diff"][i])
    frame = pl.DataFrame(rows).with_columns(window=pl.col("ts") - pl.col("ts") % 1000)
    means = frame.group_by(["sensor", "window"]).agg(pl.col("f0").mean()).sort(["sensor", "window"])
    assert len(got) == len(means) == 60
    for (sensor,), part in means.group_by(["sensor"], maintain_order=True):
        ewma, previous = None, None
        for window, mean in zip(part["window"], part["f0"], strict=True):
            ewma = mean if ewma is None else 0.4 * mean + 0.6 * ewma
            diff = 0.0 if previous is None else mean - previous
            previous = mean
            assert got[f"{uc.name}:{sensor}:{window}"] == pytest.approx((ewma, diff)), window
