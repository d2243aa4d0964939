"""Assemble a site's bytewax dataflow from the topology.

Per use case placed here::

    <uc>.raw ─▶ parse ─▶ dispatch ─▶ reduce ─▶ infer ─▶ <uc>.predictions
                  │          │                   └─▶ sample ─▶ <uc>.samples
                  └──────────┴─▶ <uc>.deadletter (original bytes + reason)

and, for the store stage, ``<uc>.samples ─▶ sample store`` (ClickHouse / chDB).
Items are whole batches (:class:`~operators.records.Records`), never one Python
object per record; every Kafka write of a worker goes through one producer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow, Stream

from connectors.kafka import KafkaBatchSink, KafkaBatchSource, Outgoing, RawBatch
from connectors.samplesink import SampleStoreSink
from dataflows.usecase import UseCaseRuntime
from operators.dispatch import Dispatched, MicroBatchLogic, TumblingLogic, split_by_bucket
from operators.emit import deadletter_headers, prediction_values, sample_values
from operators.infer import Predictions
from operators.parse import ParseResult
from operators.records import DeadLetter
from topologies.schema import MicroBatch, Tumbling

__all__ = ["WINDOW_BUCKETS", "build_flow"]

#: Tumbling-window state is keyed by this many stable hash buckets of the record key.
WINDOW_BUCKETS = 16


def _deadletters(topic: str, dead: list[DeadLetter]) -> Outgoing:
    return Outgoing(
        topic=topic,
        values=[d.value or b"" for d in dead],
        keys=[d.key for d in dead],
        headers=[deadletter_headers(d) for d in dead],
    )


def _process_branch(
    flow: Dataflow, rt: UseCaseRuntime, conf: dict[str, Any], until_end: bool, batch_size: int
) -> Stream[Outgoing]:
    plan = rt.plan
    uc = plan.usecase
    n = plan.name
    source = KafkaBatchSource(
        conf, plan.raw_topic, until_end=until_end, batch_size=batch_size, group=f"mlexec-{n}"
    )
    raw: Stream[RawBatch] = op.input(f"{n}_raw", flow, source)
    parsed: Stream[ParseResult] = op.map(f"{n}_parse", raw, rt.parser)
    bad = op.filter_map(
        f"{n}_bad",
        parsed,
        lambda r: _deadletters(plan.deadletter_topic, r.dead) if r.dead else None,
    )
    good = op.filter_map(
        f"{n}_good", parsed, lambda r: (r.source, r.records) if r.records is not None else None
    )

    rule = uc.dispatch
    if isinstance(rule, MicroBatch):
        dispatched = op.stateful_batch(
            f"{n}_dispatch",
            good,
            lambda state: MicroBatchLogic(rule.max_records, rule.max_wait, resume=state),
        )
    else:
        assert isinstance(rule, Tumbling)
        buckets = op.flat_map(
            f"{n}_bucket", good, lambda kv: split_by_bucket(kv[1], WINDOW_BUCKETS)
        )
        dispatched = op.stateful_batch(
            f"{n}_dispatch",
            buckets,
            lambda state: TumblingLogic(rule.size, rule.lateness, rule.idle_close, resume=state),
        )
    batches: Stream[Dispatched] = op.key_rm(f"{n}_unkey", dispatched)
    late = op.filter_map(
        f"{n}_late",
        batches,
        lambda d: _deadletters(plan.deadletter_topic, d.late) if d.late else None,
    )
    reduced = op.filter_map(f"{n}_reduce", batches, rt.reducer)
    predicted: Stream[Predictions] = op.map(f"{n}_infer", reduced, rt.model)
    published = op.flat_map(f"{n}_publish", predicted, lambda p: _publish(rt, p))
    return op.merge(f"{n}_out", bad, late, published)


def _publish(rt: UseCaseRuntime, pred: Predictions) -> list[Outgoing]:
    plan = rt.plan
    model = rt.model
    values = prediction_values(pred, model.name, model.version)
    keys = pred.records.keys
    out = [Outgoing(plan.predictions_topic, values, keys)]
    keep, reasons = rt.sampler(pred)
    if keep.any():
        samples = sample_values(pred, keep, reasons, plan.features, model.name, model.version)
        out.append(Outgoing(plan.samples_topic, samples))
    return out


def _sample_rows(rt: UseCaseRuntime, batch: RawBatch) -> tuple[Any, list[DeadLetter]]:
    """Sample messages → rows for the store; anything unreadable is a dead letter."""
    columns = [name for name, _ in rt.table.all_columns()]
    rows: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    for i, value in enumerate(batch.values):
        try:
            row = orjson.loads(value or b"")
            missing = [c for c in columns if c not in row]
        except (orjson.JSONDecodeError, TypeError) as exc:
            row, missing = None, [f"not a JSON object: {exc}"]
        if row is None or missing:
            dead.append(
                DeadLetter(
                    value=value,
                    key=batch.keys[i],
                    reason=f"sample row lacks columns {missing}",
                    topic=batch.topic,
                    partition=batch.partition,
                    offset=batch.offsets[i],
                    stage="store",
                )
            )
        else:
            rows.append(row)
    return rows, dead


def _store_branch(
    flow: Dataflow, rt: UseCaseRuntime, conf: dict[str, Any], until_end: bool
) -> tuple[Stream[tuple[str, Any]], Stream[Outgoing]]:
    plan = rt.plan
    n = plan.name
    samples = plan.read_name(plan.samples_topic, "infer", "store")
    source = KafkaBatchSource(conf, samples, until_end=until_end, group=f"mlexec-{n}-store")
    raw = op.input(f"{n}_samples", flow, source)
    split = op.map(f"{n}_sample-rows", raw, lambda b: _sample_rows(rt, b))
    rows = op.filter_map(
        f"{n}_rows", split, lambda s: (rt.table.name, (rt.table.name, s[0])) if s[0] else None
    )
    bad = op.filter_map(
        f"{n}_bad-samples",
        split,
        lambda s: _deadletters(plan.deadletter_topic, s[1]) if s[1] else None,
    )
    return rows, bad


def build_flow(
    name: str,
    conf: dict[str, Any],
    *,
    process: Iterable[UseCaseRuntime] = (),
    store: Iterable[UseCaseRuntime] = (),
    store_url: str | None = None,
    until_end: bool = False,
    batch_size: int = 1000,
    producers: int = 1,
) -> Dataflow:
    """One dataflow running ``process`` use cases' pipelines and ``store`` use cases' sinks."""
    flow = Dataflow(name)
    outgoing: list[Stream[Outgoing]] = []
    for rt in process:
        outgoing.append(_process_branch(flow, rt, conf, until_end, batch_size))
    stored = list(store)
    if stored:
        if store_url is None:
            msg = "a store branch needs the site's sample-store URL"
            raise ValueError(msg)
        row_streams = []
        for rt in stored:
            rows, bad = _store_branch(flow, rt, conf, until_end)
            row_streams.append(rows)
            outgoing.append(bad)
        all_rows = op.merge("store_rows", *row_streams)
        tables = {rt.table.name: rt.table for rt in stored}
        op.output("store_sink", all_rows, SampleStoreSink(store_url, tables))
    if outgoing:
        keyed = op.key_on("kafka_route", op.merge("kafka_all", *outgoing), lambda out: out.topic)
        op.output("kafka_out", keyed, KafkaBatchSink(conf, parts=producers))
    return flow
