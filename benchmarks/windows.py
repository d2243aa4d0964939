"""The windowed peers of the benchmark: what a user writes instead of mlexec's windows.

Every one reads the same records (16 floats, key ``sensor``, event time ``ts`` in ms),
groups them per key into 10 s tumbling windows on event time with 1 s of allowed
lateness, aggregates each field's mean and max, scores each closed (key, window) with
the 32-input MLP and writes one prediction per window to ``<topic>.out``:

(f) ``window_loop`` — a hand-written loop as a competent user writes it: confluent-kafka
    consume → orjson → a polars frame per consumed batch with its window start → per
    partition watermarks → the closed windows of all open frames aggregated in one
    polars ``group_by`` → onnxruntime on the whole closed batch → produce;
(h) ``bytewax_windows`` — bytewax's own operators per record: ``KafkaSource`` →
    ``map`` (orjson) → ``key_on`` → ``fold_window`` (``EventClock``, ``TumblingWindower``)
    → ``map`` (onnxruntime per window) → ``KafkaSink``.

(g), Quix Streams' own tumbling window, is in ``quix_app.py`` (its own virtualenv).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import onnxruntime as ort
import orjson
import polars as pl
from confluent_kafka import KafkaError, Producer

from benchmarks.runners import (
    BATCH,
    FIELDS,
    PARTITIONS,
    ThreadCpu,
    cpu_seconds,
    loop_clients,
    peak_rss_mb,
    session_of,
)
from mlexec.connectors.reading import CONSUMER_TUNING

SIZE_MS = 10_000
LATENESS_MS = 1_000


@dataclasses.dataclass(frozen=True)
class Windows:
    """What the 10 s tumbling windows (1 s lateness) of the records hold.

    ``count``: the (key, window) pairs, each one prediction. ``lead``: the records read
    before the first window can close. Quix Streams closes a window only when a later
    record passes it, so its last windows stay open: ``quix_closes`` windows close, the
    last once ``quix_last`` records are read.
    """

    count: int
    lead: int
    quix_closes: int
    quix_last: int

    @classmethod
    def of(cls, records: list[tuple[bytes, bytes]]) -> Windows:
        size, late = SIZE_MS, LATENESS_MS
        rows = [orjson.loads(v) for _, v in records]
        ts = np.array([r["ts"] for r in rows], dtype=np.int64)
        starts = ts - ts % size
        pairs = {(r["sensor"], int(s)) for r, s in zip(rows, starts, strict=True)}
        first_end = int(starts.min()) + size
        closable = int(ts.max()) - late  # a window closes once its end is at or behind this
        quix = sum(1 for _, s in pairs if s + size <= closable)
        last_end = (closable // size) * size
        return cls(
            count=len(pairs),
            lead=int((ts < first_end + late).sum()),
            quix_closes=quix,
            quix_last=int((ts < last_end + late).sum()),
        )


AGGREGATIONS = [pl.col(f).mean().alias(f"{f}_mean") for f in FIELDS] + [
    pl.col(f).max().alias(f"{f}_max") for f in FIELDS
]
FEATURES = [f"{f}_mean" for f in FIELDS] + [f"{f}_max" for f in FIELDS]


def _produce(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key)
            return
        except BufferError:
            producer.poll(0.05)


def _score(session: ort.InferenceSession, closed: pl.DataFrame) -> np.ndarray:
    x = closed.select(FEATURES).to_numpy().astype(np.float32)
    (y,) = session.run(None, {"x": x})
    return cast(np.ndarray, y)


def window_loop(args: dict[str, Any]) -> dict[str, float]:
    """(f) consume → orjson → polars per batch → watermark → group_by per closed batch."""
    bootstrap, topic = args["bootstrap"], args["topic"]
    session = session_of(args["window_model"])
    consumer, producer = loop_clients(bootstrap, topic, "bench-window")
    out_topic = f"{topic}.out"
    newest: dict[int, int] = {}  # per partition: the newest event time read
    frames: list[pl.DataFrame] = []  # open records, one frame per consumed batch
    at_end: set[int] = set()
    late = 0
    threads = ThreadCpu() if args.get("threads") else None
    started, cpu = time.time(), cpu_seconds()

    earliest = float("inf")  # no open window ends before this

    def close(watermark: float) -> None:
        nonlocal frames, earliest
        if not frames or watermark < earliest:
            return
        open_rows = pl.concat(frames)
        done = open_rows.filter(pl.col("window") + SIZE_MS <= watermark)
        rest = open_rows.filter(pl.col("window") + SIZE_MS > watermark)
        frames = [rest] if rest.height else []
        earliest = cast(int, rest["window"].min()) + SIZE_MS if rest.height else float("inf")
        closed = done.group_by("sensor", "window").agg(AGGREGATIONS)
        scores = _score(session, closed)[:, 0].tolist()
        for key, start, score in zip(closed["sensor"], closed["window"], scores, strict=True):
            value = orjson.dumps({"key": key, "window": start, "score": score})
            _produce(producer, out_topic, key.encode(), value)
        producer.poll(0)

    while len(at_end) < PARTITIONS:
        good = []
        for m in consumer.consume(BATCH, 0.1):
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                at_end.add(cast(int, m.partition()))
        if not good:
            continue
        rows = [orjson.loads(cast(bytes, m.value())) for m in good]
        frame = pl.DataFrame(rows).with_columns(
            (pl.col("ts") - pl.col("ts") % SIZE_MS).alias("window"),
            pl.Series("partition", [m.partition() for m in good], dtype=pl.Int32),
        )
        # a record is late when its window closed on its own partition's watermark
        marks = pl.Series([newest.get(p, -(2**62)) - LATENESS_MS for p in range(PARTITIONS)])
        on_time = frame.filter(pl.col("window") + SIZE_MS > marks.gather(frame["partition"]))
        late += frame.height - on_time.height
        if on_time.height:
            frames.append(on_time.drop("partition"))
            earliest = min(earliest, cast(int, on_time["window"].min()) + SIZE_MS)
        for p, ts in frame.group_by("partition").agg(pl.col("ts").max()).iter_rows():
            newest[p] = max(newest.get(p, ts), ts)
        if len(newest) == PARTITIONS:
            close(min(newest.values()) - LATENESS_MS)
    close(float("inf"))  # the end of the input closes every window
    producer.flush(60)
    ended = time.time()
    if threads:
        print("THREADS", json.dumps(threads.report()), file=sys.stderr)
    consumer.close()
    return {
        "start": started,
        "end": ended,
        "late": late,
        "rss_mb": peak_rss_mb(),
        "cpu": cpu_seconds() - cpu,
    }


def bytewax_windows(args: dict[str, Any]) -> dict[str, float]:
    """(h) bytewax's own windowing operators, per record."""
    import bytewax.operators as op
    from bytewax.connectors.kafka import (
        KafkaSink,
        KafkaSinkMessage,
        KafkaSource,
        KafkaSourceMessage,
    )
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
    from bytewax.run import cli_main

    bootstrap, topic = args["bootstrap"], args["topic"]
    session = session_of(args["window_model"])
    width = len(FIELDS)

    def event_time(row: dict[str, Any]) -> datetime:
        return datetime.fromtimestamp(row["ts"] / 1000, tz=UTC)

    def build() -> list[Any]:
        return [0, np.zeros(width), np.full(width, -np.inf)]

    def fold(acc: list[Any], row: dict[str, Any]) -> list[Any]:
        values = np.fromiter((row[f] for f in FIELDS), dtype=np.float64, count=width)
        acc[0] += 1
        acc[1] += values
        np.maximum(acc[2], values, out=acc[2])
        return acc

    def merge(a: list[Any], b: list[Any]) -> list[Any]:
        return [a[0] + b[0], a[1] + b[1], np.maximum(a[2], b[2])]

    def score(item: tuple[str, tuple[int, list[Any]]]) -> KafkaSinkMessage[bytes, bytes]:
        key, (window_id, (count, total, high)) = item
        x = np.concatenate([total / count, high]).astype(np.float32)[None, :]
        (y,) = session.run(None, {"x": x})
        value = {"key": key, "window": window_id, "score": float(y[0, 0])}
        return KafkaSinkMessage(key.encode(), orjson.dumps(value))

    flow = Dataflow("bytewax_windows")
    messages = op.input(
        "kafka",
        flow,
        KafkaSource([bootstrap], [topic], tail=False, add_config=dict(CONSUMER_TUNING)),
    )
    # raise_on_errors (the default): the stream holds messages only
    rows = op.map("parse", messages, lambda m: orjson.loads(cast(KafkaSourceMessage, m).value))
    keyed = op.key_on("key", rows, lambda row: row["sensor"])
    clock = EventClock(event_time, wait_for_system_duration=timedelta(milliseconds=LATENESS_MS))
    windower = TumblingWindower(
        length=timedelta(milliseconds=SIZE_MS), align_to=datetime(2020, 1, 1, tzinfo=UTC)
    )
    folded = fold_window("window", keyed, clock, windower, build, fold, merge)
    out = op.map("score", folded.down, score)
    op.output("out", out, KafkaSink([bootstrap], f"{topic}.out", add_config={"linger.ms": "5"}))
    started, cpu = time.time(), cpu_seconds()
    cli_main(flow)
    return {
        "start": started,
        "end": time.time(),
        "rss_mb": peak_rss_mb(),
        "cpu": cpu_seconds() - cpu,
    }
