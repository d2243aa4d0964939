"""Dispatch rules on a test clock: exactly which records land in which dispatch."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from mlexec.operators.dispatch import (
    ConditionLogic,
    CountLogic,
    CronLogic,
    Dispatched,
    MicroBatchLogic,
    Slice,
    eager_batches,
    per_record,
    split_by_bucket,
)
from mlexec.operators.parse import RecordParser
from mlexec.operators.records import Records
from mlexec.operators.requests import RangeRequest, RequestLogic, RequestReader
from mlexec.operators.windows import WindowLogic, WindowShape

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _records(
    partition: int,
    offsets: list[int],
    keys: list[str],
    times: list[int],
    v: list[float] | None = None,
) -> Records:
    return Records(
        record_ids=[f"raw:{partition}:{o}" for o in offsets],
        ids=(np.uint64(partition) << np.uint64(48)) | np.asarray(offsets, dtype=np.uint64),
        keys=keys,
        times=np.asarray(times, dtype=np.int64),
        columns={"v": np.asarray(v if v is not None else offsets, dtype=np.float64)},
    )


def _slice(records: Records) -> Slice:
    ((_, piece),) = split_by_bucket(records, 1, progress=True)
    return piece  # type: ignore[return-value]


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def _groups(dispatched: list[Dispatched]) -> dict[tuple[str, int], list[str]]:
    """(key, group) → record ids, over every dispatch with records."""
    rows: dict[tuple[str, int], list[str]] = {}
    for d in dispatched:
        if d.records is None:
            continue
        assert d.groups is not None
        for rid, key, group in zip(
            d.records.record_ids, d.records.keys, d.groups.tolist(), strict=True
        ):
            rows.setdefault((key, group), []).append(rid)
    return rows


def _final(dispatched: list[Dispatched]) -> dict[tuple[str, int], list[str]]:
    """(key, group) → sorted record ids of the window's latest emission (corrections win)."""
    rows: dict[tuple[str, int], list[str]] = {}
    for d in dispatched:
        if d.records is None:
            continue
        assert d.groups is not None
        fresh: dict[tuple[str, int], list[str]] = {}
        for rid, key, group in zip(
            d.records.record_ids, d.records.keys, d.groups.tolist(), strict=True
        ):
            fresh.setdefault((key, group), []).append(rid)
        rows.update({w: sorted(ids) for w, ids in fresh.items()})
    return rows


def _late(dispatched: list[Dispatched]) -> list[tuple[int, int]]:
    return sorted((dl.partition, dl.offset) for d in dispatched for dl in d.late)


# ---------------------------------------------------------------- per record / micro-batch


def test_per_record_makes_every_record_its_own_dispatch():
    recs = _records(0, [1, 2, 3], ["a", "a", "b"], [5, 5, 6])
    d = per_record(recs)
    assert d.per_record and d.records is recs


def _run(items, logic, entry_point=run_main):
    flow = Dataflow("t")
    stream = op.input("in", flow, TestingSource(items))
    out = op.stateful_batch("dispatch", stream, logic)
    got: list = []
    op.output("out", op.key_rm("unkey", out), TestingSink(got))
    entry_point(flow)
    return got


def test_micro_batches_never_exceed_max_records_and_keep_every_record_once(entry_point):
    items = [
        (f"p{p}", _records(p, list(range(i * 7, i * 7 + 7)), ["k"] * 7, [0] * 7))
        for i in range(10)
        for p in range(4)  # four partitions: on two workers, each holds the state of some
    ]
    got = _run(items, lambda s: MicroBatchLogic(16, timedelta(seconds=60), resume=s), entry_point)
    assert max(len(d.records) for d in got) <= 16
    for p in range(4):  # each partition's records once, in their order
        mine = [r for d in got for r in d.records.record_ids if r.startswith(f"raw:{p}:")]
        assert mine == [f"raw:{p}:{o}" for o in range(70)]


def test_a_partial_micro_batch_is_released_after_max_wait():
    clock = Clock()
    logic = MicroBatchLogic(100, timedelta(milliseconds=50), now=clock)
    out, _ = logic.on_batch([_records(0, [1, 2], ["a", "b"], [0, 0])])
    assert list(out) == []
    assert logic.notify_at() == clock.now + timedelta(milliseconds=50)
    released, _ = logic.on_notify()
    assert [len(d.records) for d in released] == [2]
    assert logic.notify_at() is None


