"""Profiles: buckets within α, merging equal to profiling at once, windows, late batches, resume."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from mlexec.operators.profile import (
    EXACT_MAX,
    ColumnProfile,
    ProfileLogic,
    bucket_keys,
    bucket_values,
    partials,
)

ALPHA = 0.005


def test_every_value_is_within_alpha_of_its_bucket_and_keys_sort_as_values():
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            rng.normal(size=5000) * 10.0 ** rng.integers(-8, 30, size=5000),
            [0.0, -0.0, 1e-12, -1e-12, 1e-9, 1.0, -1.0, 3e38, -3e38, 1.7e308, -1.7e308],
        ]
    )
    keys = bucket_keys(x, ALPHA)
    rep = bucket_values(keys, ALPHA)
    big = np.abs(x) >= 1e-9
    assert np.all(np.abs(rep[big] - x[big]) <= ALPHA * np.abs(x[big]) * (1 + 1e-12))
    assert np.all(rep[~big] == 0.0)
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(keys[order]) >= 0)  # keys sort as the values do


def _same(a: ColumnProfile, b: ColumnProfile) -> None:
    assert (a.rows, a.n, a.nulls) == (b.rows, b.n, b.nulls)
    assert np.isclose(a.total, b.total) and np.isclose(a.squares, b.squares)
    assert (a.low, a.high) == (b.low, b.high)
    np.testing.assert_array_equal(a.keys, b.keys)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.exact, b.exact)
    np.testing.assert_array_equal(a.exact_counts, b.exact_counts)


def test_merged_profiles_are_the_profile_of_the_union_for_any_split():
    rng = np.random.default_rng(2)
    for values in (
        rng.normal(size=3000),  # continuous: buckets
        rng.integers(0, 5, size=3000).astype(float),  # few values: exact
        np.where(rng.uniform(size=3000) < 0.1, np.nan, rng.lognormal(size=3000)),
    ):
        whole = ColumnProfile.of(values, ALPHA)
        cuts = np.sort(rng.choice(len(values), size=5, replace=False))
        parts = [ColumnProfile.of(p, ALPHA) for p in np.split(values, cuts)]
        merged = parts[0]
        for p in parts[1:]:
            merged = merged.merge(p, ALPHA)
        _same(merged, whole)
    # exact parts whose union has too many distinct values become buckets
    a = ColumnProfile.of(np.arange(EXACT_MAX, dtype=float), ALPHA)
    b = ColumnProfile.of(np.arange(EXACT_MAX, 2 * EXACT_MAX, dtype=float), ALPHA)
    assert len(a.exact) == EXACT_MAX and not len(a.keys)
    both = a.merge(b, ALPHA)
    assert not len(both.exact) and both.counts.sum() == 2 * EXACT_MAX
    _same(both, ColumnProfile.of(np.arange(2 * EXACT_MAX, dtype=float), ALPHA))


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _batches(n: int, rng: np.random.Generator, size: int = 100):
    times = np.sort(rng.integers(0, 10 * 60_000, size=n))
    values = rng.normal(size=n)
    for b in range(0, n, size):
        ids = [f"r{i}" for i in range(b, min(b + size, n))]
        yield partials(times[b : b + size], ids, {"x": values[b : b + size]}, 60_000, ALPHA)


def _logic(clock: _Clock, resume=None) -> ProfileLogic:  # noqa: ANN001
    return ProfileLogic(
        "u", "s", timedelta(minutes=1), timedelta(seconds=5), timedelta(seconds=30), ALPHA,
        now=clock, resume=resume,
    )  # fmt: skip


def test_windows_close_behind_the_newest_time_and_a_resumed_logic_emits_the_same():
    rng = np.random.default_rng(3)
    batches = list(_batches(2000, rng))
    clock = _Clock()
    straight = _logic(clock)
    out = [w for b in batches for w in straight.on_batch(b)[0]] + list(straight.on_eof()[0])
    assert [w.window_start for w in out] == [k * 60_000 for k in range(10)]
    assert sum(w.columns["x"].rows for w in out) == 2000
    assert {w.part for w in out} == {"window"}

    # interrupted halfway: the snapshot resumes to the very same profiles
    first = _logic(clock)
    got = [w for b in batches[:9] for w in first.on_batch(b)[0]]
    resumed = _logic(clock, resume=first.snapshot())
    got += [w for b in batches[9:] for w in resumed.on_batch(b)[0]] + list(resumed.on_eof()[0])
    assert [(w.window_start, w.part) for w in got] == [(w.window_start, w.part) for w in out]
    for a, b in zip(got, out, strict=True):
        _same(a.columns["x"], b.columns["x"])


def test_a_late_batch_is_sent_on_its_own_and_an_idle_input_closes_its_windows():
    clock = _Clock()
    logic = _logic(clock)
    one = partials(np.array([1_000, 2_000]), ["a", "b"], {"x": np.array([1.0, 2.0])}, 60_000, ALPHA)
    assert list(logic.on_batch(one)[0]) == []
    assert logic.notify_at() == clock.now + timedelta(seconds=30)
    later = partials(np.array([70_000]), ["c"], {"x": np.array([3.0])}, 60_000, ALPHA)
    (closed,) = logic.on_batch(later)[0]  # 70 s is 5 s past the first window's end
    assert (closed.window_start, closed.part, closed.columns["x"].rows) == (0, "window", 2)
    late = partials(np.array([3_000]), ["d"], {"x": np.array([4.0])}, 60_000, ALPHA)
    (alone,) = logic.on_batch(late)[0]
    assert (alone.window_start, alone.part, alone.columns["x"].rows) == (0, "late:d", 1)
    clock.now += timedelta(seconds=31)
    (idle,) = logic.on_notify()[0]  # nothing new for 30 s: the open window goes out
    assert (idle.window_start, idle.columns["x"].rows) == (60_000, 1)
    assert logic.notify_at() is None
