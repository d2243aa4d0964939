"""(c) The same use case as a Quix Streams application, the way its documentation writes one.

Runs in its own virtualenv (``.venv-quix``, made by ``make bench``): Quix Streams 3.28
pins a confluent-kafka older than mlexec's. It imports nothing of mlexec.

    .venv-quix/bin/python benchmarks/quix_app.py '{"bootstrap": ..., "topic": ..., ...}'

Consumes ``topic`` (JSON records of 16 floats) from the earliest offset, scores each
record with onnxruntime and writes a prediction to ``<topic>.out``; stops after
``count`` outputs (with ``"kind": "window"``: one per key and 10 s tumbling window of
event time, each field's mean and max, Quix's own window) and prints one JSON line:
the time of the first and the last record (the consumer-group join before them is
left out) and its peak resident memory.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import onnxruntime as ort
import quixstreams.dataframe.windows.aggregations as agg
from quixstreams import Application

FIELDS = [f"f{i}" for i in range(16)]
FEATURES = [f"{f}_mean" for f in FIELDS] + [f"{f}_max" for f in FIELDS]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    """Peak resident memory (VmHWM: unlike ru_maxrss, not the forking parent's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    args = json.loads(sys.argv[1])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(args["model"], options, providers=["CPUExecutionProvider"])
    app = Application(
        broker_address=args["bootstrap"],
        consumer_group=args["group"],
        auto_offset_reset="earliest",
        # the same client tuning the other two get on this broker
        consumer_extra_config={
            "fetch.wait.max.ms": 5,
            "fetch.queue.backoff.ms": 10,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        },
        producer_extra_config={"linger.ms": 5},
        state_dir=args["state_dir"],
        loglevel="WARNING",
    )
    windowed = args.get("kind") == "window"
    source = app.topic(
        args["topic"],
        value_deserializer="json",
        # windows on the record's event time, as the other pipelines do
        timestamp_extractor=(lambda value, headers, ts, kind: value["ts"]) if windowed else None,
    )
    sink = app.topic(f"{args['topic']}.out", value_serializer="json")
    first: list[float] = []
    cpu: list[float] = []

    def score(record: dict) -> dict:
        if not first:
            first.append(time.time())
            cpu.append(_cpu_seconds())
        x = np.array([[record[f] for f in FIELDS]], dtype=np.float32)
        (y,) = session.run(None, {"x": x})
        return {"key": record["sensor"], "time": record["ts"], "score": float(y[0, 0])}

    def score_window(window: dict) -> dict:
        if not first:
            first.append(time.time())
            cpu.append(_cpu_seconds())
        x = np.array([[window[f] for f in FEATURES]], dtype=np.float32)
        (y,) = session.run(None, {"x": x})
        return {"window": window["start"], "score": float(y[0, 0])}

    if windowed:  # (g): Quix's own tumbling window, the same aggregations, final results
        aggregations = {f"{f}_mean": agg.Mean(f) for f in FIELDS}
        aggregations.update({f"{f}_max": agg.Max(f) for f in FIELDS})
        sdf = (
            app.dataframe(source)
            .tumbling_window(duration_ms=10_000, grace_ms=1_000)
            .agg(**aggregations)
            .final()
            .apply(score_window)
        )
    else:
        sdf = app.dataframe(source).apply(score)
    # Quix gives an output the input's timestamp; stamp it when it is produced, as a
    # Kafka producer does for the other pipelines, so latencies compare
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: int(time.time() * 1000))
    sdf.to_topic(sink)
    # a window closes when a later record passes it, so the last ones never do: a
    # windowed run stops once its closable windows are out or the input went quiet
    app.run(count=args["count"], timeout=10.0 if windowed else 0.0, collect=False)
    result = {
        "start": first[0] if first else time.time(),
        "end": time.time(),
        "rss_mb": _peak_rss_mb(),
        "cpu": _cpu_seconds() - (cpu[0] if cpu else 0.0),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
