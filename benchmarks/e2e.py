"""End-to-end throughput, latency and memory of the site dataflow next to its yardsticks.

    make bench          # or: .venv/bin/python -m benchmarks.e2e --records 300000 --repeat 3

On one local Tansu broker (127.0.0.1, 2 input partitions, ~220-byte JSON records of
16 floats, an MLP 16→64→64→1, batch 256) it measures, in one run, each pipeline in a
process of its own (so its peak memory is its own) on a broker of its own:

(a) onnxruntime alone on the same model at batch 1 / 32 / 256 / 2048 (the limit);
(b) the loop a user writes instead: confluent-kafka consume (tuned for Tansu) → orjson
    → numpy → onnxruntime → one produce per prediction;
(c) Quix Streams 3.28 doing the same (``.venv-quix``; skipped, and said so, without it);
(d) the mlexec site dataflow — micro-batch dispatch, identity reduction, inference,
    predictions, 1 % sampling to the samples topic (then into chDB by the store phase,
    timed on its own), the dead-letter path live — on 1, 2 and 3 processes (a bytewax
    cluster over loopback);
(e) the same with a 10 s tumbling-window aggregation per key, next to (f) a hand-written
    windowed loop, (g) Quix Streams' own tumbling window and (h) bytewax's windowing
    operators, per record (`benchmarks/windows.py`);
(t) a tree ensemble in place of the MLP — LightGBM's defaults (100 trees of 31 leaves)
    on the 16 fields, exported through onnxmltools — through (a), (b) and (d).

Throughput is records / wall time from the first process start to the last process
end, median of ``--repeat`` runs. Latency is produce → prediction (the prediction
message's timestamp minus the record's), p50 / p99 over ``--latency-seconds`` of
records produced at ``--rate`` per second after one warm-up record. Tansu's CPU grows
with what it holds, so every run starts a broker of its own, and runs are interleaved.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import onnxruntime as ort
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from benchmarks.runners import FIELDS, PARTITIONS, CpuTrace, cpu_between, ensure_out
from benchmarks.tables import _median, report
from benchmarks.windows import Windows
from mlexec.connectors import reading
from mlexec.connectors.broker import LocalBroker, free_port
from mlexec.connectors.kafka import ensure_topics, produce_records
from mlexec.operators.testing import make_mlp
from mlexec.topologies.plan import TopicSpec

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
QUIX_PYTHON = ROOT / ".venv-quix" / "bin" / "python"


#: Sensors of the scaling runs: 256 keys fall 128 / 128 on the 2 partitions (the default
#: partitioner's crc32), 64 keys 34 / 30, and a cluster's rate is its larger share's.
SCALE_KEYS = 256


def make_records(n: int, seed: int = 0, keys: int = 64) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, len(FIELDS))).round(3)
    t0 = int(time.time() * 1000) - n
    out = []
    for i in range(n):
        key = f"s{i % keys}"
        rec = {"sensor": key, "ts": t0 + i, **dict(zip(FIELDS, values[i].tolist(), strict=True))}
        out.append((key.encode(), orjson.dumps(rec)))
    return out


def fill(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes, bytes]],
    config: tuple[tuple[str, str], ...] = (),
) -> None:
    conf = {"bootstrap.servers": bootstrap}
    ensure_topics(conf, [TopicSpec(topic, PARTITIONS, config)])
    produce_records({**conf, "linger.ms": 20, "batch.num.messages": 10000}, topic, records)


def from_start(bootstrap: str, topic: str) -> Consumer:
    """A consumer of every partition of ``topic`` from its first message."""
    consumer = reading.consumer({"bootstrap.servers": bootstrap}, "bench-reader")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    return consumer


def output_stamps(bootstrap: str, topic: str, count: int) -> tuple[float, float]:
    """Epoch seconds of the first and the last message of ``topic`` (producer timestamps).

    Read with the default fetch wait: a topic of one message a batch (Quix Streams
    produces so) meets the local broker's slow path at the short wait mlexec tunes for.
    """
    with reading.TopicReader(
        {"bootstrap.servers": bootstrap}, "bench-reader", settings={"fetch.wait.max.ms": 500}
    ) as reader:
        reader.assign((topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS))
        stamps = [m.timestamp()[1] for m in reader.read_to_end(600.0, topic)]
    if len(stamps) != count:
        raise RuntimeError(f"{topic}: {len(stamps)} of {count} outputs")
    return min(stamps) / 1000, max(stamps) / 1000


def output_span(bootstrap: str, topic: str, count: int) -> float:
    """Seconds from the first to the last message of ``topic``."""
    first, last = output_stamps(bootstrap, topic, count)
    return max(last - first, 0.001)


def _result(proc: subprocess.Popen[str], what: str) -> dict[str, Any]:
    out, err = proc.communicate(timeout=600)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]
    raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{err[-3000:]}")


def _child(command: str, args: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.runners", command, json.dumps(args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _quix(args: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(QUIX_PYTHON), str(ROOT / "benchmarks" / "quix_app.py"), json.dumps(args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------- (a) onnxruntime


def make_tree(path: Path) -> Path:
    """LightGBM's default regressor (100 trees, 31 leaves) on the 16 fields, via onnxmltools."""
    import lightgbm
    import onnx
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    x = np.random.default_rng(2).normal(size=(20_000, len(FIELDS))).astype(np.float32)
    y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2] - np.abs(x[:, 3])
    reg = lightgbm.LGBMRegressor(verbose=-1).fit(x, y)
    model = convert_lightgbm(reg, initial_types=[("x", FloatTensorType([None, len(FIELDS)]))])
    onnx.save(model, str(path))
    return path


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


