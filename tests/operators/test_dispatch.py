"""Dispatch rules driven through bytewax (TestingSource/run_main) with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.dispatch import MicroBatchLogic, TumblingLogic, split_by_bucket
from operators.records import Records


def _records(partition: int, offsets: list[int], keys: list[str], times: list[int]) -> Records:
    return Records(
        record_ids=[f"raw:{partition}:{o}" for o in offsets],
        ids=(np.uint64(partition) << np.uint64(48)) | np.asarray(offsets, dtype=np.uint64),
        keys=keys,
        times=np.asarray(times, dtype=np.int64),
        columns={"v": np.asarray(offsets, dtype=np.float64)},
    )


def _run(items, logic):
    flow = Dataflow("t")
    stream = op.input("in", flow, TestingSource(items))
    out = op.stateful_batch("dispatch", stream, logic)
    got: list = []
    op.output("out", op.key_rm("unkey", out), TestingSink(got))
    run_main(flow)
    return got


def test_micro_batches_never_exceed_max_records_and_keep_every_record_once():
    items = [
        ("p0", _records(0, list(range(i * 7, i * 7 + 7)), ["k"] * 7, [0] * 7)) for i in range(10)
    ]
    got = _run(items, lambda s: MicroBatchLogic(16, timedelta(seconds=60), resume=s))
    sizes = [len(d.records) for d in got]
    assert max(sizes) <= 16
    ids = [r for d in got for r in d.records.record_ids]
    assert ids == [f"raw:0:{o}" for o in range(70)]


def test_a_partial_micro_batch_is_released_after_max_wait():
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    logic = MicroBatchLogic(100, timedelta(milliseconds=50), now=lambda: now[0])
    out, _ = logic.on_batch([_records(0, [1, 2], ["a", "b"], [0, 0])])
    assert list(out) == []
    assert logic.notify_at() == now[0] + timedelta(milliseconds=50)
    released, _ = logic.on_notify()
    assert [len(d.records) for d in released] == [2]
    assert logic.notify_at() is None


def test_state_survives_a_snapshot_and_resume():
    logic = MicroBatchLogic(100, timedelta(seconds=1))
    logic.on_batch([_records(0, [1, 2, 3], ["a"] * 3, [0] * 3)])
    resumed = MicroBatchLogic(100, timedelta(seconds=1), resume=logic.snapshot())
    out, _ = resumed.on_eof()
    assert [d.records.record_ids for d in out] == [["raw:0:1", "raw:0:2", "raw:0:3"]]


def _windows(dispatched):
    rows = {}
    for d in dispatched:
        if d.records is None:
            continue
        for rid, key, start in zip(
            d.records.record_ids, d.records.keys, d.window_starts.tolist(), strict=True
        ):
            rows.setdefault((key, start), []).append(rid)
    return rows


def test_tumbling_windows_group_each_key_and_window_exactly_once():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    logic = TumblingLogic(
        timedelta(seconds=10), timedelta(0), timedelta(seconds=5), now=lambda: now
    )
    out = []
    times = list(range(0, 40_000, 1_000))
    for chunk in range(4):
        part = times[chunk * 10 : chunk * 10 + 10]
        emitted, _ = logic.on_batch(
            [_records(0, part, ["a" if t % 2000 else "b" for t in part], part)]
        )
        out += emitted
    emitted, _ = logic.on_eof()
    out += emitted
    windows = _windows(out)
    assert sorted(windows) == sorted((k, s) for k in "ab" for s in range(0, 40_000, 10_000))
    assert sum(len(v) for v in windows.values()) == 40
    assert all(d.late == [] for d in out)


def test_watermark_waits_for_the_slowest_partition_then_late_records_are_dead_letters():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    logic = TumblingLogic(
        timedelta(seconds=10), timedelta(seconds=1), timedelta(minutes=5), now=lambda: now
    )
    # partition 1 races ahead to t=60 s; partition 0 is still at t=5 s: nothing may close
    out, _ = logic.on_batch([_records(1, [0], ["x"], [60_000]), _records(0, [0], ["y"], [5_000])])
    assert [d for d in out if d.records is not None] == []
    # partition 0 reaches 30 s: windows ending by 29 s (watermark) close — y's [0, 10 s)
    out, _ = logic.on_batch([_records(0, [1], ["y"], [30_000])])
    assert _windows(out) == {("y", 0): ["raw:0:0"]}
    # a record for the closed window is late: a dead letter naming where it came from
    out, _ = logic.on_batch([_records(0, [2], ["y"], [4_000])])
    late = [dl for d in out for dl in d.late]
    assert len(late) == 1 and late[0].offset == 2 and late[0].partition == 0
    assert late[0].reason.startswith("late:") and late[0].stage == "dispatch"


def test_an_idle_source_closes_windows_by_wall_clock():
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    logic = TumblingLogic(
        timedelta(seconds=10), timedelta(0), timedelta(seconds=5), now=lambda: now[0]
    )
    out, _ = logic.on_batch([_records(0, [0, 1], ["k", "k"], [1_000, 2_000])])
    assert _windows(out) == {}
    assert logic.notify_at() == now[0] + timedelta(seconds=5)
    now[0] += timedelta(seconds=6)
    out, _ = logic.on_notify()
    assert _windows(out) == {("k", 0): ["raw:0:0", "raw:0:1"]}


def test_keys_split_into_stable_buckets():
    recs = _records(0, list(range(50)), [f"k{i % 10}" for i in range(50)], [0] * 50)
    parts = split_by_bucket(recs, 4)
    assert sum(len(r) for _, r in parts) == 50
    again = dict(split_by_bucket(recs, 4))
    for name, r in parts:
        assert again[name].record_ids == r.record_ids
        assert len({k for k in r.keys}) == len(set(r.keys))
    owners = {}
    for name, r in parts:
        for k in r.keys:
            owners.setdefault(k, set()).add(name)
    assert all(len(v) == 1 for v in owners.values())
