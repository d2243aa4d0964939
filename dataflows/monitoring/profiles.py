"""Profiles in the store: stored per window and site, merged in ClickHouse, judged in numpy.

The inference site sends one message per window and watched column on
``<uc>.profiles`` (:mod:`operators.profile` describes the format); the store stage
keeps them in ``mlexec_profiles``, one row per (use case, site, column, window, part)
— a replayed profile replaces its earlier copy, no site can overwrite another's. An
evaluation merges the rows of its window in one statement (``sum``, ``sumMap``), per
site and over all sites, and computes the statistics of :mod:`monitoring.sql` from the
merged profile against the stored reference profile, exactly as the drift statement
does from rows except that values are their buckets' representatives (within the
profile's relative accuracy ``α``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from mlexec.connectors.batchsource import RawBatch
from mlexec.connectors.samplestore import SamplesTable
from mlexec.monitoring.sql import GRID, QUANTILE_SHIFT_LEVELS, quote, sql_time
from mlexec.operators.profile import bucket_keys, bucket_values
from mlexec.operators.records import DeadLetter
from mlexec.topologies.plan import UseCasePlan

__all__ = [
    "PROFILES_TABLE",
    "Merged",
    "ProfilesTable",
    "merged_sql",
    "profile_rows",
    "profile_statistics",
    "profiles_table",
]

PROFILES_TABLE = "mlexec_profiles"

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("usecase", "String"),
    ("site", "String"),
    ("column", "String"),
    ("window_start", "DateTime64(3, 'UTC')"),
    ("window_end", "DateTime64(3, 'UTC')"),
    ("part", "String"),
    ("alpha", "Float64"),
    ("rows", "Int64"),
    ("n", "Int64"),
    ("nulls", "Int64"),
    ("sum", "Float64"),
    ("sumsq", "Float64"),
    ("min", "Float64"),
    ("max", "Float64"),
    ("keys", "Array(Int64)"),
    ("counts", "Array(Int64)"),
    ("values", "Array(Float64)"),
    ("value_counts", "Array(Int64)"),
    ("received_at", "DateTime64(3, 'UTC')"),
)
_FLOOR = 1e-6


@dataclass(frozen=True)
class ProfilesTable(SamplesTable):
    """``mlexec_profiles``: the sample sink writes it like a samples table."""

    @classmethod
    def keeping(cls, retention_seconds: int) -> ProfilesTable:
        """The table, keeping profiles ``retention_seconds`` past their window's end."""
        return cls(PROFILES_TABLE, _COLUMNS, retention_seconds)

    def all_columns(self) -> list[tuple[str, str]]:
        return list(self.columns)

    def ttl(self) -> str:
        return f"toDateTime(window_end) + INTERVAL {int(self.retention_seconds)} SECOND"

    def ddl(self, database: str) -> str:
        cols = ", ".join(f"`{name}` {kind}" for name, kind in self.all_columns())
        return (
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{self.name}` ({cols}) "
            "ENGINE = ReplacingMergeTree(received_at) PARTITION BY toYYYYMM(window_start) "
            f"ORDER BY (usecase, site, column, window_start, part) TTL {self.ttl()}"
        )


def profiles_table(usecases: Iterable[UseCasePlan]) -> ProfilesTable | None:
    """The profiles table of the profiled use cases, or ``None`` when none is profiled.

    Profiles are kept as long as the longest-kept use case keeps its samples, counted
    from the window's end.
    """
    kept = [int(uc.usecase.retention.total_seconds()) for uc in usecases if uc.profiled]
    return ProfilesTable.keeping(max(kept)) if kept else None


_NUMBERS = ("rows", "n", "nulls", "window_start", "window_end")


def _checked(row: Any, usecase: str) -> str | None:
    """Why a profile message cannot be stored, or ``None``."""
    if not isinstance(row, dict):
        return "not a JSON object"
    missing = [name for name, _ in _COLUMNS if name not in row and name != "received_at"]
    if missing:
        return f"lacks {missing}"
    if row["usecase"] != usecase:
        return f"is of use case {row['usecase']!r}, not {usecase!r}"
    if not all(isinstance(row[k], int) and row[k] >= 0 for k in _NUMBERS):
        return f"{list(_NUMBERS)} must be non-negative integers"
    total = 0
    for at, of in (("keys", "counts"), ("values", "value_counts")):
        keys, counts = row[at], row[of]
        if not (isinstance(keys, list) and isinstance(counts, list) and len(keys) == len(counts)):
            return f"{at} and {of} must be lists of one length"
        if not all(isinstance(k, int if at == "keys" else int | float) for k in keys):
            return f"{at} must be numbers" + (" (integers)" if at == "keys" else "")
        if not all(isinstance(c, int) and c > 0 for c in counts):
            return f"{of} must be positive integers"
        total += sum(counts)
    if any(d <= 0 for d in row["keys"][1:]):
        return "keys (after the first, differences from the last) must increase"
    if total != row["n"] or row["n"] + row["nulls"] != row["rows"]:
        return "counts and value_counts must sum to n, and n + nulls to rows"
    if not isinstance(row["alpha"], float) or not 0 < row["alpha"] < 1:
        return "alpha must be a share between 0 and 1"
    return None


def profile_rows(
    usecase: str, batch: RawBatch, site: str | None = None
) -> tuple[list[dict[str, Any]], list[DeadLetter]]:
    """Profile messages → rows of ``mlexec_profiles``; anything else is a dead letter.

    With ``site`` (the site whose topic the batch came on), a message that names
    another site is a dead letter: no member can write another's profiles.
    """
    rows: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    now = int(time.time() * 1000)
    for i, value in enumerate(batch.values):
        why: str | None
        try:
            row = orjson.loads(value or b"")
        except orjson.JSONDecodeError as exc:
            row, why = None, f"not JSON: {exc}"
        else:
            why = _checked(row, usecase)
            if why is None and site is not None and row.get("site") != site:
                why = f"names site {row.get('site')!r} but came on {batch.topic} (site {site!r})"
        if why is not None:
            dead.append(
                DeadLetter(
                    value=value,
                    key=batch.keys[i],
                    reason=f"profile message {why}",
                    topic=batch.topic,
                    partition=batch.partition,
                    offset=batch.offsets[i],
                    stage="store",
                )
            )
            continue
        row["received_at"] = now
        row["keys"] = np.cumsum(np.asarray(row["keys"], dtype=np.int64)).tolist()
        rows.append(row)
    return rows, dead


def merged_sql(
    database: str, usecase: str, start: datetime, end: datetime, *, by_site: bool
) -> str:
    """The profiles of windows inside [start, end) merged per column (and site).

    One row per column (and site) and accuracy; the merged buckets ``merged_keys`` /
    ``merged_counts`` and exact values ``exact_values`` / ``exact_counts``, sorted.
    """
    by = "column, alpha" + (", site" if by_site else "")
    return (
        f"SELECT {by}, count() AS profiles, sum(rows) AS all_rows, sum(n) AS present, "
        "sum(nulls) AS missing, sum(sum) AS total, "
        "if(countIf(n > 0) = 0, nan, minIf(min, n > 0)) AS low, "
        "if(countIf(n > 0) = 0, nan, maxIf(max, n > 0)) AS high, "
        "sumMap(keys, counts) AS m, m.1 AS merged_keys, m.2 AS merged_counts, "
        "sumMap(values, value_counts) AS x, x.1 AS exact_values, x.2 AS exact_counts "
        f"FROM `{database}`.`{PROFILES_TABLE}` FINAL WHERE usecase = {quote(usecase)} "
        f"AND window_start >= {sql_time(start)} AND window_end <= {sql_time(end)} "
        f"GROUP BY {by} ORDER BY {by}"
    )


@dataclass(frozen=True)
class Merged:
    """One column's merged profile: its values (exact, or buckets' representatives)."""

    rows: int
    n: int
    nulls: int
    total: float
    low: float
    high: float
    #: Sorted distinct values and how many of each.
    points: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(cls, row: dict[str, Any]) -> Merged:
        keys, counts = np.asarray(row["merged_keys"]), np.asarray(row["merged_counts"])
        exact, exact_counts = np.asarray(row["exact_values"]), np.asarray(row["exact_counts"])
        low, high = float(row["low"]), float(row["high"])
        if len(keys):  # some window was bucketed: the exact values join their buckets
            alpha = float(row["alpha"])
            every = np.concatenate([keys, bucket_keys(exact, alpha)]).astype(np.int64)
            keys, inverse = np.unique(every, return_inverse=True)
            weights = np.zeros(len(keys), dtype=np.int64)
            np.add.at(weights, inverse, np.concatenate([counts, exact_counts]).astype(np.int64))
            points = np.clip(bucket_values(keys, alpha), low, high)
        else:
            points, weights = exact.astype(np.float64), exact_counts.astype(np.int64)
        return cls(
            rows=int(row["all_rows"]),
            n=int(row["present"]),
            nulls=int(row["missing"]),
            total=float(row["total"]),
            low=low,
            high=high,
            points=points,
            weights=weights,
        )

    def grid(self) -> np.ndarray:
        """The quantiles at (k − 0.5) / GRID, picked as the drift statement picks them."""
        if self.n == 0:
            return np.full(GRID, np.nan)
        levels = (np.arange(1, GRID + 1) - 0.5) / GRID
        rank = np.minimum(np.floor(levels * self.n).astype(np.int64), self.n - 1) + 1
        at = np.searchsorted(np.cumsum(self.weights), rank, side="left")
        return self.points[at]

    def at_most(self, edges: np.ndarray) -> np.ndarray:
        """Values ≤ each edge."""
        cumulative = np.concatenate([[0], np.cumsum(self.weights)])
        return cumulative[np.searchsorted(self.points, edges, side="right")]


def _ks(current: np.ndarray, reference: np.ndarray) -> float:
    """The drift statement's KS: the larger gap of either grid's CDF read at the other's."""

    def gap(other: np.ndarray, grid: np.ndarray) -> float:
        below = np.searchsorted(np.sort(other), grid, side="right")
        own = np.searchsorted(grid, grid, side="right")  # sorted: a value's last position
        return float(np.max(np.abs(below - own))) / GRID

    return max(gap(current, reference), gap(reference, current))


def profile_statistics(
    merged: Merged, reference: dict[str, Any], value_range: tuple[float, float] | None
) -> dict[str, float]:
    """Every statistic of :data:`STATISTICS` from a merged profile and a reference profile."""
    n = merged.n
    ref_counts = np.asarray(reference["counts"], dtype=np.float64)
    edges = np.asarray(reference["edges"], dtype=np.float64)
    ref_grid = np.asarray(reference["grid"], dtype=np.float64)
    std = max(float(reference["std"]), 1e-12)
    cumulative = np.concatenate([merged.at_most(edges), [n]])
    counts = np.diff(np.concatenate([[0], cumulative])).astype(np.float64)
    cur = counts / max(n, 1)
    exp = ref_counts / max(ref_counts.sum(), 1)
    a, e = np.maximum(cur, _FLOOR), np.maximum(exp, _FLOOR)
    with np.errstate(divide="ignore", invalid="ignore"):
        half_a = np.where(cur > 0, cur * np.log2(2 * cur / (cur + exp)), 0.0)
        half_e = np.where(exp > 0, exp * np.log2(2 * exp / (cur + exp)), 0.0)
    grid = merged.grid()
    picks = [int(q * GRID) for q in QUANTILE_SHIFT_LEVELS]
    low, high = value_range or (float(reference["min"]), float(reference["max"]))
    values = merged.points
    outside = 0
    if n:
        if merged.low < low:
            outside += int(merged.weights[values < low].sum())
        if merged.high > high:
            outside += int(merged.weights[values > high].sum())
    mean = merged.total / n if n else float("nan")
    return {
        "psi": float(np.sum((a - e) * np.log(a / e))),
        "js": float(np.sqrt(max(0.0, 0.5 * half_a.sum() + 0.5 * half_e.sum()))),
        "ks": _ks(grid, ref_grid) if n else float("nan"),
        "wasserstein": float(np.mean(np.abs(grid - ref_grid))),
        "mean_shift": abs(mean - float(reference["mean"])) / std,
        "quantile_shift": float(np.max(np.abs(grid[picks] - ref_grid[picks]))) / std,
        "null_rate": merged.nulls / max(merged.rows, 1),
        "out_of_range": outside / max(n, 1),
    }