# ------------------------------------------------------------ pipelines, one run each


def _own_broker(run: Callable[..., T]) -> Callable[..., T]:
    """Run a measurement on a broker of its own: Tansu's work grows with what it holds,
    so a shared one would favour whichever pipeline runs first."""

    @functools.wraps(run)
    def wrapped(self: Bench, *args: Any, **kwargs: Any) -> T:
        with LocalBroker() as broker:
            self.bootstrap, self.broker_pid = broker.bootstrap, broker.pid
            return run(self, *args, **kwargs)

    return wrapped


class Bench:
    """One model, the records; a broker of its own and fresh topics for every run."""

    def __init__(self, work: Path, n: int, keys: int = 64) -> None:
        self.bootstrap = ""
        self.broker_pid: int | None = None
        self._broker_mark = 0.0
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.n = n
        self.records = make_records(n, keys=keys)
        self.model = make_mlp(work / "mlp.onnx", inputs=16, hidden=(64, 64), outputs=1, seed=0)
        self.window_model = make_mlp(
            work / "window.onnx", inputs=len(FIELDS) * 2, hidden=(64, 64), seed=0
        )
        self.tree_model = make_tree(work / "lightgbm.onnx")
        self.store_runs: list[dict[str, Any]] = []
        self.windows = Windows.of(self.records)

    def broker_cpu(self) -> float:
        """CPU seconds the broker process has used so far."""
        fields = Path(f"/proc/{self.broker_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def fresh(
        self, kind: str, fill_it: bool = True, config: tuple[tuple[str, str], ...] = ()
    ) -> str:
        topic = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
        if fill_it:
            fill(self.bootstrap, topic, self.records, config)
            self._broker_mark = self.broker_cpu()  # what the run itself costs the broker
        else:
            ensure_topics({"bootstrap.servers": self.bootstrap}, [TopicSpec(topic, PARTITIONS)])
        return topic

    def base(self, topic: str, model: Path | None = None) -> dict[str, Any]:
        return {
            "bootstrap": self.bootstrap,
            "topic": topic,
            "model": str(model or self.model),
            "count": self.n,
        }

    def rates(
        self, got: list[dict[str, Any]], out: str, broker_trace: CpuTrace | None = None
    ) -> dict[str, float]:
        """Steady records/s (first → last output) and wall records/s (start-up included);
        CPU per record over the whole run and over the steady span."""
        wall = max(g["end"] for g in got) - min(g["start"] for g in got)
        broker = self.broker_cpu() - self._broker_mark
        first, last = output_stamps(self.bootstrap, out, self.n)
        steady = sum(cpu_between(g["cpu_trace"], first, last) for g in got if "cpu_trace" in g)
        return {
            "broker_us": broker / self.n * 1e6,
            "rate": (self.n - 1) / max(last - first, 0.001),
            "wall": self.n / wall,
            "rss_mb": sum(g["rss_mb"] for g in got),
            "cpu_us": sum(g.get("cpu", 0.0) for g in got) / self.n * 1e6,
            "steady_cpu_us": steady / (self.n - 1) * 1e6,
            "steady_broker_us": (
                cpu_between(broker_trace.stop(), first, last) / (self.n - 1) * 1e6
                if broker_trace
                else 0.0
            ),
        }

    @_own_broker
    def loop(self, model: Path | None = None) -> dict[str, float]:
        topic = self.fresh("loop")
        ensure_out(self.bootstrap, f"{topic}.out")
        got = _result(_child("loop", self.base(topic, model)), "the hand-written loop")
        return self.rates([got], f"{topic}.out")

    @_own_broker
    def quix(self, kind: str = "micro") -> dict[str, float]:
        # Quix's window store reads the input's retention.ms, which Tansu names only
        # when the topic was created with it
        topic = self.fresh(f"quix-{kind}", config=(("retention.ms", "604800000"),))
        ensure_out(self.bootstrap, f"{topic}.out")
        args = {
            **self.base(topic, self.window_model if kind == "window" else None),
            "group": f"q{uuid.uuid4().hex[:6]}",
            "state_dir": str(self.work / "quix"),
            "kind": kind,
        }
        if kind == "window":
            args["count"] = self.windows.quix_closes
        got = _result(_quix(args), "the Quix Streams app")
        if kind == "window":
            return self.window_rates([got], f"{topic}.out", quix=True)
        return self.rates([got], f"{topic}.out")

    def window_rates(
        self, got: list[dict[str, Any]], out: str, quix: bool = False
    ) -> dict[str, float]:
        """Steady records/s of a windowed pipeline: the records read between its first and
        its last window out, over that span; every window out exactly once."""
        w = self.windows
        count = w.quix_closes if quix else w.count
        span = output_span(self.bootstrap, out, count)
        read = (w.quix_last if quix else self.n) - w.lead
        broker = self.broker_cpu() - self._broker_mark
        return {
            "broker_us": broker / self.n * 1e6,
            "rate": read / span,
            "rss_mb": sum(g["rss_mb"] for g in got),
            "cpu_us": sum(g.get("cpu", 0.0) for g in got) / self.n * 1e6,
        }

    @_own_broker
    def windowed(self, runner: str) -> dict[str, float]:
        """(f) the hand-written windowed loop or (h) bytewax's own window operators."""
        topic = self.fresh(runner)
        ensure_out(self.bootstrap, f"{topic}.out")
        args = {**self.base(topic), "window_model": str(self.window_model)}
        got = _result(_child(runner, args), runner)
        return self.window_rates([got], f"{topic}.out")

    def site_args(self, topic: str, kind: str, model: Path | None = None) -> dict[str, Any]:
        return {
            **self.base(topic, model),
            "work": str(self.work),
            "name": uuid.uuid4().hex[:6],
            "kind": kind,
            "window_model": str(self.window_model),
        }

    @_own_broker
    def site(
        self,
        kind: str = "micro",
        processes: int = 1,
        model: Path | None = None,
        as_cluster: bool = False,
    ) -> dict[str, float]:
        topic = self.fresh(f"site{processes}")
        args = self.site_args(topic, kind, model)
        out = _result(_child("prepare", args), "preparing the site")["predictions"]
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
        broker_trace = CpuTrace(self.broker_cpu)
        procs = [
            _child(
                "site",
                {
                    **args,
                    "processes": processes,
                    "process_id": i,
                    "addresses": addresses,
                    "as_cluster": as_cluster,
                },
            )
            for i in range(processes)
        ]
        got = [_result(p, "the mlexec site dataflow") for p in procs]
        if kind == "window":  # one prediction per key and window, not per record
            broker_trace.stop()
            return self.window_rates(got, out)
        rates = self.rates(got, out, broker_trace)
        if kind == "micro" and processes == 1 and model is None and not as_cluster:
            self.store_runs.append(_result(_child("store", args), "the store phase"))
        return rates

    # ------------------------------------------------------------ latency

    @_own_broker
    def latency(self, pipeline: str, rate: int, seconds: float) -> tuple[float, float]:
        """p50 / p99 produce → prediction (ms) at ``rate`` records/s for ``seconds``."""
        topic = self.fresh(f"lat-{pipeline}", fill_it=False)
        count = 1 + int(rate * seconds)
        if pipeline == "site":
            args = self.site_args(topic, "micro")
            out = _result(_child("prepare", args), "preparing the site")["predictions"]
            proc = _child("site", {**args, "count": count, "follow": True})
        elif pipeline == "loop":
            out = f"{topic}.out"
            ensure_out(self.bootstrap, out)
            proc = _child("loop", {**self.base(topic), "count": count, "follow": True})
        else:
            out = f"{topic}.out"
            ensure_out(self.bootstrap, out)
            group = f"q{uuid.uuid4().hex[:6]}"
            quix_args = {**self.base(topic), "count": count, "group": group}
            proc = _quix({**quix_args, "state_dir": str(self.work / "quix")})
        collector = _Collector(self.bootstrap, out)
        try:
            producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 1})
            _produce(producer, topic, b"warmup", 0)
            if not collector.wait(1, timeout=120):
                raise RuntimeError(f"{pipeline}: no prediction for the warm-up record")
            _paced(producer, topic, rate, seconds)
            if not collector.wait(count, timeout=120):
                raise RuntimeError(f"{pipeline}: {collector.seen} of {count} predictions")
        finally:
            proc.kill()
            proc.communicate()
            collector.stop()
        lat = np.asarray(collector.latencies[1:], dtype=np.float64)
        return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def _produce(producer: Producer, topic: str, key: bytes, i: int) -> None:
    rec = {"sensor": key.decode(), "ts": int(time.time() * 1000)}
    rec.update({f: round(((i * 7 + j) % 61) / 10 - 3, 3) for j, f in enumerate(FIELDS)})
    while True:
        try:
            producer.produce(topic, value=orjson.dumps(rec), key=key)
            return
        except BufferError:
            producer.poll(0.01)