def test_micro_batch_state_survives_a_snapshot_and_resume():
    logic = MicroBatchLogic(100, timedelta(seconds=1))
    logic.on_batch([_records(0, [1, 2, 3], ["a"] * 3, [0] * 3)])
    resumed = MicroBatchLogic(100, timedelta(seconds=1), resume=logic.snapshot())
    out, _ = resumed.on_eof()
    assert [d.records.record_ids for d in out] == [["raw:0:1", "raw:0:2", "raw:0:3"]]


def test_an_eager_micro_batch_cuts_each_consumed_batch_and_waits_for_nothing():
    out = eager_batches(_records(0, list(range(10)), ["a"] * 10, [0] * 10), 4)
    assert [d.records.record_ids for d in out] == [
        [f"raw:0:{o}" for o in range(0, 4)],
        [f"raw:0:{o}" for o in range(4, 8)],
        ["raw:0:8", "raw:0:9"],
    ]
    assert [d.records.record_ids for d in eager_batches(_records(0, [7], ["a"], [0]), 4)] == [
        ["raw:0:7"]
    ]


# ---------------------------------------------------------------- event-time windows


def _window_logic(
    shape: WindowShape, partitions: int = 1, clock: Clock | None = None, **kw
) -> WindowLogic:
    return WindowLogic(shape, partitions=partitions, now=clock or Clock(), **kw)


def _feed(logic: WindowLogic, batches: list[Records]) -> list[Dispatched]:
    out: list[Dispatched] = []
    for batch in batches:
        emitted, _ = logic.on_batch([_slice(batch)])
        out += emitted
    emitted, _ = logic.on_eof()
    return out + list(emitted)


def test_tumbling_windows_group_each_key_and_window_exactly_once():
    logic = _window_logic(WindowShape.tumbling(timedelta(seconds=10)))
    times = list(range(0, 40_000, 1_000))
    batches = [
        _records(
            0,
            times[c * 10 : c * 10 + 10],
            ["a" if t % 2000 else "b" for t in times[c * 10 : c * 10 + 10]],
            times[c * 10 : c * 10 + 10],
        )
        for c in range(4)
    ]
    windows = _groups(_feed(logic, batches))
    assert sorted(windows) == sorted((k, s) for k in "ab" for s in range(0, 40_000, 10_000))
    for (key, start), ids in windows.items():
        want = [
            f"raw:0:{t}"
            for t in times
            if start <= t < start + 10_000 and (("a" if t % 2000 else "b") == key)
        ]
        assert ids == want


def test_out_of_order_records_within_lateness_count_and_later_ones_are_dead_letters():
    logic = _window_logic(
        WindowShape.tumbling(timedelta(seconds=10)), lateness=timedelta(seconds=5)
    )
    # event times (ms): 9 s is 3 s behind 12 s (on time), 3 s is 27 s behind 30 s (late)
    times = [1_000, 12_000, 9_000, 14_000, 30_000, 3_000]
    out = _feed(logic, [_records(0, [0, 1, 2, 3, 4, 5], ["k"] * 6, times)])
    assert _groups(out) == {
        ("k", 0): ["raw:0:0", "raw:0:2"],
        ("k", 10_000): ["raw:0:1", "raw:0:3"],
        ("k", 30_000): ["raw:0:4"],
    }
    assert _late(out) == [(0, 5)]
    (letter,) = [dl for d in out for dl in d.late]
    assert (
        letter.reason.startswith("late:")
        and "[0, 10000)" in letter.reason
        and letter.stage == "dispatch"
    )


def test_watermark_waits_for_the_slowest_partition():
    logic = _window_logic(
        WindowShape.tumbling(timedelta(seconds=10)), partitions=2, lateness=timedelta(seconds=1)
    )
    out, _ = logic.on_batch(
        [_slice(_records(1, [0], ["x"], [60_000])), _slice(_records(0, [0], ["y"], [5_000]))]
    )
    assert _groups(list(out)) == {}  # partition 0 is at 5 s: nothing may close
    out, _ = logic.on_batch([_slice(_records(0, [1], ["y"], [30_000]))])
    assert _groups(list(out)) == {("y", 0): ["raw:0:0"]}  # watermark 29 s closes [0, 10 s)
    out, _ = logic.on_batch([_slice(_records(0, [2], ["y"], [4_000]))])
    assert _late(list(out)) == [(0, 2)]


