"""Drift at scale: every statistic of 50 features over 1 M sample rows, in chDB.

``python -m benchmarks.drift [--rows 1000000] [--features 50]`` fills a samples table
with a reference hour and a current hour (one feature shifted), stores the reference
profile (``mlexec_references``), then times the one statement ``mlexec monitor`` runs
per evaluation (:func:`mlexec.monitoring.sql.drift_sql`: PSI, KS, JS, Wasserstein, mean and
quantile shift, null and out-of-range rates of every column) and the profiling. For
comparison it times scipy computing PSI, KS and Wasserstein over the same arrays.
Prints a table and ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
from scipy import stats

from mlexec.connectors.samplestore import ChdbStore
from mlexec.monitoring.nulls import (
    BOOTSTRAP_MAX,
    bootstrap_column,
    effective_rows,
    size_key,
    threshold_at,
)
from mlexec.monitoring.sql import (
    REFERENCES_TABLE,
    Segmenting,
    bin_counts_sql,
    drift_sql,
    profile_sql,
    tables_ddl,
)

HOUR_MS = 3_600_000
T0 = 1_900_000_000_000


def _fill(store: ChdbStore, rows: int, features: list[str]) -> None:
    cols = ", ".join(f"`{f}` Float64" for f in features)
    store.command(
        f"CREATE TABLE mlexec.samples_bench (event_time DateTime64(3, 'UTC'), {cols}) "
        "ENGINE = MergeTree ORDER BY event_time"
    )
    rng = np.random.default_rng(0)
    chunk = 250_000
    for half in (0, 1):  # reference hour, current hour
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            times = T0 + half * HOUR_MS + (np.arange(start, start + n) * HOUR_MS) // rows
            data = {"event_time": pa.array(times, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))}
            for i, f in enumerate(features):
                values = rng.normal(size=n)
                if half and i == 7:
                    values += 0.3
                data[f] = pa.array(values)
            store.insert("samples_bench", pa.table(data))


def _store_profile(store: ChdbStore, usecase: str, source: str, features: list[str]) -> None:
    """Profile ``source`` as reference ``ref`` of ``usecase`` in ``mlexec_references``."""
    prof = store.query(profile_sql(source, features, 10)).row(0, named=True)
    edges = {f: prof[f"c{i}_edges"] for i, f in enumerate(features)}
    counts = store.query(bin_counts_sql(source, edges)).row(0, named=True)
    rows = [
        {
            "usecase": usecase,
            "reference": "ref",
            "column": f,
            "rows": prof["rows"],
            "n": prof[f"c{i}_n"],
            "mean": prof[f"c{i}_mean"],
            "std": prof[f"c{i}_std"],
            "min": prof[f"c{i}_min"],
            "max": prof[f"c{i}_max"],
            "edges": prof[f"c{i}_edges"],
            "counts": counts[f"c{i}_counts"],
            "grid": prof[f"c{i}_grid"],
            "created_at": T0,
        }
        for i, f in enumerate(features)
    ]
    table = pa.Table.from_pylist(rows)
    table = table.set_column(
        table.schema.get_field_index("created_at"),
        "created_at",
        table.column("created_at").cast(pa.timestamp("ms", tz="UTC")),
    )
    store.insert(REFERENCES_TABLE, table)


def _false_alarms(store: ChdbStore, windows: int, rows: int, rate: float) -> dict[str, object]:
    """Undrifted windows of ``rows`` against a 1 M-row reference: how many alarm at ``rate``."""
    reference_rows = 1_000_000
    store.command(
        "CREATE TABLE mlexec.fa_bench (w UInt32, x Float64) ENGINE = MergeTree ORDER BY w"
    )
    store.command(
        f"INSERT INTO mlexec.fa_bench SELECT 0, randNormal(0, 1) FROM numbers({reference_rows})"
    )
    store.command(
        f"INSERT INTO mlexec.fa_bench SELECT 1 + intDiv(number, {rows}), randNormal(0, 1) "
        f"FROM numbers({windows * rows})"
    )
    ref = "mlexec.fa_bench WHERE w = 0"
    _store_profile(store, "fa", ref, ["x"])
    effective = effective_rows(rows, reference_rows)
    drawn_at = size_key(effective)
    began = time.perf_counter()
    values = bootstrap_column(
        store, ref, reference_rows, "fa", "ref", "x", 10, None, drawn_at, 1000, 7, ("psi", "ks")
    )
    bootstrap_s = time.perf_counter() - began
    live = store.query(
        drift_sql(
            "mlexec.fa_bench WHERE w > 0", "mlexec", "fa", "ref", ["x"], 10, {},
            Segmenting("w", 1, windows),
        )
    )  # fmt: skip
    out: dict[str, object] = {"windows": windows, "rows": rows, "bootstrap_s": bootstrap_s}
    for stat in ("psi", "ks"):
        limit = threshold_at(values[stat], stat, drawn_at, effective, rate)
        found = live[f"c0_{stat}"].to_numpy()
        out[stat] = {"threshold": limit, "alarms": int((found >= limit).sum()),
                     "fixed_0.1": int((found >= 0.1).sum())}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per hour")
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    features = [f"x{i}" for i in range(args.features)]
    work = Path(tempfile.mkdtemp(prefix="mlexec-drift-"))
    store = ChdbStore(work / "chdb")
    try:
        for ddl in tables_ddl("mlexec"):
            store.command(ddl)
        began = time.perf_counter()
        _fill(store, args.rows, features)
        fill_s = time.perf_counter() - began

        ref = f"mlexec.samples_bench WHERE event_time < fromUnixTimestamp64Milli({T0 + HOUR_MS})"
        cur = f"mlexec.samples_bench WHERE event_time >= fromUnixTimestamp64Milli({T0 + HOUR_MS})"
        began = time.perf_counter()
        _store_profile(store, "bench", ref, features)
        profile_s = time.perf_counter() - began

        sql = drift_sql(cur, "mlexec", "bench", "ref", features, 10, {})
        timings = []
        for _ in range(args.repeat):
            began = time.perf_counter()
            result = store.query(sql).row(0, named=True)
            timings.append(time.perf_counter() - began)
        drift_s = float(np.median(timings))
        flagged = [f for i, f in enumerate(features) if result[f"c{i}_psi"] > 0.05]

        # thresholds by false-alarm rate: every column's no-drift distribution, drawn once
        bootstrap_s = {}
        # PSI for every column; KS (O(GRID²) per window) on 5 columns, it scales linearly
        for rated, columns in ((("psi",), features), (("psi", "ks"), features[:5])):
            began = time.perf_counter()
            for f in columns:
                bootstrap_column(
                    store, ref, args.rows, "bench", "ref", f, 10, None, BOOTSTRAP_MAX, 1000, 7,
                    rated,
                )  # fmt: skip
            bootstrap_s["+".join(rated)] = (len(columns), time.perf_counter() - began)
        alarms = _false_alarms(store, 200, 200_000, 0.05)

        # the same three statistics with scipy on arrays already in memory
        a = store.query(f"SELECT {', '.join(features)} FROM {ref}")
        b = store.query(f"SELECT {', '.join(features)} FROM {cur}")
        began = time.perf_counter()
        for f in features:
            x, y = a[f].to_numpy(), b[f].to_numpy()
            e = np.quantile(x, np.arange(1, 10) / 10)
            p = np.bincount(np.searchsorted(e, y), minlength=10) / len(y)
            q = np.bincount(np.searchsorted(e, x), minlength=10) / len(x)
            np.sum((p - q) * np.log(np.maximum(p, 1e-6) / np.maximum(q, 1e-6)))
            stats.ks_2samp(y, x)
            stats.wasserstein_distance(y, x)
        scipy_s = time.perf_counter() - began
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.rows:,} current rows × {args.features} features (and as many reference rows)")
    print(f"| step | seconds |\n|---|---:|\n| fill both hours | {fill_s:.2f} |")
    print(f"| reference profile (once per reference) | {profile_s:.2f} |")
    print(f"| drift statement: 8 statistics × {args.features} columns | {drift_s:.2f} |")
    print(f"| scipy: PSI + KS + Wasserstein, data already in memory | {scipy_s:.2f} |")
    for which, (count, seconds) in bootstrap_s.items():
        print(
            f"| no-drift distributions of {which} for false-alarm thresholds: {count} "
            f"columns × 1,000 windows of {BOOTSTRAP_MAX:,} rows (once per reference and "
            f"window size) | {seconds:.2f} |"
        )
    print(f"features over PSI 0.05: {flagged}")
    print(
        f"false alarms, 200 undrifted windows of 200,000 rows, declared rate 0.05 "
        f"(binomial 99.9 %: 2…21): PSI {alarms['psi']}, KS {alarms['ks']}"
    )
    record = {
        "rows": args.rows,
        "features": args.features,
        "profile_s": profile_s,
        "drift_s": drift_s,
        "drift_runs_s": timings,
        "scipy_s": scipy_s,
        "flagged": flagged,
        "bootstrap_s": bootstrap_s,
        "false_alarms": alarms,
    }
    print("RESULT " + orjson.dumps(record).decode())


if __name__ == "__main__":
    main()
