"""Soak: a site under `mlexec up` at a steady rate for minutes; does resident memory stay flat?

Run with ``python -m benchmarks.soak`` (``--minutes 10 --rate 2000`` by default; not in
CI). It starts a local broker, a one-site topology (16 float fields, an MLP, micro-batch
dispatch, 1 % sampling into chDB) under `mlexec up`, produces at the given rate for the
given time (bounded in count and time), samples the resident memory of the pipeline and
store processes every 10 s, and prints the figures with the growth from the first to
the last minute. The local broker's own CPU grows with the size of a topic, so lag late
in a long run is partly the broker's.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import yaml
from confluent_kafka import Producer

from mlexec.connectors.broker import LocalBroker
from mlexec.operators.testing import make_mlp
from mlexec.runtime.lag import pipeline_lag, store_backlog
from mlexec.runtime.supervisor import read_status
from mlexec.topologies import load_topology, plan_topology

FIELDS = [f"f{i}" for i in range(16)]


def _rss_mb(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def _topology(work: Path, bootstrap: str) -> Path:
    make_mlp(work / "model.onnx", inputs=len(FIELDS), hidden=(64, 64), seed=1)
    doc = {
        "name": "soak",
        "sites": {
            "here": {
                "kafka": {"bootstrap": bootstrap},
                "sample_store": f"chdb://{work}/chdb",
                "state_dir": str(work / "state"),
            }
        },
        "usecases": {
            "soak": {
                "input": {
                    "partitions": 2,
                    "key": "sensor",
                    "time": "ts",
                    "schema": {"sensor": "str", "ts": "timestamp", **{f: "float" for f in FIELDS}},
                },
                "dispatch": {"kind": "microbatch", "max_records": 256, "max_wait": "50ms"},
                "model": {"name": "mlp", "version": "1", "path": str(work / "model.onnx")},
                "sampling": {"rate": 0.01},
                "retention": "1d",
            }
        },
    }
    path = work / "soak.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _produce(bootstrap: str, topic: str, rate: int, seconds: float, stop: threading.Event) -> int:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True}
    )
    rng = random.Random(3)
    sent, start = 0, time.monotonic()
    limit = int(rate * seconds)
    while sent < limit and not stop.is_set():
        due = int((time.monotonic() - start) * rate)
        while sent < min(due, limit):
            key = f"s{sent % 50}"
            rec: dict[str, object] = {"sensor": key, "ts": int(time.time() * 1000)}
            rec.update({f: round(rng.uniform(-3, 3), 4) for f in FIELDS})
            try:
                producer.produce(topic, orjson.dumps(rec), key=key.encode())
                sent += 1
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        time.sleep(0.01)
    producer.flush(60)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=2000)
    args = parser.parse_args()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="mlexec-soak-") as tmp, LocalBroker() as broker:
        work = Path(tmp)
        path = _topology(work, broker.bootstrap)
        plan = plan_topology(load_topology(path))
        uc = plan.usecases["soak"]
        up = subprocess.Popen(
            [sys.executable, "-m", "mlexec.cli", "up", str(path), "--site", "here"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stop = threading.Event()
        counted: list[int] = []
        try:
            time.sleep(5)  # topics and processes up
            producer = threading.Thread(
                target=lambda: counted.append(
                    _produce(broker.bootstrap, uc.raw_topic, args.rate, seconds, stop)
                )
            )
            producer.start()
            rows = []
            start = time.monotonic()
            while producer.is_alive() and time.monotonic() - start < seconds + 60:
                time.sleep(10)
                status = read_status(plan, "here") or {"parts": []}
                pids = {p["name"]: p["pid"] for p in status["parts"]}
                lag = pipeline_lag(plan, "here")
                backlog = store_backlog(plan, "here")
                rows.append(
                    (
                        time.monotonic() - start,
                        _rss_mb(pids.get("pipeline")),
                        _rss_mb(pids.get("store")),
                        lag[0] if lag else None,
                        backlog[0] if backlog else None,
                        sum(p["restarts"] for p in status["parts"]),
                    )
                )
                t, rp, rs, lg, bl, rst = rows[-1]
                print(
                    f"{t:6.0f}s  pipeline {rp or 0:7.1f} MB  store {rs or 0:7.1f} MB  "
                    f"lag {lg}  store backlog {bl}  restarts {rst}",
                    flush=True,
                )
            producer.join()
        finally:
            stop.set()
            up.send_signal(signal.SIGTERM)
            up.wait(60)
    per_minute = [r for r in rows if r[1] is not None]
    first = [r for r in per_minute if r[0] <= 70]
    last = [r for r in per_minute if r[0] >= per_minute[-1][0] - 60]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    print()
    print(
        f"{counted[0] if counted else 0:,} records at {args.rate:,}/s for {args.minutes:g} min, one run, local Tansu"
    )
    print("| process | RSS first minute (MB) | RSS last minute (MB) | growth |")
    print("|---|---:|---:|---:|")
    for i, name in ((1, "pipeline"), (2, "store")):
        a = mean([float(r[i]) for r in first if r[i]])  # type: ignore[arg-type]
        b = mean([float(r[i]) for r in last if r[i]])  # type: ignore[arg-type]
        print(f"| {name} | {a:.1f} | {b:.1f} | {100 * (b - a) / a:+.1f} % |")
    print(
        f"max lag {max((r[3] or 0) for r in rows):,} records; restarts {rows[-1][5] if rows else 0}; pid {os.getpid()}"
    )


if __name__ == "__main__":
    main()