def test_an_idle_source_closes_windows_by_wall_clock():
    clock = Clock()
    logic = _window_logic(WindowShape.tumbling(timedelta(seconds=10)), clock=clock)
    out, _ = logic.on_batch([_slice(_records(0, [0, 1], ["k", "k"], [1_000, 2_000]))])
    assert _groups(list(out)) == {}
    assert logic.notify_at() == clock.now + timedelta(seconds=5)
    clock.now += timedelta(seconds=6)
    out, _ = logic.on_notify()
    assert _groups(list(out)) == {("k", 0): ["raw:0:0", "raw:0:1"]}


def test_sliding_windows_put_each_record_in_size_over_hop_windows():
    logic = _window_logic(WindowShape.sliding(timedelta(seconds=10), timedelta(seconds=5)))
    out = _feed(logic, [_records(0, [0, 1, 2], ["k"] * 3, [1_000, 6_000, 11_000])])
    assert _groups(out) == {
        ("k", -5_000): ["raw:0:0"],
        ("k", 0): ["raw:0:0", "raw:0:1"],
        ("k", 5_000): ["raw:0:1", "raw:0:2"],
        ("k", 10_000): ["raw:0:2"],
    }


def test_a_sliding_record_late_for_one_window_still_joins_the_open_one():
    logic = _window_logic(WindowShape.sliding(timedelta(seconds=10), timedelta(seconds=5)))
    out = _feed(logic, [_records(0, [0, 1], ["k", "k"], [18_000, 12_000])])
    # 12 s belongs to [5, 15) — closed at watermark 18 s — and to [10, 20): open
    assert _groups(out)[("k", 10_000)] == ["raw:0:0", "raw:0:1"]
    assert ("k", 5_000) not in _groups(out)
    assert _late(out) == [(0, 1)]


def test_session_windows_split_on_the_gap_per_key():
    logic = _window_logic(WindowShape.session(timedelta(seconds=5)))
    batch = _records(
        0,
        [0, 1, 2, 3, 4, 5, 6],
        ["a", "b", "a", "a", "b", "a", "a"],
        [0, 1_000, 2_000, 4_000, 10_000, 20_000, 22_000],
    )
    assert _groups(_feed(logic, [batch])) == {
        ("a", 0): ["raw:0:0", "raw:0:2", "raw:0:3"],
        ("a", 20_000): ["raw:0:5", "raw:0:6"],
        ("b", 1_000): ["raw:0:1"],
        ("b", 10_000): ["raw:0:4"],
    }


def test_a_record_for_a_closed_session_is_late():
    logic = _window_logic(WindowShape.session(timedelta(seconds=5)))
    out = _feed(logic, [_records(0, [0, 1, 2], ["a", "a", "a"], [0, 30_000, 3_000])])
    assert _groups(out) == {("a", 0): ["raw:0:0"], ("a", 30_000): ["raw:0:1"]}
    assert _late(out) == [(0, 2)]


def test_sessions_refuse_the_correction_policy():
    with pytest.raises(ValueError, match="session windows take late: deadletter"):
        _window_logic(WindowShape.session(timedelta(seconds=5)), late="correction")


@pytest.mark.parametrize(
    "shape",
    [
        WindowShape.tumbling(timedelta(seconds=10)),
        WindowShape.sliding(timedelta(seconds=10), timedelta(seconds=5)),
    ],
)
def test_a_late_record_re_emits_its_window_as_a_correction(shape):
    logic = _window_logic(shape, late="correction", correct_for=timedelta(seconds=60))
    first, _ = logic.on_batch([_slice(_records(0, [0, 1, 2], ["a"] * 3, [1_000, 2_000, 40_000]))])
    out = list(first) + _feed(logic, [_records(0, [3], ["a"], [3_000])])
    corrections = [d for d in out if d.correction]
    # 3 s belongs to [0, 10 s) — and, sliding, to [-5 s, 5 s) — all emitted already
    starts = {0} if shape.kind == "tumbling" else {-5_000, 0}
    assert {int(d.groups[0]) for d in corrections} == starts
    first = [d for d in out if d.records is not None and not d.correction]
    for fix in corrections:
        assert fix.records.record_ids == ["raw:0:0", "raw:0:1", "raw:0:3"]
        assert len(set(fix.groups.tolist())) == 1
        assert _groups(first)[("a", int(fix.groups[0]))] == ["raw:0:0", "raw:0:1"]
    assert _late(out) == []


