"""Assemble a site's bytewax dataflow from the topology.

Per use case placed here::

    <uc>.raw ─▶ parse ─▶ dispatch ─▶ reduce ─┬─▶ infer ─▶ <uc>.predictions (or a reply)
    <uc>.requests ─┘         │          │    │           └─▶ sample ─▶ <uc>.samples
                  └──────────┴──────────┴─▶ <uc>.deadletter (original bytes + reason)
                                             └─▶ <uc>.reduced ─▶ (infer on another site)

and, for the store stage, ``<uc>.samples ─▶ sample store`` (ClickHouse / chDB).
Items are whole batches (:class:`~operators.records.Records`), never one Python
object per record; every Kafka write of a worker goes through one producer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import bytewax.operators as op
import numpy as np
import orjson
from bytewax.dataflow import Dataflow, Stream

from mlexec.connectors.batchsource import KafkaBatchSource, RawBatch
from mlexec.connectors.kafka import KafkaBatchSink, Outgoing
from mlexec.connectors.reading import BACKGROUND_TUNING
from mlexec.connectors.samplesink import SampleStoreSink
from mlexec.connectors.samplestore import SamplesTable
from mlexec.lifecycle.router import Inferred, ServeError
from mlexec.monitoring.profiles import profiles_table
from mlexec.operators.dispatch import (
    ConditionLogic,
    CountLogic,
    CronLogic,
    Dispatched,
    MicroBatchLogic,
    Reply,
    Slice,
    eager_batches,
    gather,
    late_letter,
    per_record,
    split_by_bucket,
)
from mlexec.operators.emit import (
    deadletter_headers,
    deadletter_value,
    error_reply,
    prediction_values,
    read_reduced,
    reduced_value,
    reply_value,
    sample_values,
)
from mlexec.operators.parse import ParseResult
from mlexec.operators.records import DeadLetter, Records
from mlexec.operators.reduce import Reduced, ReductionError, StatefulReduceLogic
from mlexec.operators.requests import RangeRequest, RequestLogic, RequestReader
from mlexec.operators.windows import WindowLogic, WindowShape
from mlexec.profiling import profile_branch, stored_profiles
from mlexec.runtime.health import observe_dispatch, observe_expired
from mlexec.topologies.schema import (
    Condition,
    CountWindow,
    Cron,
    MicroBatch,
    OnRequest,
    PerRecord,
    Session,
    Sliding,
    Tumbling,
)
from mlexec.usecase import UseCaseRuntime

__all__ = ["WINDOW_BUCKETS", "build_flow"]

#: Tumbling-window state is keyed by this many stable hash buckets of the record key.
WINDOW_BUCKETS = 16


def _deadletters(topic: str, dead: list[DeadLetter]) -> Outgoing:
    return Outgoing(
        topic=topic,
        values=[deadletter_value(d) for d in dead],
        keys=[d.key for d in dead],
        headers=[deadletter_headers(d) for d in dead],
    )


def _replies(dispatched: Dispatched) -> list[Outgoing]:
    by_topic: dict[str, list[Reply]] = {}
    for reply in dispatched.replies:
        by_topic.setdefault(reply.request.reply_to, []).append(reply)
    return [
        Outgoing(topic, [error_reply(r) for r in replies], [r.request.request_id for r in replies])
        for topic, replies in by_topic.items()
    ]


def _keyed_slices(kv: tuple[str, Records], buckets: int) -> list[tuple[str, Slice]]:
    return split_by_bucket(kv[1], buckets, progress=True)  # type: ignore[return-value]


def _dispatch(
    flow: Dataflow, rt: UseCaseRuntime, conf: dict[str, Any], until_end: bool, batch_size: int
) -> tuple[Stream[Dispatched], Stream[Outgoing]]:
    """``<uc>.raw`` (and ``<uc>.requests``) → dispatches; bad input → dead letters."""
    plan = rt.plan
    uc = plan.usecase
    n = plan.name
    raw_name = plan.read_name(plan.raw_topic, "connectors", "dispatch")
    source = KafkaBatchSource(
        conf,
        raw_name,
        until_end=until_end,
        batch_size=batch_size,
        group=f"mlexec-{n}",
        context={"usecase": n},
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
    parts = uc.input.partitions
    dispatched: Stream[tuple[str, Dispatched]]
    extra: list[Stream[Dispatched]] = []
    if isinstance(rule, PerRecord):
        return op.map(f"{n}_dispatch", good, lambda kv: per_record(kv[1])), bad
    if isinstance(rule, MicroBatch) and rule.eager:
        eager = op.flat_map(
            f"{n}_dispatch", good, lambda kv: eager_batches(kv[1], rule.max_records)
        )
        return eager, bad
    if isinstance(rule, MicroBatch):
        dispatched = op.stateful_batch(
            f"{n}_dispatch",
            good,
            lambda state: MicroBatchLogic(rule.max_records, rule.max_wait, resume=state),
        )
    elif isinstance(rule, Tumbling | Sliding | Session):
        shape = (
            WindowShape.tumbling(rule.size)
            if isinstance(rule, Tumbling)
            else WindowShape.sliding(rule.size, rule.hop)
            if isinstance(rule, Sliding)
            else WindowShape.session(rule.gap)
        )
        slices = op.flat_map(f"{n}_bucket", good, lambda kv: _keyed_slices(kv, WINDOW_BUCKETS))
        dispatched = op.stateful_batch(
            f"{n}_dispatch",
            slices,
            lambda state: WindowLogic(
                shape,
                partitions=parts,
                lateness=rule.lateness,
                late=rule.late,
                correct_for=rule.correct_for,
                idle_close=rule.idle_close,
                resume=state,
            ),
        )
    elif isinstance(rule, OnRequest):
        reader = RequestReader(rt.parser, plan.replies_topic)
        requests_source = KafkaBatchSource(
            conf,
            plan.requests_topic,
            until_end=until_end,
            group=f"mlexec-{n}-requests",
            context={"usecase": n},
        )
        read = op.map(
            f"{n}_read-requests", op.input(f"{n}_requests", flow, requests_source), reader
        )
        extra.append(op.flat_map(f"{n}_payloads", read, lambda r: r[0]))
        ranges = op.flat_map(f"{n}_ranges", read, lambda r: [("all", q) for q in r[1]])
        history = op.flat_map(f"{n}_history", good, lambda kv: _keyed_slices(kv, 1))
        both = cast(
            "Stream[tuple[str, Slice | RangeRequest]]",
            op.merge(
                f"{n}_request-input",
                op.map(f"{n}_all", history, lambda kv: ("all", kv[1])),
                ranges,
            ),
        )
        dispatched = op.stateful_batch(
            f"{n}_dispatch",
            both,
            lambda state: RequestLogic(
                partitions=parts,
                timeout=rule.timeout,
                keep=rule.keep,
                max_records_per_key=rule.max_records_per_key,
                idle_close=rule.idle_close,
                resume=state,
            ),
        )
    else:
        buckets = op.flat_map(
            f"{n}_bucket", good, lambda kv: split_by_bucket(kv[1], WINDOW_BUCKETS)
        )
        dispatched = op.stateful_batch(f"{n}_dispatch", buckets, _keyed_logic(rule))
    batches: Stream[Dispatched] = op.key_rm(f"{n}_unkey", dispatched)
    if not isinstance(rule, MicroBatch | OnRequest):  # keyed by bucket: gather the closes
        batches = op.flat_map_batch(f"{n}_gather", batches, gather)
    if extra:
        batches = op.merge(f"{n}_dispatched", batches, *extra)
    return batches, bad


def _keyed_logic(rule: Any) -> Any:
    """The per-bucket logic builder of the count, cron and condition rules."""
    if isinstance(rule, CountWindow):
        return lambda state: CountLogic(rule.count, resume=state)
    if isinstance(rule, Cron):
        return lambda state: CronLogic(rule.schedule, rule.timezone, resume=state)
    assert isinstance(rule, Condition)
    return lambda state: ConditionLogic(
        rule.field,
        above=rule.above,
        below=rule.below,
        clear=rule.clear,
        cooldown=rule.cooldown,
        lookback=rule.lookback,
        max_keys=rule.max_keys,
        resume=state,
    )


def _reduce(rt: UseCaseRuntime, dispatched: Dispatched) -> tuple[Reduced | None, list[DeadLetter]]:
    """Reduce a dispatch; one the reduction cannot take becomes dead letters with the reason.

    A failing dispatch of several windows is reduced again window by window, so only
    the windows the reduction cannot take are dead letters.
    """
    try:
        return rt.reducer(dispatched), []
    except ReductionError as exc:
        recs = dispatched.records
        assert recs is not None
        windows = _windows_of(dispatched)
        if len(windows) < 2:
            reason = f"reduction failed: {exc}"
            dead = [late_letter(recs, i, reason) for i in range(len(recs))]
            return None, [replace(d, stage="reduce") for d in dead]
    kept: list[Reduced] = []
    letters: list[DeadLetter] = []
    for window in windows:
        reduced, failed = _reduce(rt, window)
        letters += failed
        if reduced is not None and len(reduced.records):
            kept.append(reduced)
    if not kept:
        return None, letters
    whole = Records.concat([r.records for r in kept])
    return replace(kept[0], records=whole), letters


def _windows_of(dispatched: Dispatched) -> list[Dispatched]:
    """A grouped dispatch as one dispatch per (key, group)."""
    recs, groups = dispatched.records, dispatched.groups
    if recs is None or groups is None or dispatched.per_record:
        return [dispatched]
    index: dict[tuple[str, int], list[int]] = {}
    for i, pair in enumerate(zip(recs.keys, groups.tolist(), strict=True)):
        index.setdefault(pair, []).append(i)
    times = dispatched.group_times
    return [
        replace(
            dispatched,
            records=recs.take(np.asarray(rows)),
            groups=groups[rows],
            group_times=None if times is None else times[rows],
        )
        for rows in index.values()
    ]


def _split_reduced(reduced: Reduced, buckets: int) -> list[tuple[str, Reduced]]:
    parts = split_by_bucket(reduced.records, buckets)
    return [(b, replace(reduced, records=r)) for b, r in parts]  # type: ignore[arg-type]


def _reduction(
    flow: Dataflow, rt: UseCaseRuntime, batches: Stream[Dispatched]
) -> tuple[Stream[Reduced], Stream[Outgoing]]:
    """Dispatches → reduced rows (with cross-dispatch state when declared)."""
    plan = rt.plan
    n = plan.name
    done = op.map(f"{n}_reduce", batches, lambda d: _reduce(rt, d))
    failed = op.filter_map(
        f"{n}_reduce-failed",
        done,
        lambda r: _deadletters(plan.deadletter_topic, r[1]) if r[1] else None,
    )
    reduced: Stream[Reduced] = op.filter_map(f"{n}_reduced", done, lambda r: r[0])
    state = plan.usecase.reduction.stateful
    if state is not None:
        keyed = op.flat_map(
            f"{n}_reduce-bucket", reduced, lambda r: _split_reduced(r, WINDOW_BUCKETS)
        )
        stateful = op.stateful_batch(
            f"{n}_reduce-state",
            keyed,
            lambda resume: StatefulReduceLogic(
                state.ewma.columns if state.ewma else [],
                state.ewma.alpha if state.ewma else 1.0,
                state.diff,
                state.max_keys,
                resume=resume,
            ),
        )
        reduced = op.key_rm(f"{n}_reduce-unkey", stateful)
    return reduced, failed


def _reduced_source(
    flow: Dataflow, rt: UseCaseRuntime, conf: dict[str, Any], until_end: bool
) -> tuple[Stream[Reduced], Stream[Outgoing]]:
    """The reduced rows another site made, read under their name here."""
    plan = rt.plan
    n = plan.name
    name = plan.read_name(plan.reduced_topic, "dispatch", "infer")
    source = KafkaBatchSource(
        conf, name, until_end=until_end, group=f"mlexec-{n}-infer", context={"usecase": n}
    )
    read = op.map(
        f"{n}_read-reduced",
        op.input(f"{n}_reduced-in", flow, source),
        lambda b: read_reduced(b, plan.features),
    )
    bad = op.filter_map(
        f"{n}_bad-reduced",
        read,
        lambda r: _deadletters(plan.deadletter_topic, r[1]) if r[1] else None,
    )
    return op.flat_map(f"{n}_reduced-rows", read, lambda r: r[0]), bad


def _process_branch(
    flow: Dataflow,
    rt: UseCaseRuntime,
    conf: dict[str, Any],
    until_end: bool,
    batch_size: int,
    stages: set[str],
) -> Stream[Outgoing]:
    """The stages of one use case this site runs: dispatch + reduce, infer, or both."""
    plan = rt.plan
    n = plan.name
    out: list[Stream[Outgoing]] = []
    reduced: Stream[Reduced] | None = None
    if "dispatch" in stages:
        batches, bad = _dispatch(flow, rt, conf, until_end, batch_size)
        late = op.filter_map(
            f"{n}_late",
            batches,
            lambda d: _deadletters(plan.deadletter_topic, d.late) if d.late else None,
        )
        errors = op.flat_map(f"{n}_error-replies", batches, _replies)
        reduced, failed = _reduction(flow, rt, batches)
        out += [bad, late, errors, failed]
        if "infer" not in stages or plan.usecase.reduction.publish:
            out.append(
                op.map(
                    f"{n}_publish-reduced",
                    reduced,
                    lambda r: Outgoing(
                        plan.reduced_topic,
                        [reduced_value(r, plan.features)],
                        [r.records.keys[0]],
                    ),
                )
            )
    if "infer" in stages:
        if reduced is None:
            reduced, bad_reduced = _reduced_source(flow, rt, conf, until_end)
            out.append(bad_reduced)
        predicted = op.map(f"{n}_infer", reduced, lambda r: _infer(rt, r))
        out.append(op.flat_map(f"{n}_publish", predicted, lambda rp: _publish(rt, *rp)))
        if plan.profiled:
            out.append(profile_branch(rt, predicted))
    return op.merge(f"{n}_out", *out)


def _infer(
    rt: UseCaseRuntime, reduced: Reduced
) -> tuple[Reduced, list[Inferred] | ServeError, list[DeadLetter]]:
    """The dispatch's predictions, or the failure of a version (the router fell back).

    Rows whose values the model's input types cannot take are dead letters first.
    """
    records, problems = rt.model.admit(reduced.records)
    dead = [
        replace(late_letter(reduced.records, i, reason), stage="infer")
        for i, reason in sorted(problems.items())
    ]
    if not len(records):
        return reduced, [], dead
    if problems:
        reduced = replace(reduced, records=records)
    try:
        return reduced, rt.router(records), dead
    except ServeError as exc:
        return reduced, exc, dead


def _publish(
    rt: UseCaseRuntime,
    reduced: Reduced,
    groups: list[Inferred] | ServeError,
    refused: list[DeadLetter] | None = None,
) -> list[Outgoing]:
    """Predictions (or the reply) and samples of one dispatch, per serving variant.

    Shadow predictions go to the samples only: never to the predictions topic, a reply
    or an actuator. A dispatch a version failed on is dead-lettered with the reason.
    """
    plan = rt.plan
    out: list[Outgoing] = [_deadletters(plan.deadletter_topic, refused)] if refused else []
    if isinstance(groups, ServeError):
        recs = reduced.records
        dead = [replace(late_letter(recs, i, str(groups)), stage="infer") for i in range(len(recs))]
        return [*out, _deadletters(plan.deadletter_topic, dead)]
    answered: list[bytes] = []
    for group in groups:
        pred, model, variant = group.predictions, group.model, group.variant
        if not group.shadow:
            observe_dispatch(plan.name, pred.latency_ms, len(pred.records))
            values = prediction_values(
                pred, model.name, model.version, variant, correction=reduced.correction
            )
            if reduced.request is not None:
                answered += values
            else:
                out.append(Outgoing(plan.predictions_topic, values, pred.records.keys))
        keep, reasons = rt.sampler(pred)
        if keep.any():
            samples = sample_values(
                pred, keep, reasons, plan.features, model.name, model.version, variant
            )
            out.append(Outgoing(plan.samples_topic, samples))
    if reduced.request is not None:
        request = reduced.request
        reply = Outgoing(request.reply_to, [reply_value(request, answered)], [request.request_id])
        out.insert(0, reply)
    return out


def _sample_rows(rt: UseCaseRuntime, batch: RawBatch) -> tuple[Any, list[DeadLetter]]:
    """Sample messages → rows for the store; anything unreadable is a dead letter.

    A row's ``site`` is the site whose topic it came on (a fleet member's mirrored
    ``<member>.<uc>.samples``): what a message says of its site is never believed.
    """
    site = rt.plan.site_of_topic(batch.topic, rt.plan.samples_topic, "infer")
    columns = [name for name, _ in rt.table.all_columns() if name != "site"]
    rows: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    for i, value in enumerate(batch.values):
        try:
            row = orjson.loads(value or b"")
            missing = [c for c in columns if c not in row]
        except (orjson.JSONDecodeError, TypeError) as exc:
            row, missing = None, [f"not a JSON object: {exc}"]
        if row is not None and not missing and site is not None:
            row["site"] = site
            rows.append(row)
        else:
            reason = (
                f"sample row lacks columns {missing}"
                if row is None or missing
                else f"{batch.topic} is no samples topic of a site that runs {rt.plan.name}"
            )
            dead.append(
                DeadLetter(
                    value=value,
                    key=batch.keys[i],
                    reason=reason,
                    topic=batch.topic,
                    partition=batch.partition,
                    offset=batch.offsets[i],
                    stage="store",
                )
            )
    if rows and rt.table.retention_from == "event":  # counted from storing: none expire here
        retention_ms = rt.table.retention_seconds * 1000
        oldest = int(time.time() * 1000) - retention_ms
        expired = sum(
            1
            for r in rows
            if not isinstance(r["event_time"], int) or r["event_time"] < max(oldest, 0)
        )
        observe_expired(rt.plan.name, expired, str(rt.plan.usecase.retention))
    return rows, dead


def _store_branch(
    flow: Dataflow,
    rt: UseCaseRuntime,
    conf: dict[str, Any],
    until_end: bool,
    recovered: Mapping[str, Sequence[str]],
) -> tuple[Stream[tuple[str, Any]], Stream[Outgoing]]:
    plan = rt.plan
    n = plan.name
    samples = plan.read_names(plan.samples_topic, "infer", "store")
    source = KafkaBatchSource(
        conf,
        samples,
        until_end=until_end,
        group=f"mlexec-{n}-store",
        context={"usecase": n},
        settings=BACKGROUND_TUNING,
        qualified=plan.from_fleet("infer"),
        retired=recovered.get(f"{n}_samples", ()),
    )
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
    if not plan.profiled:
        return rows, bad
    stored, refused = stored_profiles(flow, rt, conf, until_end, recovered)
    refused_out = op.map(
        f"{n}_bad-profiles-out", refused, lambda d: _deadletters(plan.deadletter_topic, d)
    )
    return op.merge(f"{n}_stored", rows, stored), op.merge(f"{n}_bad-stored", bad, refused_out)


def build_flow(
    name: str,
    conf: dict[str, Any],
    *,
    process: Iterable[UseCaseRuntime] = (),
    store: Iterable[UseCaseRuntime] = (),
    store_url: str | None = None,
    until_end: bool = False,
    batch_size: int = 1000,
    site: str | None = None,
    cluster_share: tuple[int, int] = (0, 1),
    recovered: Mapping[str, Sequence[str]] | None = None,
) -> Dataflow:
    """One dataflow running ``process`` use cases' pipelines and ``store`` use cases' sinks.

    ``site`` picks which of a use case's dispatch and infer stages run here (default:
    both, in process); apart, the reduced rows travel on ``<uc>.reduced``. In a bytewax
    cluster, ``cluster_share`` is (this process, of how many): each process produces its
    own outputs (:class:`KafkaBatchSink`). ``recovered``: step → the source parts its
    recovery state holds, so that a fleet member taken out of the inventory can still
    be resumed past (:class:`KafkaBatchSource`).
    """
    recovered = recovered or {}
    flow = Dataflow(name)
    outgoing: list[Stream[Outgoing]] = []
    for rt in process:
        stages = (
            {"dispatch", "infer"}
            if site is None
            else {stage for stage, s in rt.plan.sites if s == site} & {"dispatch", "infer"}
        )
        outgoing.append(_process_branch(flow, rt, conf, until_end, batch_size, stages))
    stored = list(store)
    if stored:
        if store_url is None:
            msg = "a store branch needs the site's sample-store URL"
            raise ValueError(msg)
        row_streams = []
        for rt in stored:
            rows, bad = _store_branch(flow, rt, conf, until_end, recovered)
            row_streams.append(rows)
            outgoing.append(bad)
        all_rows = op.merge("store_rows", *row_streams)
        tables: dict[str, SamplesTable] = {rt.table.name: rt.table for rt in stored}
        profiles = profiles_table(rt.plan for rt in stored)
        if profiles is not None:
            tables[profiles.name] = profiles
        op.output("store_sink", all_rows, SampleStoreSink(store_url, tables))
    if outgoing:
        this, processes = cluster_share
        sink = KafkaBatchSink(conf, process=this, processes=processes)
        merged = op.merge("kafka_all", *outgoing)
        keyed = op.key_on("kafka_route", merged, lambda out: sink.key_for(out.topic))
        op.output("kafka_out", keyed, sink)
    return flow