def _paced(producer: Producer, topic: str, rate: int, seconds: float) -> None:
    """``rate`` records per second for ``seconds``, in 5 ms slices."""
    per_slice = max(1, rate // 200)
    slices = int(seconds * 200)
    started = time.perf_counter()
    for s in range(slices):
        for j in range(per_slice):
            i = s * per_slice + j
            _produce(producer, topic, f"s{i % 64}".encode(), i)
        producer.poll(0)
        wait = started + (s + 1) / 200 - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
    producer.flush(60)


class _Collector:
    """Reads an output topic from the start; per prediction, its latency in ms."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = from_start(bootstrap, topic)
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def seen(self) -> int:
        return len(self.latencies)

    def _run(self) -> None:
        while not self._stop.is_set():
            for m in self._consumer.consume(1000, 0.1):
                if m.error() is None:
                    sent = orjson.loads(cast(bytes, m.value()))["time"]
                    self.latencies.append(m.timestamp()[1] - sent)

    def wait(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.seen >= count:
                return True
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def _scale(bench: Bench, repeat: int) -> None:
    """1, 2 and 3 processes interleaved, and 1 process run as a cluster of one: the control
    that tells what the cluster's machinery costs from what sharing the cores costs."""
    runs: dict[str, list[dict[str, float]]] = {"1": [], "1 as a cluster": [], "2": [], "3": []}
    for _ in range(repeat):
        for name, got in runs.items():
            got.append(bench.site(processes=int(name[0]), as_cluster="cluster" in name))
    one = _median(runs["1"])
    for name, got in runs.items():
        m = _median(got)
        print(
            f"{name} process(es), {bench.n:,} records: {m['rate']:,.0f} records/s steady "
            f"(÷ 1: {m['rate'] / one['rate']:.2f}), {m['cpu_us']:.2f} CPU-µs/record "
            f"(÷ 1: {m['cpu_us'] / one['cpu_us']:.2f}), steady "
            f"{m['steady_cpu_us']:.2f} (÷ 1: {m['steady_cpu_us'] / one['steady_cpu_us']:.2f}), "
            f"broker {m['broker_us']:.2f}, steady {m['steady_broker_us']:.2f}"
        )
    for name, got in runs.items():  # each round against its own 1-process run: drift cancels
        rate = statistics.median(g["rate"] / o["rate"] for g, o in zip(got, runs["1"], strict=True))
        cpu = statistics.median(
            g["steady_cpu_us"] / o["steady_cpu_us"] for g, o in zip(got, runs["1"], strict=True)
        )
        print(f"{name}, paired by round (median): rate ÷ 1 {rate:.2f}, steady CPU ÷ 1 {cpu:.2f}")


def _only(args: argparse.Namespace) -> None:
    """A quick look at some pipelines (profiling, tuning); the table needs them all."""
    parts = args.only.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args.records)
        if "scale" in parts:  # 1, 2 and 3 processes interleaved, as make bench runs them
            _scale(Bench(Path(tmp) / "scale", args.scale_records, SCALE_KEYS), args.repeat)
            parts.remove("scale")
        runs = {
            "loop": bench.loop,
            "quix": bench.quix,
            "site": bench.site,
            "site2": lambda: bench.site(processes=2),
            "site3": lambda: bench.site(processes=3),
            "window": lambda: bench.site("window"),
            "window-loop": lambda: bench.windowed("window_loop"),
            "quix-window": lambda: bench.quix("window"),
            "bytewax-window": lambda: bench.windowed("bytewax_windows"),
            "site-collect": lambda: bench.site("micro-collect"),
            "tree-loop": lambda: bench.loop(bench.tree_model),
            "tree-site": lambda: bench.site(model=bench.tree_model),
        }
        for part in parts:
            if part == "latency":
                for p in ("loop", "site") + (("quix",) if QUIX_PYTHON.exists() else ()):
                    p50, p99 = bench.latency(p, args.rate, args.latency_seconds)
                    print(f"latency {p}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
            elif part == "site-latency":  # (d)'s p99 in --latency-runs runs
                for _ in range(args.latency_runs):
                    p50, p99 = bench.latency("site", args.rate, args.latency_seconds)
                    print(f"latency site: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
            else:
                got = _median([runs[part]() for _ in range(args.repeat)])
                print(
                    f"{part}: {got['rate']:,.0f} records/s steady, {got.get('wall', 0):,.0f} wall, "
                    f"peak RSS {got['rss_mb']:.0f} MB, {got.get('cpu_us', 0):.2f} CPU-µs/record, "
                    f"broker {got.get('broker_us', 0):.2f} CPU-µs/record"
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--scale-records",
        type=int,
        default=600_000,
        help="records of the 1, 2 and 3 process runs (the scaling ratios)",
    )
    parser.add_argument("--rate", type=int, default=20_000, help="paced rate for latency")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument(
        "--latency-runs", type=int, default=5, help="runs of (d)'s latency (each p99 printed)"
    )
    parser.add_argument(
        "--only",
        help="measure just these, comma-separated: loop,quix,site,site2,site3,window,"
        "window-loop,quix-window,bytewax-window,site-collect,tree-loop,tree-site,latency,"
        "site-latency,scale",
    )
    args = parser.parse_args()
    if args.only:
        _only(args)
        return
    n = args.records
    quix = QUIX_PYTHON.exists()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), n)
        size = statistics.mean(len(v) for _, v in bench.records[:1000])
        onnx = onnx_alone(bench.model, n)
        tree_onnx = onnx_alone(bench.tree_model, n)
        # the process rows read more records: a cluster's start-up (every process's
        # clients, the peers joining) is a fixed cost the CPU per record must not hide
        scale = Bench(Path(tmp) / "scale", args.scale_records, SCALE_KEYS)
        runs: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.repeat):  # interleaved: the broker ages alike for all
            for name, run in (
                ("loop", bench.loop),
                *((("quix", bench.quix),) if quix else ()),
                ("one", bench.site),
                ("scale-one", scale.site),
                ("two", lambda: scale.site(processes=2)),
                ("three", lambda: scale.site(processes=3)),
                ("window", lambda: bench.site("window")),
                ("window-loop", lambda: bench.windowed("window_loop")),
                *((("quix-window", lambda: bench.quix("window")),) if quix else ()),
                ("bytewax-window", lambda: bench.windowed("bytewax_windows")),
                ("tree-loop", lambda: bench.loop(bench.tree_model)),
                ("tree-site", lambda: bench.site(model=bench.tree_model)),
            ):
                runs.setdefault(name, []).append(run())
        lat = {"loop": bench.latency("loop", args.rate, args.latency_seconds)}
        site_runs = [
            bench.latency("site", args.rate, args.latency_seconds) for _ in range(args.latency_runs)
        ]
        lat["site"] = sorted(site_runs, key=lambda r: r[1])[len(site_runs) // 2]  # median p99
        if quix:
            lat["quix"] = bench.latency("quix", args.rate, args.latency_seconds)
        stores = bench.store_runs

    report(args, size, onnx, tree_onnx, runs, lat, site_runs, stores, quix)


if __name__ == "__main__":
    main()
