"""Declared aggregations equal a direct numpy computation, per key and window."""

from __future__ import annotations

import numpy as np
import pytest

from operators.dispatch import Dispatched
from operators.records import Records
from operators.reduce import AGGREGATION_EXPRESSIONS, Reducer


def test_every_aggregation_matches_numpy_per_key_and_window():
    rng = np.random.default_rng(0)
    n = 200
    keys = [f"k{i % 3}" for i in range(n)]
    times = np.sort(rng.integers(0, 30_000, n))
    values = rng.normal(size=n)
    recs = Records(
        [f"r:0:{i}" for i in range(n)], np.arange(n, dtype=np.uint64), keys, times, {"v": values}
    )
    starts = times - times % 10_000
    reducer = Reducer("uc", {"v": list(AGGREGATION_EXPRESSIONS)})
    out = reducer(Dispatched(records=recs, window_starts=starts, window_size_ms=10_000))
    numpy_aggs = {
        "mean": np.mean,
        "std": np.std,
        "min": np.min,
        "max": np.max,
        "sum": np.sum,
        "count": len,
        "first": lambda a: a[0],
        "last": lambda a: a[-1],
        "rms": lambda a: np.sqrt(np.mean(a * a)),
        "ptp": np.ptp,
    }
    groups = {(k, s) for k, s in zip(keys, starts.tolist(), strict=True)}
    assert len(out) == len(groups)
    for i, (key, start) in enumerate(zip(out.keys, out.times.tolist(), strict=True)):
        mask = np.array([k == key for k in keys]) & (starts == start)
        for agg, fn in numpy_aggs.items():
            assert out.columns[f"v_{agg}"][i] == pytest.approx(
                fn(values[mask]), rel=1e-9, abs=1e-12
            ), agg
        assert out.record_ids[i] == f"uc:{key}:{start}"


def test_identity_passes_records_through():
    recs = Records(
        ["a:0:1"], np.zeros(1, np.uint64), ["k"], np.zeros(1, np.int64), {"v": np.ones(1)}
    )
    assert Reducer("uc", None)(Dispatched(records=recs)) is recs