def test_a_record_later_than_correct_for_is_a_dead_letter():
    logic = _window_logic(
        WindowShape.tumbling(timedelta(seconds=10)),
        late="correction",
        correct_for=timedelta(seconds=5),
    )
    out = _feed(logic, [_records(0, [0, 1, 2], ["a"] * 3, [1_000, 60_000, 2_000])])
    assert not any(d.correction for d in out)
    assert _late(out) == [(0, 2)]
    assert all("correct_for" in dl.reason for d in out for dl in d.late)


def _two_partition_data(seed: int) -> list[Records]:
    """Two partitions of keyed records, out of order within 3 s, a few far behind."""
    rng = random.Random(seed)
    batches = []
    for p in (0, 1):
        t, offsets, keys, times = 0, [], [], []
        for o in range(120):
            t += rng.randint(100, 600)
            late = rng.random() < 0.05
            times.append(t - (rng.randint(8_000, 20_000) if late else rng.randint(0, 3_000)))
            offsets.append(o)
            keys.append(f"k{p}{rng.randint(0, 3)}")
        for i in range(0, 120, 17):
            batches.append(_records(p, offsets[i : i + 17], keys[i : i + 17], times[i : i + 17]))
    return batches


@pytest.mark.parametrize(
    ("shape", "late"),
    [
        (WindowShape.tumbling(timedelta(seconds=5)), "deadletter"),
        (WindowShape.tumbling(timedelta(seconds=5)), "correction"),
        (WindowShape.sliding(timedelta(seconds=6), timedelta(seconds=2)), "deadletter"),
        (WindowShape.sliding(timedelta(seconds=6), timedelta(seconds=2)), "correction"),
        (WindowShape.session(timedelta(seconds=2)), "deadletter"),
    ],
)
def test_windows_do_not_depend_on_how_partitions_interleave_or_split_into_buckets(shape, late):
    """What one worker or two see differs only in interleaving and bucketing: same result."""
    batches = _two_partition_data(seed=4)
    p0 = [b for b in batches if int(b.ids[0] >> np.uint64(48)) == 0]
    p1 = [b for b in batches if int(b.ids[0] >> np.uint64(48)) == 1]
    results = []
    for order, buckets in [("p0-first", 1), ("alternate", 4), ("p1-first", 3)]:
        if order == "p0-first":
            seq = p0 + p1
        elif order == "p1-first":
            seq = p1 + p0
        else:
            seq = [b for pair in itertools.zip_longest(p0, p1) for b in pair if b is not None]
        logics: dict[str, WindowLogic] = {}
        out: list[Dispatched] = []
        for batch in seq:
            for bucket, piece in split_by_bucket(batch, buckets, progress=True):
                logic = logics.setdefault(
                    bucket,
                    _window_logic(
                        shape,
                        partitions=2,
                        lateness=timedelta(seconds=3),
                        late=late,
                        correct_for=timedelta(seconds=9),
                    ),
                )
                out += logic.on_batch([piece])[0]
        for logic in logics.values():
            out += logic.on_eof()[0]
        results.append((_final(out), _late(out)))
    assert results[0][1], "the data has late records"
    assert results[0] == results[1] == results[2]


# ---------------------------------------------------------------- count


def test_count_windows_per_key_in_arrival_order_and_across_a_restart():
    logic = CountLogic(3)
    out, _ = logic.on_batch(
        [
            _records(
                0, list(range(7)), ["a", "a", "b", "a", "b", "a", "b"], [10, 20, 30, 40, 50, 60, 70]
            )
        ]
    )
    assert _groups(list(out)) == {
        ("a", 0): ["raw:0:0", "raw:0:1", "raw:0:3"],
        ("b", 0): ["raw:0:2", "raw:0:4", "raw:0:6"],
    }
    (d,) = out
    assert d.group_times.tolist() == [10, 10, 10, 30, 30, 30]
    logic = CountLogic(3, resume=logic.snapshot())  # a restart: the pending "a" survives
    out, _ = logic.on_batch([_records(0, [7, 8], ["a", "a"], [80, 90])])
    assert _groups(list(out)) == {("a", 1): ["raw:0:5", "raw:0:7", "raw:0:8"]}


