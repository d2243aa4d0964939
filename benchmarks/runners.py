"""The pipelines the benchmark compares, each run in a process of its own.

    python -m benchmarks.runners loop '{"bootstrap": ..., "topic": ..., "count": ...}'
    python -m benchmarks.runners site '{... "kind": "micro", "processes": 2, "process_id": 0}'

A run reads ``count`` records from ``topic`` and writes one prediction per record to
``<topic>.out`` (the loop) or the use case's predictions topic (mlexec), then prints
one JSON line: its start and end (epoch seconds, so processes can be compared) and its
peak resident memory. With ``"follow": true`` it keeps running (a latency run: the
harness stops it once every prediction is out).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
import orjson
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from mlexec.connectors.kafka import client_config, ensure_topics
from mlexec.connectors.reading import CONSUMER_TUNING
from mlexec.connectors.samplestore import open_store
from mlexec.topologies.plan import TopicSpec

FIELDS: list[str] = [f"f{i}" for i in range(16)]
BATCH = 256
PARTITIONS = 2


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuTrace:
    """``(epoch seconds, CPU seconds)`` of a process every 50 ms, from a thread of its own.

    The steady CPU per record is read off it over the same span as the steady rate
    (first to last output), so start-up — clients, the cluster's peers joining — counts
    in neither.
    """

    def __init__(self, used: Callable[[], float] = cpu_seconds) -> None:
        self._used = used
        self.points: list[tuple[float, float]] = [(time.time(), used())]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-trace", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.points.append((time.time(), self._used()))

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        self.points.append((time.time(), self._used()))
        return self.points


def cpu_between(points: list[tuple[float, float]], first: float, last: float) -> float:
    """CPU seconds a trace used from ``first`` to ``last`` (epoch seconds), interpolated."""
    stamps = [t for t, _ in points]
    used = [c for _, c in points]
    return float(np.interp(last, stamps, used) - np.interp(first, stamps, used))


class ThreadCpu:
    """CPU seconds per thread name (librdkafka's rdk:* threads, the workers), for profiling.

    Sampled every 100 ms from a thread of its own, so the threads that end before the
    report (a closed client's) still count with what they last used; from when it is
    made, so the imports and the building of the flow do not count. Python's own threads
    are all named ``python``; the main thread is ``main``.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[str, float]] = {}
        self._sample()
        #: What the threads already running had used (imports, building the flow).
        self._before = {tid: used for tid, (_name, used) in self._last.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thread-cpu", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for task in Path("/proc/self/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            name = name.split("/")[0].rstrip("0123456789:")
            if int(task.name) == os.getpid():
                name = "main"
            used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            self._last[int(task.name)] = (name, used)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def report(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        out: dict[str, float] = {}
        for tid, (name, used) in self._last.items():
            out[name] = out.get(name, 0.0) + used - self._before.get(tid, 0.0)
        return out


def session_of(model: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------ (b) hand-written loop


def loop_clients(bootstrap: str, topic: str, group: str) -> tuple[Consumer, Producer]:
    """The hand-written loops' clients: every partition of ``topic`` from its start, and a
    producer lingering 5 ms — as a user tunes them for this broker."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **CONSUMER_TUNING,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    return consumer, Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})


def loop(args: dict[str, Any]) -> dict[str, Any]:
    """What a user writes instead: consume → orjson → numpy → onnxruntime → produce."""
    bootstrap, topic, count = args["bootstrap"], args["topic"], args["count"]
    session = session_of(args["model"])
    consumer, producer = loop_clients(bootstrap, topic, "bench")
    out_topic = f"{topic}.out"
    seen, at_end = 0, set[int]()
    threads = ThreadCpu() if args.get("threads") else None
    started, cpu, trace = time.time(), cpu_seconds(), CpuTrace()
    while seen < count and (args.get("follow") or len(at_end) < PARTITIONS):
        msgs = consumer.consume(BATCH, 0.1)
        good = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                at_end.add(cast(int, m.partition()))
        if not good:
            continue
        rows = [orjson.loads(cast(bytes, m.value())) for m in good]
        x = np.array([[r[f] for f in FIELDS] for r in rows], dtype=np.float32)
        (y,) = session.run(None, {"x": x})
        for m, r, score in zip(good, rows, y[:, 0].tolist(), strict=True):
            value = orjson.dumps(
                {
                    "id": f"{m.partition()}:{m.offset()}",
                    "key": r["sensor"],
                    "time": r["ts"],
                    "score": score,
                }
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
    ended = time.time()
    if threads:
        print("THREADS", json.dumps(threads.report()), file=sys.stderr)
    consumer.close()
    return {
        "start": started,
        "end": ended,
        "records": seen,
        "rss_mb": peak_rss_mb(),
        "cpu": cpu_seconds() - cpu,
        "cpu_trace": trace.stop(),
    }


# --------------------------------------------------------------- (d) mlexec site


def site_topology(args: dict[str, Any]) -> Path:
    """A one-site topology of the benchmark's use case: micro-batch or tumbling window."""
    work = Path(args["work"])
    name = args["name"]
    dispatch: dict[str, Any]
    if args["kind"] == "window":
        dispatch = {"kind": "tumbling", "size": "10s", "lateness": "1s"}
        reduction = {"kind": "aggregate", "fields": {f: ["mean", "max"] for f in FIELDS}}
        model = args["window_model"]
    else:  # "micro", or "micro-collect": collecting across polls (eager: false)
        dispatch = {
            "kind": "microbatch",
            "max_records": BATCH,
            "max_wait": "20ms",
            "eager": args["kind"] == "micro",
        }
        reduction = {"kind": "identity"}
        model = args["model"]
    doc = {
        "name": f"bench{name}",
        "sites": {
            "here": {
                "kafka": {"bootstrap": args["bootstrap"]},
                "sample_store": f"chdb://{work}/chdb-{name}",
                "state_dir": f"{work}/state-{name}",
            }
        },
        "usecases": {
            f"uc{name}": {
                "input": {
                    "topic": args["topic"],
                    "partitions": PARTITIONS,
                    "key": "sensor",
                    "time": "ts",
                    "schema": {"sensor": "str", "ts": "timestamp", **{f: "float" for f in FIELDS}},
                },
                "dispatch": dispatch,
                "reduction": reduction,
                "model": {"name": "mlp", "version": "1", "path": model},
                "sampling": {"rate": 0.01},
            }
        },
    }
    path = work / f"topology-{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def site(args: dict[str, Any]) -> dict[str, Any]:
    """The mlexec site dataflow, one process of ``processes`` (bytewax cluster)."""
    from mlexec.flow import build_flow
    from mlexec.runtime.run import execute, prepare_site
    from mlexec.topologies import load_topology, plan_topology

    plan = plan_topology(load_topology(site_topology(args)))
    run = prepare_site(plan, "here")
    conf = client_config(plan.topology.sites["here"].kafka)
    processes = args.get("processes", 1)
    flow = build_flow(
        f"p{args['name']}",
        conf,
        process=run.process,
        until_end=not args.get("follow"),
        cluster_share=(args.get("process_id", 0), processes) if processes > 1 else (0, 1),
    )
    addresses = args.get("addresses")
    threads = ThreadCpu() if args.get("threads") else None
    started, cpu, trace = time.time(), cpu_seconds(), CpuTrace()
    # a cluster of one: the control that tells the cluster's cost from the cores' sharing
    as_cluster = processes > 1 or bool(args.get("as_cluster"))
    execute(
        flow,
        process_id=args.get("process_id", 0) if as_cluster else None,
        addresses=addresses if as_cluster else None,
    )
    if threads:
        print("THREADS", json.dumps(threads.report()), file=sys.stderr)
    return {
        "start": started,
        "end": time.time(),
        "rss_mb": peak_rss_mb(),
        "cpu": cpu_seconds() - cpu,
        "cpu_trace": trace.stop(),
    }


def prepare(args: dict[str, Any]) -> dict[str, Any]:
    """Create the site's topics and samples table (before its processes start)."""
    from mlexec.runtime.run import prepare_site
    from mlexec.topologies import load_topology, plan_topology

    plan = plan_topology(load_topology(site_topology(args)))
    run = prepare_site(plan, "here")
    conf = client_config(plan.topology.sites["here"].kafka)
    ensure_topics(conf, plan.topics_at("here"))
    with open_store(plan.topology.sites["here"].sample_store) as store:
        for rt in run.store:
            store.ensure_table(rt.table)
    (uc,) = plan.usecases.values()
    return {"predictions": uc.predictions_topic, "samples": uc.samples_topic}


def store(args: dict[str, Any]) -> dict[str, Any]:
    """The site's store phase: its samples topic into chDB, timed on its own."""
    from bytewax.run import cli_main

    from mlexec.flow import build_flow
    from mlexec.runtime.run import prepare_site
    from mlexec.topologies import load_topology, plan_topology

    plan = plan_topology(load_topology(site_topology(args)))
    run = prepare_site(plan, "here")
    url = plan.topology.sites["here"].sample_store
    flow = build_flow(
        f"s{args['name']}",
        client_config(plan.topology.sites["here"].kafka),
        store=run.store,
        store_url=url,
        until_end=True,
    )
    started = time.time()
    cli_main(flow)
    ended = time.time()
    (uc,) = plan.usecases.values()
    with open_store(url) as opened:
        stored = int(opened.query(f"SELECT count() AS n FROM mlexec.{uc.table}")["n"][0])
    return {"start": started, "end": ended, "stored": stored}


def ensure_out(bootstrap: str, topic: str) -> None:
    ensure_topics({"bootstrap.servers": bootstrap}, [TopicSpec(topic, PARTITIONS)])


if __name__ == "__main__":
    command, raw = sys.argv[1], json.loads(sys.argv[2])
    from benchmarks.windows import bytewax_windows, window_loop

    runs = {"loop": loop, "site": site, "prepare": prepare, "store": store}
    runs.update({"window_loop": window_loop, "bytewax_windows": bytewax_windows})
    result = runs[command](raw)
    print("RESULT " + json.dumps(result), flush=True)
