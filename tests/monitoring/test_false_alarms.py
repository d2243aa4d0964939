"""Thresholds by false-alarm rate: alarms mean the same at 200 rows and at 5,000, and catch shifts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from mlexec.connectors.samplestore import open_store
from mlexec.monitoring.dashboard import DashboardData
from mlexec.monitoring.monitor import Monitor
from mlexec.monitoring.nulls import size_key
from mlexec.topologies import TopologyError, parse_topology
from mlexec.usecase import samples_table
from tests.dataflows.spine import FIELDS, T0, prepared
from tests.monitoring.test_monitor import HOUR_MS, _at, _direct_topology, _monitoring

pytestmark = pytest.mark.integration

RATE = 0.05
WINDOWS = 200
SHIFTED = 20
REFERENCE_ROWS = 20_000


def _hour(table: Any, hour: int, n: int, rng: np.random.Generator, shift: float = 0.0) -> pa.Table:
    """``n`` samples in hour ``hour`` after T0: every feature N(0, 1), f0 shifted by ``shift``."""
    start = T0 + hour * HOUR_MS
    columns: dict[str, Any] = {
        "record_id": [f"h{hour}-{i}" for i in range(n)],
        "key": [f"s{i % 8}" for i in range(n)],
        "event_time": pa.array(start + np.arange(n) * (HOUR_MS // n), pa.int64()).cast(
            pa.timestamp("ms", tz="UTC")
        ),
        "model": ["mlp"] * n,
        "model_version": ["7"] * n,
        "variant": ["production"] * n,
        "sample_reason": ["rate"] * n,
        "inference_ms": np.full(n, 0.1, dtype=np.float32),
        "sampled_at": pa.array(np.full(n, start), pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "site": ["here"] * n,
        "y": np.zeros(n),
    }
    for f in FIELDS:
        columns[f] = rng.normal(size=n) + (shift if f == "f0" else 0.0)
    schema = table.arrow_schema()
    return pa.table(
        {name: pa.array(columns[name], schema.field(name).type) for name in schema.names}
    )


def _alarming(evs: list[Any], stat: str) -> int:
    return sum(
        ev.thresholds[("f0", stat)].severity(ev.values[("f0", stat)]) is not None for ev in evs
    )


def test_declared_false_alarm_rates_hold_at_every_window_size_and_shifts_are_caught(
    broker, tmp_path, uid
):
    watch = {"f0": {"psi": {"false_alarm_rate": RATE}, "ks": {"false_alarm_rate": RATE}}}
    # a fixed name, not the uid: the bootstrap's seed derives from the use case's name,
    # and the test must judge one draw, the same on every run
    path = _direct_topology(
        tmp_path, broker.bootstrap, "falsealarms", _monitoring(T0, every="1h", watch=watch)
    )
    topology, plan, uc, conf = prepared(path)
    table = samples_table(uc)
    rng = np.random.default_rng(2026)
    sizes = {200: 1, 5_000: 1 + WINDOWS}  # first data hour of each run of windows
    shifted_from = 1 + 2 * WINDOWS
    with open_store(topology.sites["here"].sample_store) as store:
        store.ensure_table(table)
        hours = [_hour(table, 0, REFERENCE_ROWS, rng)]  # the reference hour
        for n, first in sizes.items():
            hours += [_hour(table, h, n, rng) for h in range(first, first + WINDOWS)]
        hours += [
            _hour(table, h, 5_000, rng, shift=0.2)
            for h in range(shifted_from, shifted_from + SHIFTED)
        ]
        store.insert(table, pa.concat_tables(hours))
        monitor = Monitor(plan, "here", store)
        monitor.prepare()
        evs = monitor.replay(_at(T0 + HOUR_MS), _at(T0 + (shifted_from + SHIFTED + 1) * HOUR_MS))
        board = DashboardData(plan, "here", store, hours=24 * 365 * 10).usecase(uc.name)
        stored = store.query(
            f"SELECT toUnixTimestamp64Milli(time) AS t, warning FROM mlexec.mlexec_drift "
            f"WHERE usecase = '{uc.name}' AND column = 'f0' AND statistic = 'psi' ORDER BY time"
        )
    by_hour = {int((ev.window_start.timestamp() * 1000 - T0) // HOUR_MS): ev for ev in evs}
    low, high = stats.binom.interval(0.999, WINDOWS, RATE)
    psi_at = {}
    for n, first in sizes.items():
        undrifted = [by_hour[h] for h in range(first, first + WINDOWS)]
        assert {ev.rows for ev in undrifted} == {n}
        for stat in ("psi", "ks"):
            alarms = _alarming(undrifted, stat)
            assert low <= alarms <= high, (n, stat, alarms, (low, high))
        psi_at[n] = undrifted[0].thresholds[("f0", "psi")].warning
    # the same rate, other cut-offs: PSI's chance level shrinks like 1/n
    assert psi_at[200] > 10 * psi_at[5_000]
    shifted = [by_hour[h] for h in range(shifted_from, shifted_from + SHIFTED)]
    for stat in ("psi", "ks"):
        assert _alarming(shifted, stat) >= 0.9 * SHIFTED, stat
    # each window's resolved threshold is stored and drawn (it changes with the size)
    judged = [ev.thresholds[("f0", "psi")].warning for ev in evs if ("f0", "psi") in ev.thresholds]
    assert len(judged) == 2 * WINDOWS + SHIFTED
    assert stored["warning"].to_list() == pytest.approx(judged)
    drawn = board["threshold_series"]["psi"]["f0"]["v"]
    assert [x for x in drawn if x is not None] == pytest.approx(judged)
    assert board["thresholds"].get("psi", []) == []  # no fixed line for a rated statistic
    # a fixed PSI cut-off of 0.1 on the same windows: it misses the 0.2 σ shift
    fixed = sum(ev.values[("f0", "psi")] >= 0.1 for ev in shifted)
    assert fixed < SHIFTED / 2


def test_window_sizes_share_a_distribution_by_two_significant_digits():
    assert [size_key(n) for n in (7, 200, 4_987, 5_012, 19_999, 2_000_000)] == [
        7, 200, 5_000, 5_000, 5_000, 5_000,
    ]  # fmt: skip


def test_a_rate_beside_its_number_or_on_accuracy_is_refused():
    def refused(monitoring: str) -> str:
        text = (
            "sites: {here: {kafka: {bootstrap: 127.0.0.1:9092}, sample_store: chdb:///tmp/x}}\n"
            "usecases: {u: {input: {topic: t, key: k, time: ts, schema: {k: str, ts: timestamp, "
            "a: float}}, dispatch: {kind: per_record}, reduction: {kind: identity}, "
            "model: {name: m, version: '1', path: /nonexistent.onnx}, "
            f"monitoring: {monitoring}}}}}\n"
        )
        with pytest.raises(TopologyError) as err:
            parse_topology(text)
        return str(err.value)

    ref = "reference: {kind: range, start: '2026-01-01T00:00:00Z', end: '2026-01-02T00:00:00Z'}"
    assert "'warning' or 'false_alarm_rate', not both" in refused(
        f"{{{ref}, watch: {{a: {{psi: {{warning: 0.1, false_alarm_rate: 0.01}}}}}}}}"
    )
    assert "false_alarm_rate is for drift and quality" in refused(
        "{accuracy: {output: y, thresholds: {false_alarm_rate: 0.01}}}"
    )
    assert "critical is the rarer" in refused(
        f"{{{ref}, watch: {{a: {{ks: {{false_alarm_rate: 0.01, critical_false_alarm_rate: 0.05}}}}}}}}"
    )