# ---------------------------------------------------------------- cron


def test_cron_runs_once_per_tick_and_a_restart_between_ticks_loses_nothing():
    clock = Clock(T0 + timedelta(seconds=30))
    logic = CronLogic("*/10 * * * *", now=clock)
    tick1 = T0 + timedelta(minutes=10)
    assert logic.notify_at() == tick1
    assert list(logic.on_batch([_records(0, [0, 1], ["a", "b"], [1, 2])])[0]) == []
    clock.now = tick1
    (run1,), _ = logic.on_notify()
    assert run1.records.record_ids == ["raw:0:0", "raw:0:1"]
    assert set(run1.groups.tolist()) == {int(tick1.timestamp() * 1000)}
    assert list(logic.on_notify()[0]) == []  # the same tick never runs twice
    logic.on_batch([_records(0, [2], ["a"], [3])])
    state = logic.snapshot()
    # stopped from 00:12 to 00:25: the 00:20 tick fell due while down
    clock.now = T0 + timedelta(minutes=25)
    logic = CronLogic("*/10 * * * *", resume=state, now=clock)
    assert logic.notify_at() == T0 + timedelta(minutes=20)
    (run2,), _ = logic.on_notify()
    assert run2.records.record_ids == ["raw:0:2"]
    assert set(run2.groups.tolist()) == {int((T0 + timedelta(minutes=20)).timestamp() * 1000)}
    logic.on_batch([_records(0, [3], ["b"], [4])])
    assert logic.notify_at() == T0 + timedelta(minutes=30)
    clock.now = T0 + timedelta(minutes=30)
    (run3,), _ = logic.on_notify()
    assert run3.records.record_ids == ["raw:0:3"]


def test_cron_follows_its_time_zone():
    clock = Clock(datetime(2026, 7, 1, 12, 0, tzinfo=UTC))
    logic = CronLogic("0 2 * * *", "Europe/Berlin", now=clock)
    assert logic.notify_at() == datetime(2026, 7, 2, 0, 0, tzinfo=UTC)  # 02:00 CEST


# ---------------------------------------------------------------- condition


def test_condition_fires_on_crossing_with_hysteresis_and_cooldown():
    logic = ConditionLogic(
        "v", above=10.0, clear=8.0, cooldown=timedelta(seconds=15), lookback=timedelta(seconds=2)
    )
    values = [5, 11, 12, 9, 11, 7, 11, 7, 3, 12]
    times = [0, 1_000, 2_000, 3_000, 4_000, 5_000, 12_000, 13_000, 14_000, 30_000]
    out, _ = logic.on_batch([_records(0, list(range(10)), ["k"] * 10, times, values)])
    # 11 @1 s fires; 12, 11 @4 s (not re-armed: 9 is above clear 8) do not; 7 re-arms;
    # 11 @12 s is inside the 15 s cool-down; 7 re-arms; 12 @30 s fires
    assert _groups(list(out)) == {
        ("k", 1_000): ["raw:0:0", "raw:0:1"],
        ("k", 30_000): ["raw:0:9"],
    }


def test_condition_state_survives_a_restart_per_key():
    logic = ConditionLogic("v", below=0.0, clear=1.0)
    logic.on_batch([_records(0, [0, 1], ["a", "b"], [0, 0], [-1, 5])])
    logic = ConditionLogic("v", below=0.0, clear=1.0, resume=logic.snapshot())
    out, _ = logic.on_batch([_records(0, [2, 3], ["a", "b"], [1, 1], [-2, -2])])
    assert _groups(list(out)) == {("b", 1): ["raw:0:3"]}  # a is still fired, b crosses now


# ---------------------------------------------------------------- on request


def _request(rid: str, key: str, start: int, end: int) -> RangeRequest:
    from mlexec.operators.dispatch import Request

    return RangeRequest(Request(rid, "uc.replies"), key, start, end)


def _request_logic(clock: Clock, **kw) -> RequestLogic:
    settings = {"partitions": 1, "timeout": timedelta(seconds=2), "keep": timedelta(hours=1)}
    return RequestLogic(**{**settings, "max_records_per_key": 100, **kw}, now=clock)


