"""Profiles instead of rows: 4 sites × 24 windows merged give the drift the rows give."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mlexec.connectors.batchsource import RawBatch
from mlexec.connectors.samplesink import rows_to_arrow
from mlexec.connectors.samplestore import open_store
from mlexec.monitoring.profiles import PROFILES_TABLE, profile_rows, profiles_table
from mlexec.monitoring.sql import Segmenting, drift_sql
from mlexec.operators.profile import ProfileLogic, WindowProfile, partials
from mlexec.topologies.schema import STATISTICS
from tests.dataflows.spine import FIELDS, T0, prepared
from tests.monitoring.test_monitor import (
    _ALL,
    HOUR_MS,
    _at,
    _direct_topology,
    _monitor_over,
    _monitoring,
    _sample_rows,
)

pytestmark = pytest.mark.integration

SITES = ["plant-0", "plant-1", "plant-2", "plant-3"]
WINDOW_MS = 5 * 60_000
WINDOWS = 24  # the 2-hour evaluation window
PER_WINDOW = 500  # rows per site and window
WATCHED = ["f0", "f1", "f2", "f3"]
#: The 24 windows start here (profile windows are aligned to multiples of their size).
START = -(-(T0 + HOUR_MS) // WINDOW_MS) * WINDOW_MS
#: Largest |profile − rows| per statistic over every column and site (α = 0.5 %): PSI, JS,
#: KS and out_of_range move only by values within 0.5 % of a bin edge or of the range (JS,
#: a square root, most near 0),
#: Wasserstein and the quantile shift by 0.5 % of a quantile's magnitude; the mean and the
#: null rate are exact.
TOLERANCE = {
    "psi": 0.002,
    "js": 0.005,
    "ks": 0.003,
    "wasserstein": 0.003,
    "mean_shift": 1e-9,
    "quantile_shift": 0.01,
    "null_rate": 1e-12,
    "out_of_range": 0.001,
}


def _site_columns(rng: np.random.Generator, site: int, w: int, n: int) -> dict[str, np.ndarray]:
    """f0 normal (plant-2 shifted by 0.5 sd), f1 skewed, f2 a small
    integer (profiled exactly), f3 normal with 2 % missing; the rest normal."""
    cols = {f: rng.normal(size=n) for f in FIELDS}
    if site == 2:
        cols["f0"] += 0.5
    cols["f1"] = rng.lognormal(0.0, 1.0, size=n)
    cols["f2"] = rng.integers(0, 6, size=n).astype(np.float64)
    cols["f3"][rng.uniform(size=n) < 0.02] = np.nan
    return cols


def _reference_rows(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    cols = _site_columns(rng, 0, 0, n)
    return _sample_rows(START - HOUR_MS, n, rng, **cols)


def _profiled(uc_name: str, rng: np.random.Generator) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Every site's rows of the 24 windows, and the profile messages its pipeline would send.

    Profiles go through :class:`ProfileLogic` in batches of 256, as on a site.
    """
    rows: list[dict[str, Any]] = []
    messages: list[bytes] = []
    start = START
    for s, site in enumerate(SITES):
        logic = ProfileLogic(uc_name, site, _td(WINDOW_MS), _td(30_000), _td(60_000), 0.005)
        site_rows: list[dict[str, Any]] = []
        for w in range(WINDOWS):
            cols = _site_columns(rng, s, w, PER_WINDOW)
            chunk = _sample_rows(start + w * WINDOW_MS, PER_WINDOW, rng, **cols)
            for i, row in enumerate(chunk):  # event times spread over the 5-minute window
                row["event_time"] = start + w * WINDOW_MS + i * (WINDOW_MS // PER_WINDOW)
                row["record_id"] = f"{site}-{w}-{i}"
                row["key"] = site
            site_rows += chunk
        out: list[WindowProfile] = []
        for b in range(0, len(site_rows), 256):
            batch = site_rows[b : b + 256]
            pieces = partials(
                np.array([r["event_time"] for r in batch]),
                [r["record_id"] for r in batch],
                {c: np.array([r[c] for r in batch]) for c in WATCHED},
                WINDOW_MS,
                0.005,
            )
            out += list(logic.on_batch(pieces)[0])
        out += list(logic.on_eof()[0])
        assert [p.part for p in out] == ["window"] * WINDOWS  # one profile per window
        messages += [m for p in out for m in p.messages()]
        rows += site_rows
    return rows, messages


def _td(ms: int):  # noqa: ANN202
    from datetime import timedelta

    return timedelta(milliseconds=ms)


def test_drift_of_merged_profiles_of_four_sites_over_24_windows_equals_the_rows(
    broker, tmp_path, uid
):
    monitoring = _monitoring(
        START - HOUR_MS,
        window="2h",
        watch={c: _ALL for c in WATCHED},
        profiles={"window": "5m"},
    )
    path = _direct_topology(tmp_path, broker.bootstrap, uid, monitoring)
    topology, plan, uc, _ = prepared(path)
    rng = np.random.default_rng(23)
    reference = _reference_rows(rng, 8000)
    rows, messages = _profiled(uc.name, rng)
    stored, dead = profile_rows(
        uc.name, RawBatch("p", 0, list(range(len(messages))), [None] * len(messages), messages)
    )
    assert dead == [] and len(stored) == len(SITES) * WINDOWS * len(WATCHED)

    with open_store(topology.sites["here"].sample_store) as store:
        monitor = _monitor_over(store, plan, uc, reference + rows)
        table = profiles_table([uc])
        assert table is not None
        store.insert(table, rows_to_arrow(table, stored))
        store.insert(table, rows_to_arrow(table, stored[:10]))  # a replay: replaced, not added
        end = START + WINDOWS * WINDOW_MS
        (ev,) = monitor.run_once(_at(end))
        counted = store.query(
            f"SELECT site, sum(rows) AS rows FROM `{store.database}`.{PROFILES_TABLE} FINAL "
            f"WHERE column = 'f0' GROUP BY site ORDER BY site"
        )
        source = (
            f"`{store.database}`.`{uc.table}` FINAL WHERE event_time >= "
            f"fromUnixTimestamp64Milli({START}) AND event_time < "
            f"fromUnixTimestamp64Milli({end})"
        )
        args = (source, store.database, uc.name, ev.reference, WATCHED, 10, {})
        whole = store.query(drift_sql(*args)).row(0, named=True)
        per_key = store.query(drift_sql(*args, segments=Segmenting("key", 1, 10)))

    # every row of every site is in the merged profiles once: 24 windows × 500
    assert counted.to_dicts() == [{"site": s, "rows": WINDOWS * PER_WINDOW} for s in SITES]
    assert ev.rows == len(rows) == int(whole["rows"])
    worst = {stat: 0.0 for stat in STATISTICS}
    for i, col in enumerate(WATCHED):
        for stat in STATISTICS:
            got, want = ev.values[(col, stat)], float(whole[f"c{i}_{stat}"])
            worst[stat] = max(worst[stat], abs(got - want))
        for seg in per_key.iter_rows(named=True):
            subject = f"{col} @ site={seg['segment']}"
            for stat in STATISTICS:
                got, want = ev.values[(subject, stat)], float(seg[f"c{i}_{stat}"])
                worst[stat] = max(worst[stat], abs(got - want))
    print("largest |profile - rows| per statistic:", worst)  # the note's tolerance
    assert all(worst[s] <= TOLERANCE[s] for s in STATISTICS), worst
    # f2 (six integers) was profiled exactly: its statistics are the rows' to rounding
    assert abs(ev.values[("f2", "psi")] - float(whole["c2_psi"])) < 1e-9
    assert abs(ev.values[("f2", "ks")] - float(whole["c2_ks"])) < 1e-9
    # ... and KS counts its ties as one step: no drift where the distribution is the same
    assert ev.values[("f2", "ks")] < 0.03

    # the shifted site alarms on its own; merged with the others it does not reach PSI's
    raised = {(a.subject, a.statistic) for a in ev.alerts if a.statistic == "psi"}
    assert ("f0 @ site=plant-2", "psi") in raised
    assert not any(s.startswith("f0 @ site=plant-") and s != "f0 @ site=plant-2" for s, _ in raised)
    assert ev.values[("f0", "psi")] < ev.values[("f0 @ site=plant-2", "psi")]


def test_a_site_sends_profiles_of_every_record_once_and_refuses_forged_ones(broker, tmp_path, uid):
    """The real pipeline and store, no samples at all: every good record is profiled once
    (per window, by count), extreme values keep their exact range, a replay of the whole
    input does not count twice, and a forged profile message is a dead letter."""
    import orjson
    import polars as pl

    from mlexec.connectors.kafka import produce_records
    from mlexec.connectors.reading import read_topic
    from mlexec.monitoring.monitor import Monitor
    from tests.dataflows.spine import feed, run_to_end, spine_topology

    rng = np.random.default_rng(5)
    pl.DataFrame({f: rng.uniform(-3, 3, 5000) for f in ("f0", "f1")}).write_csv(
        tmp_path / "ref.csv"
    )
    path = spine_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        dispatch="{kind: microbatch, max_records: 200, max_wait: 10ms}",
        reduction="{kind: identity}",
        sampling="{rate: 0.0}",
        monitoring={
            "window": "10m",  # the 6 one-minute windows the input spans
            "reference": {"kind": "file", "path": str(tmp_path / "ref.csv")},
            "watch": {"f0": {"psi": {"warning": 0.1}}, "f1": {"mean_shift": {"warning": 0.5}}},
            "profiles": {"window": "1m", "lateness": "1s"},
        },
    )
    topology, plan, uc, conf, values, positions, good, bad = feed(path, n=3000, bad_every=41)
    extremes = [3.0e38, -3.0e38, 1e-45, 0.0, -0.0]  # float32, the model's input, holds these
    refused = [1e308, -1e308]  # ... and not these: dead letters, so never profiled
    extra = [
        dict(good[next(iter(good))], f0=x, ts=T0 + 3000 * 100 + j)
        for j, x in enumerate(extremes + refused)
    ]
    produce_records(conf, uc.raw_topic, [(b"s0", orjson.dumps(r)) for r in extra])
    extra = extra[: len(extremes)]
    forged = {
        "usecase": uc.name,
        "site": "here",
        "column": "f0",
        "window_start": 0,
        "window_end": 60_000,
        "part": "window",
        "alpha": 0.005,
        "rows": 9,
        "n": 9,
        "nulls": 0,
        "sum": 0.0,
        "sumsq": 0.0,
        "min": 0.0,
        "max": 0.0,
        "keys": [1],
        "counts": [5],
        "values": [],
        "value_counts": [],
    }  # 5 of 9: a lie
    produce_records(conf, uc.profiles_topic, [(None, orjson.dumps(forged)), (None, b"\x00junk")])
    run_to_end(path)
    table = f"`mlexec`.{PROFILES_TABLE}"
    query = (
        f"SELECT window_start, sum(rows) AS rows, min(min) AS low, max(max) AS high FROM {table} "
        f"FINAL WHERE column = 'f0' GROUP BY window_start ORDER BY window_start"
    )
    with open_store(topology.sites["here"].sample_store) as store:
        first = store.query(query)
        samples = store.query(f"SELECT count() AS n FROM mlexec.{uc.table}")["n"][0]

    times = [r["ts"] for r in good.values()] + [r["ts"] for r in extra]
    per_window: dict[int, int] = {}
    for t in times:
        per_window[t - t % 60_000] = per_window.get(t - t % 60_000, 0) + 1
    got = {
        int(r["window_start"].timestamp() * 1000): r["rows"] for r in first.iter_rows(named=True)
    }
    assert got == per_window  # each good record once, in its own window
    assert samples == 0  # the link carried no rows
    assert first["low"].min() == -3.0e38 and first["high"].max() == 3.0e38
    predictions = read_topic(conf, uc.predictions_topic)
    assert len(predictions) == len(good) + len(extremes)

    dead = read_topic(conf, uc.deadletter_topic)
    forged_dead = [
        (v, dict(h))
        for _, v, h, _, _ in dead
        if dict(h)["mlexec.topic"] == uc.profiles_topic.encode()
    ]
    assert len(dead) == len(bad) + len(refused) + 2 and len(forged_dead) == 2
    assert {v for v, _ in forged_dead} == {orjson.dumps(forged), b"\x00junk"}  # original bytes
    reasons = sorted(h["mlexec.reason"].decode() for _, h in forged_dead)
    assert any("counts and value_counts must sum to n" in r for r in reasons), reasons
    assert any("not JSON" in r for r in reasons), reasons

    run_to_end(path)  # the same input again from the beginning (no recovery): no double count
    with open_store(topology.sites["here"].sample_store) as store:
        again = store.query(query)
        monitor = Monitor(plan, "here", store)
        monitor.prepare()
        end = max(per_window) + 60_000
        (ev,) = monitor.run_once(_at(end))
    assert again["rows"].to_list() == first["rows"].to_list()
    assert ev.rows == sum(per_window.values())
    assert ev.values[("f0", "psi")] == ev.values[("f0", "psi")]  # judged (not NaN)
    assert ("f0 @ site=here", "psi") in ev.values
