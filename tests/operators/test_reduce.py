"""Every reduction kind equals an independent numpy / scipy computation."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import polars as pl
import pytest
from scipy import stats

from mlexec.operators.dispatch import Dispatched
from mlexec.operators.records import Records
from mlexec.operators.reduce import Reduced, Reducer, ReductionError, StatefulReduceLogic
from mlexec.operators.testing import make_linear
from mlexec.topologies.schema import AGGREGATIONS, aggregation_column

SPECS = [a for a in AGGREGATIONS if a not in ("quantile", "band_energy")] + [
    "quantile(0.1)",
    "quantile(0.5)",
    "quantile(0.95)",
    "band_energy(0, 2)",
    "band_energy(2, 5)",
]


def _direct_band_energy(x: np.ndarray, t_ms: np.ndarray, lo: float, hi: float) -> float:
    """The band energy by an explicit DFT sum (no FFT): the definition, computed apart."""
    n = len(x)
    span = (t_ms[-1] - t_ms[0]) / 1000.0
    if n < 2 or span <= 0:
        return 0.0
    rate = (n - 1) / span
    total = 0.0
    for k in range(n // 2 + 1):
        freq = k * rate / n
        if lo <= freq < hi:
            coef = np.sum(x * np.exp(-2j * np.pi * k * np.arange(n) / n))
            total += abs(coef) ** 2 / n
    return total


def _reference(spec: str, x: np.ndarray, t_ms: np.ndarray) -> float:
    t = t_ms / 1000.0
    table = {
        "mean": lambda: np.mean(x),
        "std": lambda: np.std(x),
        "min": lambda: np.min(x),
        "max": lambda: np.max(x),
        "sum": lambda: np.sum(x),
        "count": lambda: float(len(x)),
        "first": lambda: x[0],
        "last": lambda: x[-1],
        "rms": lambda: np.sqrt(np.mean(x * x)),
        "ptp": lambda: np.ptp(x),
        "delta": lambda: x[-1] - x[0],
        "slope": lambda: stats.linregress(t, x).slope if np.ptp(t) > 0 else 0.0,
        "zero_crossings": lambda: float(np.count_nonzero(np.diff(np.signbit(x)))),
        "quantile(0.1)": lambda: np.quantile(x, 0.1),
        "quantile(0.5)": lambda: np.quantile(x, 0.5),
        "quantile(0.95)": lambda: np.quantile(x, 0.95),
        "band_energy(0, 2)": lambda: _direct_band_energy(x, t_ms, 0, 2),
        "band_energy(2, 5)": lambda: _direct_band_energy(x, t_ms, 2, 5),
    }
    return float(table[spec]())


def _signal(n: int = 240, keys: int = 3) -> Records:
    rng = np.random.default_rng(0)
    key_list = [f"k{i % keys}" for i in range(n)]
    times = np.arange(n, dtype=np.int64) * 50 + rng.integers(0, 10, n)  # ~20 Hz, jittered
    values = np.sin(2 * np.pi * 3.0 * times / 1000.0) + rng.normal(0, 0.3, n)
    return Records(
        [f"r:0:{i}" for i in range(n)],
        np.arange(n, dtype=np.uint64),
        key_list,
        times,
        {"v": values},
    )


def test_every_aggregation_matches_a_numpy_scipy_reference_per_key_and_window():
    recs = _signal()
    starts = recs.times - recs.times % 4_000
    out = Reducer("uc", {"v": SPECS})(Dispatched(records=recs, groups=starts)).records
    groups = set(zip(recs.keys, starts.tolist(), strict=True))
    assert len(out) == len(groups)
    for i, (key, start) in enumerate(zip(out.keys, out.times.tolist(), strict=True)):
        mask = np.array([k == key for k in recs.keys]) & (starts == start)
        x, t = recs.columns["v"][mask], recs.times[mask]
        for spec in SPECS:
            got = out.columns[aggregation_column("v", spec)][i]
            assert got == pytest.approx(_reference(spec, x, t), rel=1e-9, abs=1e-9), spec
        assert out.record_ids[i] == f"uc:{key}:{start}"


def test_band_energy_finds_the_frequency_of_a_sine():
    times = np.arange(400, dtype=np.int64) * 10  # 100 Hz for 4 s
    x = np.sin(2 * np.pi * 7.0 * times / 1000.0)
    recs = Records(
        [f"r:0:{i}" for i in range(400)],
        np.arange(400, dtype=np.uint64),
        ["k"] * 400,
        times,
        {"v": x},
    )
    specs = ["band_energy(6, 8)", "band_energy(0, 6)", "band_energy(8, 50)"]
    out = Reducer("uc", {"v": specs})(Dispatched(records=recs, groups=np.zeros(400, np.int64)))
    inside, below, above = (out.records.columns[aggregation_column("v", s)][0] for s in specs)
    assert inside > 50 * (below + above)


def test_per_record_and_micro_batch_grouping():
    recs = _signal(12, keys=2)
    per = Reducer("uc", {"v": ["mean", "count"]})(Dispatched(records=recs, per_record=True))
    assert per.records.record_ids == recs.record_ids
    assert per.records.columns["v_mean"].tolist() == recs.columns["v"].tolist()
    batch = Reducer("uc", {"v": ["count"]})(Dispatched(records=recs)).records
    assert sorted(batch.keys) == ["k0", "k1"] and batch.columns["v_count"].tolist() == [6.0, 6.0]
    first = {k: int(recs.times[recs.keys.index(k)]) for k in ("k0", "k1")}
    assert batch.record_ids == [f"uc:{k}:{first[k]}" for k in batch.keys]


def test_count_window_groups_carry_their_first_records_time():
    recs = _signal(6, keys=1)
    groups = np.array([0, 0, 0, 1, 1, 1])
    firsts = np.repeat(recs.times[[0, 3]], 3)
    out = Reducer("uc", {"v": ["sum"]})(
        Dispatched(records=recs, groups=groups, group_times=firsts)
    ).records
    assert out.record_ids == ["uc:k0:0", "uc:k0:1"]
    assert out.times.tolist() == recs.times[[0, 3]].tolist()


def test_identity_passes_records_through():
    recs = Records(
        ["a:0:1"], np.zeros(1, np.uint64), ["k"], np.zeros(1, np.int64), {"v": np.ones(1)}
    )
    reduced = Reducer("uc")(Dispatched(records=recs, correction=True))
    assert reduced.records is recs and reduced.correction


def spectrum(frame: pl.DataFrame) -> pl.DataFrame:
    """A packaged reduction entry point: per key and group, the mean and the range."""
    return frame.group_by(["key", "group"], maintain_order=True).agg(
        pl.col("time").min(),
        pl.col("v").mean().alias("level"),
        (pl.col("v").max() - pl.col("v").min()).alias("spread"),
    )


def test_a_python_entry_point_reduces_a_dispatch():
    recs = _signal(30, keys=2)
    groups = recs.times - recs.times % 500
    reducer = Reducer(
        "uc", entrypoint="tests.operators.test_reduce:spectrum", columns=["level", "spread"]
    )
    out = reducer(Dispatched(records=recs, groups=groups)).records
    for i, key in enumerate(out.keys):
        mask = np.array([k == key for k in recs.keys]) & (
            groups == int(out.record_ids[i].rsplit(":", 1)[1])
        )
        assert out.columns["level"][i] == pytest.approx(recs.columns["v"][mask].mean())
        assert out.columns["spread"][i] == pytest.approx(np.ptp(recs.columns["v"][mask]))


def test_a_missing_entry_point_is_refused_by_name():
    with pytest.raises(ReductionError, match="no function 'nope'"):
        Reducer("uc", entrypoint="tests.operators.test_reduce:nope", columns=["x"])
    with pytest.raises(ReductionError, match="cannot import module"):
        Reducer("uc", entrypoint="no_such_package.mod:f", columns=["x"])


def test_an_onnx_pre_model_maps_every_record(tmp_path):
    weights = np.array([[1.0, 0.5], [2.0, -1.0]], dtype=np.float32)
    make_linear(tmp_path / "pre.onnx", weights)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=20), rng.normal(size=20)
    recs = Records(
        [f"r:0:{i}" for i in range(20)],
        np.arange(20, dtype=np.uint64),
        ["k"] * 20,
        np.arange(20, dtype=np.int64),
        {"a": a, "b": b},
    )
    reducer = Reducer(
        "uc", premodel=str(tmp_path / "pre.onnx"), inputs=["a", "b"], columns=["p", "q"]
    )
    out = reducer(Dispatched(records=recs)).records
    expected = np.column_stack([a, b]).astype(np.float32) @ weights
    assert np.allclose(out.columns["p"], expected[:, 0], atol=1e-5)
    assert np.allclose(out.columns["q"], expected[:, 1], atol=1e-5)
    assert out.record_ids == recs.record_ids


def _reduced(keys: list[str], times: list[int], values: list[float], **kw) -> Reduced:
    n = len(keys)
    recs = Records(
        [f"uc:{k}:{t}" for k, t in zip(keys, times, strict=True)],
        np.arange(n, dtype=np.uint64),
        keys,
        np.asarray(times, np.int64),
        {"m": np.asarray(values)},
    )
    return Reduced(recs, **kw)


def test_ewma_and_diff_follow_each_key_and_survive_a_snapshot():
    alpha = 0.3
    series = {"a": [1.0, 4.0, 2.0, 8.0], "b": [10.0, 0.0, 5.0, 5.0]}
    logic = StatefulReduceLogic(["m"], alpha, ["m"], max_keys=10)
    got: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for step in range(4):
        if step == 2:  # a restart between dispatches: only the snapshot survives
            logic = StatefulReduceLogic(["m"], alpha, ["m"], 10, resume=logic.snapshot())
        (out,), _ = logic.on_batch(
            [_reduced(["a", "b"], [step * 1000] * 2, [series["a"][step], series["b"][step]])]
        )
        for i, key in enumerate(out.records.keys):
            got[key].append((out.records.columns["m_ewma"][i], out.records.columns["m_diff"][i]))
    for key, xs in series.items():
        ewma, expected = None, []
        for j, x in enumerate(xs):
            ewma = x if ewma is None else alpha * x + (1 - alpha) * ewma
            expected.append((ewma, 0.0 if j == 0 else x - xs[j - 1]))
        assert np.allclose(got[key], expected), key


def test_corrections_read_the_state_without_moving_it_and_keys_stay_bounded():
    logic = StatefulReduceLogic([], 1.0, ["m"], max_keys=2)
    logic.on_batch([_reduced(["a"], [0], [1.0])])
    (corr,), _ = logic.on_batch([_reduced(["a"], [0], [3.0], correction=True)])
    assert corr.records.columns["m_diff"].tolist() == [2.0]
    (nxt,), _ = logic.on_batch([_reduced(["a"], [1000], [5.0])])
    assert nxt.records.columns["m_diff"].tolist() == [4.0]  # from 1.0, not the correction
    logic.on_batch([_reduced(["b", "c"], [0, 0], [0.0, 0.0])])
    state = logic.snapshot()
    assert isinstance(state, OrderedDict) and list(state) == ["b", "c"]
