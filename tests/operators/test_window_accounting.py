"""Every record of a window use case ends in exactly one window, correction or dead letter.

The window logic is driven as bytewax drives it — batches, notifications when
``notify_at`` is due, snapshots at epoch ends — with restarts at random points that
resume from the last snapshot and replay what came after it (a restart takes longer
than ``idle_close``), and pauses longer than ``idle_close`` inside a window.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from mlexec.operators.dispatch import Dispatched, split_by_bucket
from mlexec.operators.records import Records
from mlexec.operators.windows import WindowLogic, WindowShape

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SIZE = timedelta(seconds=60)
IDLE = timedelta(seconds=5)


class _Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _batch(offsets: list[int], times: list[int]) -> Records:
    return Records(
        record_ids=[f"raw:0:{o}" for o in offsets],
        ids=np.asarray(offsets, dtype=np.uint64),
        keys=[f"k{o % 3}" for o in offsets],
        times=np.asarray(times, dtype=np.int64),
        columns={"v": np.asarray(offsets, dtype=np.float64)},
        raw=[f'{{"o": {o}}}'.encode() for o in offsets],
    )


def _fates(out: list[Dispatched]) -> dict[str, set[tuple]]:
    """Record id → every fate it met: a window (key, start), or a dead letter."""
    fates: dict[str, set[tuple]] = {}
    for d in out:
        if d.records is not None and d.groups is not None:
            for rid, key, group in zip(
                d.records.record_ids, d.records.keys, d.groups.tolist(), strict=True
            ):
                fates.setdefault(rid, set()).add(("window", key, group, d.correction))
        for dl in d.late:
            fates.setdefault(f"raw:0:{dl.offset}", set()).add(("dead",))
            assert dl.value == f'{{"o": {dl.offset}}}'.encode()  # the original bytes
    return fates


def _drive(seed: int, late: str) -> tuple[dict[str, set[tuple]], int]:
    rng = random.Random(seed)
    n = 3_000
    # event time runs 50 ms a record; sometimes the source pauses (wall clock) longer
    # than idle_close in the middle of a window
    offsets = list(range(n))
    times = [o * 50 for o in offsets]
    batches = []
    i = 0
    while i < n:
        size = rng.randint(1, 60)
        batches.append((offsets[i : i + size], times[i : i + size]))
        i += size
    pauses = set(rng.sample(range(len(batches)), 4))
    restarts = sorted(rng.sample(range(1, len(batches)), 5))
    clock = _Clock()
    shape = WindowShape.tumbling(SIZE)
    logic = WindowLogic(shape, partitions=1, idle_close=IDLE, late=late, now=clock)  # type: ignore[arg-type]
    out: list[Dispatched] = []
    snapshot, snapshot_at = None, 0
    b = 0
    while b < len(batches):
        if restarts and b == restarts[0]:
            restarts.pop(0)
            clock.now += IDLE * 3  # the restart itself takes longer than idle_close
            logic = WindowLogic(
                shape,
                partitions=1,
                idle_close=IDLE,
                late=late,
                now=clock,
                resume=snapshot,  # type: ignore[arg-type]
            )
            b = snapshot_at  # replay from the last snapshot's offsets
            continue
        clock.now += IDLE * 2 if b in pauses else timedelta(milliseconds=100)
        due = logic.notify_at()
        if due is not None and due <= clock.now:
            emitted, _ = logic.on_notify()
            out += emitted
        ((_, piece),) = split_by_bucket(_batch(*batches[b]), 1, progress=True)
        emitted, _ = logic.on_batch([piece])
        out += emitted
        b += 1
        if rng.random() < 0.2:  # an epoch ends: snapshot with the source position
            snapshot, snapshot_at = logic.snapshot(), b
    emitted, _ = logic.on_eof()
    out += emitted
    return _fates(out), n


@pytest.mark.parametrize("seed", range(6))
def test_restarts_and_pauses_lose_no_record_of_a_window(seed):
    fates, n = _drive(seed, "deadletter")
    assert set(fates) == {f"raw:0:{o}" for o in range(n)}  # nothing vanished
    for rid, met in fates.items():
        # replays may emit a window twice, but always the same window for a record
        assert len(met) == 1, (rid, met)


@pytest.mark.parametrize("seed", range(3))
def test_with_corrections_a_late_record_re_emits_its_window(seed):
    fates, n = _drive(seed, "correction")
    assert set(fates) == {f"raw:0:{o}" for o in range(n)}
    for rid, met in fates.items():
        windows = {(k, g) for _, k, g, _ in met}
        assert len(windows) == 1, (rid, met)  # one window; maybe emitted again corrected


def test_a_pause_longer_than_idle_close_dead_letters_the_rest_of_the_window():
    """20 records, a pause past idle_close, 20 more of the same window: none vanish."""
    clock = _Clock()
    logic = WindowLogic(WindowShape.tumbling(SIZE), partitions=1, idle_close=IDLE, now=clock)
    ((_, first),) = split_by_bucket(
        _batch(list(range(20)), [i * 100 for i in range(20)]), 1, progress=True
    )
    logic.on_batch([first])
    clock.now += IDLE * 2
    window, _ = logic.on_notify()
    ((_, second),) = split_by_bucket(
        _batch(list(range(20, 40)), [i * 100 for i in range(20, 40)]), 1, progress=True
    )
    late, _ = logic.on_batch([second])
    fates = _fates([*window, *late])
    assert sum(1 for f in fates.values() if next(iter(f))[0] == "window") == 20
    dead = [dl for d in late for dl in d.late]
    assert sorted(dl.offset for dl in dead) == list(range(20, 40))
    assert all("already emitted" in dl.reason for dl in dead)


def test_a_restart_does_not_idle_close_the_windows_it_resumed():
    clock = _Clock()
    logic = WindowLogic(WindowShape.tumbling(SIZE), partitions=1, idle_close=IDLE, now=clock)
    ((_, first),) = split_by_bucket(
        _batch(list(range(10)), [i * 100 for i in range(10)]), 1, progress=True
    )
    logic.on_batch([first])
    state = logic.snapshot()
    clock.now += IDLE * 10  # down for a long time
    resumed = WindowLogic(
        WindowShape.tumbling(SIZE), partitions=1, idle_close=IDLE, now=clock, resume=state
    )
    assert resumed.notify_at() == clock.now + IDLE  # silence counts from the restart
    ((_, more),) = split_by_bucket(
        _batch(list(range(10, 20)), [i * 100 for i in range(10, 20)]), 1, progress=True
    )
    out, _ = resumed.on_batch([more])
    end, _ = resumed.on_eof()
    fates = _fates([*out, *end])
    assert {next(iter(f)) for f in fates.values()} == {
        ("window", f"k{k}", 0, False) for k in range(3)
    }
    assert len(fates) == 20