def test_a_range_request_waits_for_every_partition_then_scores_the_range():
    clock = Clock()
    logic = _request_logic(clock, partitions=2, timeout=timedelta(seconds=10))
    out, _ = logic.on_batch(
        [
            _request("r1", "a", 1_000, 3_000),
            _slice(_records(0, [0, 1, 2], ["a", "a", "a"], [500, 1_500, 2_500])),
        ]
    )
    assert list(out) == []  # partition 1 has not passed 3 s yet
    out, _ = logic.on_batch(
        [_slice(_records(1, [0], ["b"], [5_000])), _slice(_records(0, [3], ["a"], [4_000]))]
    )
    (answer,) = out
    assert answer.request.request_id == "r1"
    assert answer.records.record_ids == ["raw:0:1", "raw:0:2"]


def test_unknown_keys_empty_ranges_and_timeouts_get_error_replies():
    clock = Clock()
    logic = _request_logic(clock)
    logic.on_batch([_slice(_records(0, [0], ["a"], [10_000]))])
    out, _ = logic.on_batch(
        [
            _request("u", "ghost", 0, 5_000),
            _request("e", "a", 0, 5_000),
            _request("t", "a", 0, 60_000),
        ]
    )
    errors = {d.replies[0].request.request_id: d.replies[0].error for d in out}
    assert errors["u"] == "unknown key 'ghost'"
    assert errors["e"].startswith("no records of key 'a'")
    assert "t" not in errors and logic.notify_at() == clock.now + timedelta(seconds=2)
    clock.now += timedelta(seconds=3)
    (timed_out,), _ = logic.on_notify()
    assert timed_out.replies[0].request.request_id == "t"
    assert timed_out.replies[0].error.startswith("timeout:")


def test_history_is_bounded_per_key():
    logic = _request_logic(Clock(), keep=timedelta(seconds=4), max_records_per_key=3)
    times = [0, 1_000, 2_000, 3_000, 4_000, 5_000]
    logic.on_batch([_slice(_records(0, list(range(6)), ["a"] * 6, times))])
    (answer, before), _ = logic.on_batch(
        [_request("r", "a", 3_000, 5_000), _request("old", "a", 0, 5_000)]
    )
    assert answer.records.record_ids == ["raw:0:3", "raw:0:4"]  # at most 3 kept: 3, 4, 5 s
    assert before.replies[0].error.startswith("range starts at 0 ms, before the kept history")
    logic.on_batch([_slice(_records(0, [6], ["a"], [9_000]))])  # keep 4 s: only 5 s and 9 s stay
    (gone,), _ = logic.on_batch([_request("gone", "a", 3_000, 9_000)])
    assert "before the kept history" in gone.replies[0].error
    logic.on_batch([_slice(_records(0, [7], ["b"], [20_000]))])  # "a" silent for > keep
    assert list(logic.snapshot().history) == ["b"]
    (forgotten,), _ = logic.on_batch([_request("f", "a", 9_000, 10_000)])
    assert forgotten.replies[0].error == "unknown key 'a'"


class _Batch:
    def __init__(self, values: list[bytes]) -> None:
        self.topic, self.partition = "uc.requests", 0
        self.offsets = list(range(len(values)))
        self.keys = [None] * len(values)
        self.values = values


def test_payload_requests_are_parsed_with_the_schema_and_bad_ones_answered():
    parser = RecordParser({"k": "str", "ts": "timestamp", "v": "float"}, "k", "ts")
    reader = RequestReader(parser, "uc.replies")
    dispatched, ranges = reader(
        _Batch(
            [
                b'{"request_id": "p1", "payload": {"k": "a", "ts": 5, "v": 1.5}}',
                b'{"request_id": "p2", "reply_to": "mine", "payload": [{"k": "a", "ts": 5, "v": "x"}]}',
                b'{"request_id": "r3", "key": "a", "from": 0, "to": "1970-01-01T00:00:01Z"}',
                b'{"payload": {}}',
                b"not json",
            ]
        )
    )
    ok, bad, nameless, garbage = dispatched
    assert (
        ok.request.request_id == "p1"
        and ok.records.columns["v"].tolist() == [1.5]
        and ok.per_record
    )
    assert (
        bad.replies[0].request.reply_to == "mine"
        and "does not fit the schema" in bad.replies[0].error
    )
    assert ranges == [_request("r3", "a", 0, 1_000)]
    assert nameless.late[0].reason.startswith("request without a request_id")
    assert garbage.late[0].offset == 4
