"""End-to-end throughput of the site dataflow next to its two yardsticks, in one run.

    make bench          # or: .venv/bin/python -m benchmarks.e2e --records 300000 --repeat 3

On one local Tansu broker (127.0.0.1, 2 input partitions, ~190-byte JSON records of
16 floats, an MLP 16→64→64→1, batch 256) it measures, each on a fresh topic:

(a) onnxruntime alone on the same model at batch 1 / 32 / 256 / 2048 (the limit);
(b) the loop a user writes instead: confluent-kafka consume (tuned for Tansu) → orjson
    → numpy → onnxruntime → one produce per prediction;
(c) the mlexec site dataflow: micro-batch dispatch, identity reduction, inference,
    predictions, 1 % sampling to the samples topic, dead-letter path live; then its
    store phase (samples topic → chDB) timed on its own;
(d) the same with a 10 s tumbling-window aggregation per key;
(e) (c) with 2 bytewax workers in one process.

It prints records/s (medians over ``--repeat`` runs) and the ratios to (a) and (b).
Tansu's CPU grows with a topic's size, so every pipeline reads a topic of its own.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import yaml
from bytewax.run import cli_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from connectors.broker import LocalBroker
from connectors.kafka import CONSUMER_TUNING, client_config, ensure_topics, produce_records
from connectors.samplestore import open_store
from dataflows.run import prepare_site
from dataflows.site import build_flow
from operators.testing import make_mlp
from topologies import load_topology, plan_topology
from topologies.plan import TopicSpec

FIELDS = [f"f{i}" for i in range(16)]
BATCH = 256
PARTITIONS = 2


def make_records(n: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, len(FIELDS))).round(3)
    t0 = int(time.time() * 1000) - n
    out = []
    for i in range(n):
        key = f"s{i % 64}"
        rec = {"sensor": key, "ts": t0 + i, **dict(zip(FIELDS, values[i].tolist(), strict=True))}
        out.append((key.encode(), orjson.dumps(rec)))
    return out


def fill(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    conf = {"bootstrap.servers": bootstrap}
    ensure_topics(conf, [TopicSpec(topic, PARTITIONS)])
    produce_records({**conf, "linger.ms": 20, "batch.num.messages": 10000}, topic, records)


# ---------------------------------------------------------------- (a) onnxruntime


def onnx_alone(model: Path, records: int) -> dict[int, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(2048, len(FIELDS))).astype(np.float32)
    rates = {}
    for batch in (1, 32, 256, 2048):
        chunk = x[:batch]
        runs = max(records // batch, 20)
        started = time.perf_counter()
        for _ in range(runs):
            session.run(None, {"x": chunk})
        rates[batch] = runs * batch / (time.perf_counter() - started)
    return rates


# ------------------------------------------------------------ (b) hand-written loop


def handwritten(bootstrap: str, topic: str, model: Path, n: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **CONSUMER_TUNING,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    out_topic = f"{topic}.predictions"
    ensure_topics({"bootstrap.servers": bootstrap}, [TopicSpec(out_topic, PARTITIONS)])
    seen, at_end = 0, set()
    started = time.perf_counter()
    while len(at_end) < PARTITIONS:
        msgs = consumer.consume(BATCH, 0.1)
        good = []
        for m in msgs:
            if m.error() is None:
                good.append(m)
            elif m.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(m.partition())
        if not good:
            continue
        rows = [orjson.loads(m.value()) for m in good]
        x = np.array([[r[f] for f in FIELDS] for r in rows], dtype=np.float32)
        (y,) = session.run(None, {"x": x})
        for m, r, score in zip(good, rows, y[:, 0].tolist(), strict=True):
            value = orjson.dumps(
                {"id": f"{m.partition()}:{m.offset()}", "key": r["sensor"], "score": score}
            )
            while True:
                try:
                    producer.produce(out_topic, value=value, key=m.key())
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        seen += len(good)
    producer.flush(60)
    elapsed = time.perf_counter() - started
    consumer.close()
    assert seen == n, (seen, n)
    return n / elapsed


# ------------------------------------------------------------- (c)-(e) mlexec


def mlexec_site(
    bootstrap: str, topic: str, model: Path, work: Path, n: int, *, window: bool, workers: int = 1
) -> tuple[float, float, int]:
    """(records/s of the pipeline, seconds of the store phase, samples stored)."""
    uid = uuid.uuid4().hex[:6]
    if window:
        model = make_mlp(work / f"w{uid}.onnx", inputs=len(FIELDS) * 2, hidden=(64, 64), seed=0)
        dispatch = {"kind": "tumbling", "size": "10s", "lateness": "1s"}
        reduction = {"kind": "aggregate", "fields": {f: ["mean", "max"] for f in FIELDS}}
    else:
        dispatch = {"kind": "microbatch", "max_records": BATCH, "max_wait": "20ms"}
        reduction = {"kind": "identity"}
    doc = {
        "name": f"bench{uid}",
        "sites": {
            "here": {"kafka": {"bootstrap": bootstrap}, "sample_store": f"chdb://{work}/chdb-{uid}"}
        },
        "usecases": {
            f"uc{uid}": {
                "input": {
                    "topic": topic,
                    "partitions": PARTITIONS,
                    "key": "sensor",
                    "time": "ts",
                    "schema": {"sensor": "str", "ts": "timestamp", **{f: "float" for f in FIELDS}},
                },
                "dispatch": dispatch,
                "reduction": reduction,
                "model": {"name": "mlp", "version": "1", "path": str(model)},
                "sampling": {"rate": 1.0 if window else 0.01},
            }
        },
    }
    path = work / f"topology-{uid}.yaml"
    path.write_text(yaml.safe_dump(doc))
    plan = plan_topology(load_topology(path))
    run = prepare_site(plan, "here")
    conf = client_config(plan.topology.sites["here"].kafka)
    ensure_topics(conf, plan.topics_at("here"))
    with open_store(plan.topology.sites["here"].sample_store) as store:
        for rt in run.store:
            store.ensure_table(rt.table)
    process = build_flow(f"p{uid}", conf, process=run.process, until_end=True, producers=workers)
    started = time.perf_counter()
    cli_main(process, workers_per_process=workers)
    pipeline = n / (time.perf_counter() - started)
    store_flow = build_flow(
        f"s{uid}",
        conf,
        store=run.store,
        store_url=plan.topology.sites["here"].sample_store,
        until_end=True,
    )
    started = time.perf_counter()
    cli_main(store_flow)
    store_elapsed = time.perf_counter() - started
    with open_store(plan.topology.sites["here"].sample_store) as store:
        table = next(iter(plan.usecases.values())).table
        stored = int(store.query(f"SELECT count() AS n FROM mlexec.{table}")["n"][0])
    return pipeline, store_elapsed, stored


def median(fn: Callable[[], float], repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    n = args.records
    records = make_records(n)
    size = statistics.mean(len(v) for _, v in records[:1000])
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        work = Path(tmp)
        model = make_mlp(work / "mlp.onnx", inputs=16, hidden=(64, 64), outputs=1, seed=0)

        def fresh(kind: str) -> str:
            topic = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
            fill(broker.bootstrap, topic, records)
            return topic

        onnx = onnx_alone(model, n)
        loop = median(lambda: handwritten(broker.bootstrap, fresh("loop"), model, n), args.repeat)
        site_runs = [
            mlexec_site(broker.bootstrap, fresh("site"), model, work, n, window=False)
            for _ in range(args.repeat)
        ]
        site = statistics.median(r[0] for r in site_runs)
        store_seconds = statistics.median(r[1] for r in site_runs)
        stored = site_runs[0][2]
        window = median(
            lambda: mlexec_site(broker.bootstrap, fresh("win"), model, work, n, window=True)[0],
            args.repeat,
        )
        two = median(
            lambda: mlexec_site(
                broker.bootstrap, fresh("two"), model, work, n, window=False, workers=2
            )[0],
            args.repeat,
        )

    print(
        f"\n{n:,} records of ~{size:.0f} bytes, {PARTITIONS} partitions, MLP 16→64→64→1, batch {BATCH}, "
        f"median of {args.repeat} run(s), local Tansu broker on 127.0.0.1\n"
    )
    rows = [
        ("(a) onnxruntime alone, batch 1", onnx[1]),
        ("(a) onnxruntime alone, batch 32", onnx[32]),
        ("(a) onnxruntime alone, batch 256", onnx[256]),
        ("(a) onnxruntime alone, batch 2048", onnx[2048]),
        ("(b) hand-written confluent-kafka loop", loop),
        ("(c) mlexec site dataflow, micro-batch, 1 % sampled", site),
        ("(d) mlexec site dataflow, 10 s tumbling window + aggregation", window),
        ("(e) mlexec site dataflow, micro-batch, 2 workers", two),
    ]
    print("| pipeline | records/s | ÷ (b) hand-written | ÷ (a) onnxruntime @256 |")
    print("|---|---:|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {rate / loop:.2f} | {rate / onnx[256]:.3f} |")
    print(
        f"\nstore phase of (c): {stored:,} samples into chDB in {store_seconds:.2f} s, start-up included"
    )


if __name__ == "__main__":
    main()
