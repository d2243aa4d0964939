"""Monitoring as ClickHouse SQL: reference profiles, drift and quality, accuracy, alerts.

Everything that reads many rows is one SQL statement run where the samples are
(chDB or a ClickHouse server), never a Python loop over rows:

- a *reference profile* per watched column — count, missing values, mean, standard
  deviation, range, the inner edges of ``bins`` equal-frequency bins with the counts in
  each, and ``GRID`` quantiles at the mid-points ``(i - 0.5) / GRID`` — is computed once
  (:func:`profile_sql`, :func:`bin_counts_sql`) and stored in ``mlexec_references``;
- one statement per evaluation (:func:`drift_sql`) scans the window's samples for every
  watched column at once and computes each statistic from those aggregates and the
  stored profile (read by scalar subqueries):

  ======================  =====================================================
  ``psi``                 Σ (a − e) · ln(a / e) over the reference bins, shares
                          floored at 1e-6
  ``js``                  Jensen–Shannon distance, base 2, over the same bins
  ``ks``                  sup |F_cur − F_ref|, both CDFs read off the quantile
                          grids at every point of either (error ≤ 1 / GRID;
                          ties, as in a discrete column, count as one step)
  ``wasserstein``         mean |Q_cur(p) − Q_ref(p)| over the grid's levels
  ``mean_shift``          |mean_cur − mean_ref| / std_ref
  ``quantile_shift``      max over the 5/25/50/75/95 % quantiles of
                          |Q_cur − Q_ref| / std_ref
  ``null_rate``           missing (NaN) values / rows
  ``out_of_range``        values outside the range / values present
  ======================  =====================================================

This module builds SQL and judges results; ``dataflows.monitor`` runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from mlexec.topologies.plan import UseCasePlan
from mlexec.topologies.schema import STATISTICS, Thresholds

__all__ = [
    "ALERTS_TABLE",
    "DRIFT_TABLE",
    "FEEDBACK_COLUMNS",
    "GRID",
    "METRICS_TABLE",
    "SERVING_TABLE",
    "feedback_table",
    "reference_table",
    "NULLS_TABLE",
    "QUANTILE_SHIFT_LEVELS",
    "SEGMENT_MARK",
    "Segmenting",
    "REFERENCES_TABLE",
    "Alert",
    "accuracy_sql",
    "grids_sql",
    "grid_ks",
    "labelled_pairs",
    "training_sql",
    "variants_sql",
    "feedback_ddl",
    "reference_rows_ddl",
    "tables_ddl",
    "bin_counts_sql",
    "drift_sql",
    "judge",
    "profile_sql",
    "quote",
    "sql_time",
]

#: Quantiles kept of every reference and window, at levels (i − 0.5) / GRID.
GRID = 500
#: Quantiles are read off the sorted values, of at most this many per column (a fixed-seed
#: uniform sample beyond): exact up to it, CDF error ~ 1 / sqrt(GRID_SAMPLE) past it.
#: (ClickHouse's quantilesExact takes O(rows) per level: 22 s for 500 levels × 50
#: columns × 1 M rows here, against 1.3 s for sorting once.)
GRID_SAMPLE = 1_000_000
#: The quantiles ``quantile_shift`` compares.
QUANTILE_SHIFT_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)
_FLOOR = 1e-6

REFERENCES_TABLE = "mlexec_references"
#: Per reference, window size, column and statistic: its values over undrifted windows.
NULLS_TABLE = "mlexec_null_distributions"
#: Between a watched subject and its segment in a subject's name: ``f1 @ key=m-07``.
SEGMENT_MARK = " @ "


def feedback_table(uc: UseCasePlan) -> str:
    """The use case's labels table."""
    return "feedback_" + uc.table.removeprefix("samples_")


def reference_table(uc: UseCasePlan) -> str:
    """The use case's recorded reference rows (files, models' training data)."""
    return "reference_" + uc.table.removeprefix("samples_")


DRIFT_TABLE = "mlexec_drift"
ALERTS_TABLE = "mlexec_alerts"
METRICS_TABLE = "mlexec_metrics"
#: What each site's processes last said they serve: the topology digest, the routings.
SERVING_TABLE = "mlexec_serving"

#: The feedback table's columns: a label for a record id, or for a key at an event time.
FEEDBACK_COLUMNS: dict[str, str] = {
    "record_id": "String",
    "key": "String",
    "event_time": "DateTime64(3, 'UTC')",
    "label": "Float64",
    "received_at": "DateTime64(3, 'UTC')",
}


def quote(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_time(moment: datetime) -> str:
    """A ``DateTime64(3, 'UTC')`` literal, to the millisecond (as times are stored)."""
    return f"fromUnixTimestamp64Milli(toInt64({int(moment.timestamp() * 1000)}), 'UTC')"


def _ident(name: str) -> str:
    return "`" + name.replace("`", "\\`") + "`"


def _value(column: str) -> str:
    return f"toFloat64({_ident(column)})"


def _sorted(column: str, sample: int = GRID_SAMPLE) -> str:
    """The column's values present (NaN left out), sorted; sampled beyond ``sample``."""
    v = _value(column)
    return f"arraySort(groupArraySampleIf({int(sample)}, 1)({v}, NOT isNaN({v})))"


def _pick(values: str, levels: str) -> str:
    """The ``levels`` quantiles of sorted ``values``: the element at floor(level · n)."""
    return (  # no values (an empty window): NaN at every level, so the arrays still pair up
        f"if(empty({values}), arrayMap(q -> nan, {levels}), arrayMap(q -> {values}[least("
        f"length({values}), toUInt64(floor(q * length({values}))) + 1)], {levels}))"
    )


_GRID_LEVELS = f"arrayMap(k -> (k - 0.5) / {GRID}, range(1, {GRID + 1}))"


def profile_sql(source: str, columns: Sequence[str], bins: int) -> str:
    """Count, missing, mean, std, min, max, bin edges and the quantile grid per column.

    ``source`` is a table expression with a ``WHERE``, e.g. ``db.t FINAL WHERE ...``.
    One row; column ``i``'s results are named ``c{i}_<what>``.
    """
    edges = f"arrayMap(k -> k / {bins}, range(1, {bins}))"
    inner, outer = ["count() AS rows"], ["rows"]
    for i, col in enumerate(columns):
        v = _value(col)
        ok = f"NOT isNaN({v})"
        inner += [
            f"countIf({ok}) AS c{i}_n",
            f"avgIf({v}, {ok}) AS c{i}_mean",
            f"stddevPopIf({v}, {ok}) AS c{i}_std",
            f"minIf({v}, {ok}) AS c{i}_min",
            f"maxIf({v}, {ok}) AS c{i}_max",
            f"{_sorted(col)} AS c{i}_sorted",
        ]
        outer += [
            *(f"c{i}_{what}" for what in ("n", "mean", "std", "min", "max")),
            f"{_pick(f'c{i}_sorted', edges)} AS c{i}_edges",
            f"{_pick(f'c{i}_sorted', _GRID_LEVELS)} AS c{i}_grid",
        ]
    return f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM {source})"


def _cumulative(column: str, edges: str, bins: int) -> str:
    """Values ≤ each inner edge, then all values present: the cumulative bin counts."""
    v = _value(column)
    return (
        "["
        + ", ".join(f"countIf({v} <= ({edges})[{k}])" for k in range(1, bins))
        + f", countIf(NOT isNaN({v}))]"
    )


def _counts(cumulative: str) -> str:
    return f"arrayMap(k -> {cumulative}[k] - if(k = 1, 0, {cumulative}[k - 1]), arrayEnumerate({cumulative}))"


def bin_counts_sql(source: str, columns: Mapping[str, Sequence[float]]) -> str:
    """The count of values in each bin between the given inner edges, per column."""
    parts = []
    for i, (col, edges) in enumerate(columns.items()):
        literal = "[" + ", ".join(repr(float(e)) for e in edges) + "]"
        cum = _cumulative(col, literal, len(edges) + 1)
        parts.append(f"{_counts(cum)} AS c{i}_counts")
    return f"SELECT {', '.join(parts)} FROM {source}"


def drift_sql(
    source: str,
    database: str,
    usecase: str,
    reference: str,
    columns: Sequence[str],
    bins: int,
    ranges: Mapping[str, tuple[float, float] | None],
    segments: Segmenting | None = None,
    sample: int = GRID_SAMPLE,
    statistics: Sequence[str] = STATISTICS,
) -> str:
    """Every statistic of every column over ``source``, against the stored profile.

    One row: ``rows`` and, per column ``i``, ``c{i}_<statistic>``. With ``segments``
    one row per segment (``segment``): the largest, of at least its ``min_rows``.
    ``sample``: values kept for the quantile grid per row (a segment's reservoir);
    ``statistics``: which to compute (KS, O(GRID²) per row, is the costly one).
    """
    ref_table = f"{_ident(database)}.{REFERENCES_TABLE}"
    withs, inner, outer = [], ["count() AS rows"], ["rows"]
    if segments is not None:
        inner.insert(0, f"{segments.expression} AS segment")
        outer.insert(0, "segment")
    for i, col in enumerate(columns):
        profile = ("edges", "counts", "grid", "mean", "std", "min", "max")
        withs.append(
            f"(SELECT tuple({', '.join(profile)}) FROM {ref_table} FINAL "
            f"WHERE usecase = {quote(usecase)} AND reference = {quote(reference)} "
            f"AND column = {quote(col)}) AS r{i}"
        )
        withs += [f"r{i}.{k} AS r{i}_{what}" for k, what in enumerate(profile, start=1)]
        v = _value(col)
        ok = f"NOT isNaN({v})"
        low, high = ranges.get(col) or (f"r{i}_min", f"r{i}_max")
        inner += [
            f"countIf({ok}) AS c{i}_n",
            f"countIf(isNaN({v})) AS c{i}_nulls",
            f"countIf({ok} AND ({v} < {low} OR {v} > {high})) AS c{i}_outside",
            f"avgIf({v}, {ok}) AS c{i}_mean",
            f"{_counts(_cumulative(col, f'r{i}_edges', bins))} AS c{i}_counts",
            f"{_sorted(col, sample)} AS c{i}_sorted",
        ]
        cur = f"arrayMap(x -> x / greatest(c{i}_n, 1), c{i}_counts)"
        exp = f"arrayMap(x -> x / greatest(arraySum(r{i}_counts), 1), r{i}_counts)"
        floor = f"greatest(x, {_FLOOR})"
        psi = (
            f"arraySum(arrayMap((a, e) -> (a - e) * ln(a / e), "
            f"arrayMap(x -> {floor}, {cur}), arrayMap(x -> {floor}, {exp})))"
        )
        half = "if({p} > 0, {p} * log2(2 * {p} / ({p} + {q})), 0)"
        js = (
            f"sqrt(greatest(0, 0.5 * arraySum(arrayMap((a, e) -> {half.format(p='a', q='e')}, "
            f"{cur}, {exp})) + 0.5 * arraySum(arrayMap((a, e) -> {half.format(p='e', q='a')}, "
            f"{cur}, {exp}))))"
        )
        # both CDFs at each point of one grid: the other's by counting, its own by the
        # last position of the point's value (ties: a discrete column's grid repeats)
        cdf_gap = (
            "arrayMax(arrayMap((x, own) -> abs(arrayCount(y -> y <= x, {other}) - own) / {n}, "
            "{grid}, arrayReverseFill((k, last) -> last, arrayEnumerate({grid}), "
            "arrayMap(k -> k = length({grid}) OR {grid}[k + 1] != {grid}[k], "
            "arrayEnumerate({grid})))))"
        )
        ks = (
            f"greatest({cdf_gap.format(other=f'c{i}_grid', grid=f'r{i}_grid', n=GRID)}, "
            f"{cdf_gap.format(other=f'r{i}_grid', grid=f'c{i}_grid', n=GRID)})"
        )
        std = f"greatest(r{i}_std, 1e-12)"
        picks = ", ".join(str(int(q * GRID) + 1) for q in QUANTILE_SHIFT_LEVELS)
        computed = {
            "psi": psi,
            "js": js,
            "ks": ks,
            "wasserstein": f"arrayAvg(arrayMap((a, b) -> abs(a - b), c{i}_grid, r{i}_grid))",
            "mean_shift": f"abs(c{i}_mean - r{i}_mean) / {std}",
            "quantile_shift": (
                f"arrayMax(arrayMap(k -> abs(c{i}_grid[k] - r{i}_grid[k]), [{picks}])) / {std}"
            ),
            "null_rate": f"c{i}_nulls / greatest(rows, 1)",
            "out_of_range": f"c{i}_outside / greatest(c{i}_n, 1)",
        }
        outer += [
            f"c{i}_n",
            f"{_pick(f'c{i}_sorted', _GRID_LEVELS)} AS c{i}_grid",
            *(f"{computed[stat]} AS c{i}_{stat}" for stat in statistics),
        ]
    grouped = "" if segments is None else f" {segments.clauses()}"
    return (
        f"WITH {', '.join(withs)} SELECT {', '.join(outer)} "
        f"FROM (SELECT {', '.join(inner)} FROM {source}{grouped})"
    )


@dataclass(frozen=True)
class Segmenting:
    """Statistics per value of a column: the ``largest`` segments of ``min_rows`` or more."""

    column: str
    min_rows: int
    largest: int

    @property
    def expression(self) -> str:
        return f"toString({_ident(self.column)})"

    def clauses(self) -> str:
        return (
            f"GROUP BY segment HAVING count() >= {int(self.min_rows)} "
            f"ORDER BY count() DESC, segment LIMIT {int(self.largest)}"
        )


def accuracy_sql(
    samples: str, feedback: str, output: str, where: str, segments: Segmenting | None = None
) -> str:
    """Labelled predictions per model version and variant: count, MAE, RMSE, error rate.

    A label joins its prediction by record id, or by key and event time when it names no
    record id; the latest label of a record wins. With ``segments``, per segment too.
    """
    picked = f"model_version AS version, variant, {_value(output)} AS predicted"
    by = "version, variant"
    if segments is not None:
        picked += f", {segments.expression} AS segment"
        by += ", segment"
    pairs = labelled_pairs(samples, feedback, picked, where)
    having = "" if segments is None else f" HAVING labelled >= {int(segments.min_rows)}"
    return (
        f"SELECT {by}, count() AS labelled, avg(abs(predicted - label)) AS mae, "
        "sqrt(avg(pow(predicted - label, 2))) AS rmse, avg(predicted != label) AS error_rate "
        f"FROM ({pairs}) GROUP BY {by}{having} ORDER BY {by}"
    )


@dataclass(frozen=True)
class Alert:
    """A threshold crossed (or cleared): on ``mlexec.alerts`` and in the alerts table."""

    usecase: str
    #: drift, quality, accuracy or health
    kind: str
    #: The column, ``version/variant`` or health measure judged.
    subject: str
    statistic: str
    value: float
    threshold: float | None
    #: warning, critical, or resolved
    severity: str
    at: datetime
    window_start: datetime
    window_end: datetime
    reference: str = ""
    site: str = ""

    def message(self) -> str:
        if self.severity == "resolved":
            return f"{self.usecase}: {self.statistic} of {self.subject} back to {self.value:.4g}"
        return (
            f"{self.usecase}: {self.statistic} of {self.subject} is {self.value:.4g}, "
            f"{self.severity} at {self.threshold:.4g}"
        )

    def as_json(self) -> dict[str, object]:
        """The alert as a JSON object (times in epoch milliseconds)."""
        return {
            "kind": self.kind,
            "usecase": self.usecase,
            "site": self.site,
            "subject": self.subject,
            "statistic": self.statistic,
            "value": self.value,
            "threshold": self.threshold,
            "severity": self.severity,
            "reference": self.reference,
            "at": int(self.at.timestamp() * 1000),
            "window_start": int(self.window_start.timestamp() * 1000),
            "window_end": int(self.window_end.timestamp() * 1000),
            "message": self.message(),
        }


def judge(
    values: Mapping[tuple[str, str], float],
    thresholds: Mapping[tuple[str, str], Thresholds],
    previous: Mapping[str, str],
) -> list[tuple[str, str, float, float | None, str]]:
    """Threshold crossings as (subject, statistic, value, threshold, severity).

    Only changes are news: a severity is reported when it differs from ``previous``
    (``"subject/statistic"`` → severity), and ``resolved`` when a value that had one
    falls back under every threshold.
    """
    out = []
    for (subject, stat), value in values.items():
        limits = thresholds.get((subject, stat))
        if limits is None or value != value:  # NaN: no data to judge
            continue
        severity = limits.severity(value)
        before = previous.get(f"{subject}/{stat}")
        if severity is not None and severity != before:
            crossed = limits.critical if severity == "critical" else limits.warning
            out.append((subject, stat, value, crossed, severity))
        elif severity is None and before is not None:
            out.append((subject, stat, value, None, "resolved"))
    return out


def tables_ddl(database: str) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` for the monitoring tables shared by every use case.

    Profiles are replaced by a newer one of the same reference; drift results, alerts
    and runtime metrics are kept for 90 days from when they were recorded
    (``recorded_at``), so that a replayed past range (``monitor run --from``) keeps its
    history though its ``time`` is long ago. Tables made before that column get it.
    """
    db = _ident(database)
    recorded = "recorded_at DateTime64(3, 'UTC') DEFAULT now64(3)"
    keep = "TTL toDateTime(recorded_at) + INTERVAL 90 DAY"
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{REFERENCES_TABLE} (usecase LowCardinality(String), "
        "reference String, column String, rows UInt64, n UInt64, mean Float64, std Float64, "
        "min Float64, max Float64, edges Array(Float64), counts Array(UInt64), "
        "grid Array(Float64), created_at DateTime64(3, 'UTC')) "
        "ENGINE = ReplacingMergeTree(created_at) ORDER BY (usecase, reference, column)",
        f"CREATE TABLE IF NOT EXISTS {db}.{NULLS_TABLE} (usecase LowCardinality(String), "
        "reference String, column String, statistic LowCardinality(String), n UInt64, "
        "values Array(Float64), created_at DateTime64(3, 'UTC')) "
        "ENGINE = ReplacingMergeTree(created_at) ORDER BY (usecase, reference, column, statistic, n)",
        f"CREATE TABLE IF NOT EXISTS {db}.{DRIFT_TABLE} (time DateTime64(3, 'UTC'), "
        "usecase LowCardinality(String), column String, statistic LowCardinality(String), "
        "value Float64, severity LowCardinality(String), rows UInt64, "
        "window_start DateTime64(3, 'UTC'), window_end DateTime64(3, 'UTC'), reference String, "
        f"{recorded}) ENGINE = MergeTree ORDER BY (usecase, column, statistic, time) {keep}",
        f"CREATE TABLE IF NOT EXISTS {db}.{ALERTS_TABLE} (time DateTime64(3, 'UTC'), "
        "usecase LowCardinality(String), site LowCardinality(String), "
        "kind LowCardinality(String), subject String, statistic LowCardinality(String), "
        "value Float64, threshold Nullable(Float64), severity LowCardinality(String), "
        "window_start DateTime64(3, 'UTC'), window_end DateTime64(3, 'UTC'), "
        f"reference String, message String, {recorded}) "
        f"ENGINE = MergeTree ORDER BY (usecase, time) {keep}",
        f"CREATE TABLE IF NOT EXISTS {db}.{SERVING_TABLE} (time DateTime64(3, 'UTC'), "
        "site LowCardinality(String), part LowCardinality(String), topology String, "
        "models String) ENGINE = ReplacingMergeTree(time) ORDER BY (site, part) "
        "TTL toDateTime(time) + INTERVAL 90 DAY",
        f"CREATE TABLE IF NOT EXISTS {db}.{METRICS_TABLE} (time DateTime64(3, 'UTC'), "
        "site LowCardinality(String), part LowCardinality(String), "
        "usecase LowCardinality(String), name LowCardinality(String), value Float64) "
        "ENGINE = ReplacingMergeTree ORDER BY (site, part, usecase, name, time) "
        "TTL toDateTime(time) + INTERVAL 90 DAY",
        f"ALTER TABLE {db}.{DRIFT_TABLE} ADD COLUMN IF NOT EXISTS segment String DEFAULT ''",
        f"ALTER TABLE {db}.{DRIFT_TABLE} ADD COLUMN IF NOT EXISTS warning Nullable(Float64)",
        f"ALTER TABLE {db}.{DRIFT_TABLE} ADD COLUMN IF NOT EXISTS critical Nullable(Float64)",
        *(
            statement
            for table in (DRIFT_TABLE, ALERTS_TABLE)
            for statement in (
                f"ALTER TABLE {db}.{table} ADD COLUMN IF NOT EXISTS {recorded}",
                f"ALTER TABLE {db}.{table} MODIFY {keep}",
            )
        ),
    ]


def feedback_ddl(database: str, table: str, retention_seconds: int) -> str:
    """The labels of one use case, kept as long as its samples."""
    cols = ", ".join(f"{_ident(n)} {k}" for n, k in FEEDBACK_COLUMNS.items())
    return (
        f"CREATE TABLE IF NOT EXISTS {_ident(database)}.{_ident(table)} ({cols}) "
        "ENGINE = ReplacingMergeTree(received_at) ORDER BY (record_id, key, event_time) "
        f"TTL toDateTime(received_at) + INTERVAL {int(retention_seconds)} SECOND"
    )


def reference_rows_ddl(database: str, table: str, columns: Sequence[str]) -> list[str]:
    """A use case's recorded reference rows (a file's, a model's training data)."""
    name = f"{_ident(database)}.{_ident(table)}"
    return [
        f"CREATE TABLE IF NOT EXISTS {name} (reference String, recorded_at "
        "DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY reference",
        *(f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {_ident(c)} Float64" for c in columns),
    ]


def variants_sql(samples: str, output: str, where: str) -> str:
    """Per model version and variant: samples, batch latency p50/p99, mean output, its grid."""
    return (
        f"SELECT version, variant, samples, latency_p50_ms, latency_p99_ms, mean_output, "
        f"{_pick('sorted', _GRID_LEVELS)} AS grid FROM (SELECT model_version AS version, variant, "
        "count() AS samples, quantile(0.5)(inference_ms) AS latency_p50_ms, "
        f"quantile(0.99)(inference_ms) AS latency_p99_ms, avg({_value(output)}) AS mean_output, "
        f"{_sorted(output)} AS sorted FROM {samples} FINAL WHERE {where} "
        "GROUP BY version, variant) ORDER BY version, variant"
    )


def grids_sql(samples: str, output: str, where: str, by: str) -> str:
    """Per value of ``by`` (an expression, as ``key``): samples, mean output, its grid."""
    return (
        f"SELECT key, samples, mean_output, {_pick('sorted', _GRID_LEVELS)} AS grid FROM "
        f"(SELECT {by} AS key, count() AS samples, avg({_value(output)}) AS mean_output, "
        f"{_sorted(output)} AS sorted FROM {samples} FINAL WHERE {where} GROUP BY key) "
        "ORDER BY key"
    )


def labelled_pairs(samples: str, feedback: str, picked_columns: str, where: str) -> str:
    """Sampled predictions joined with their latest label (by record id, or key and time)."""
    labels = (
        f"SELECT record_id, key, event_time, argMax(label, received_at) AS label "
        f"FROM {feedback} GROUP BY record_id, key, event_time"
    )
    picked = (
        f"SELECT record_id, key, event_time, {picked_columns} FROM {samples} FINAL WHERE {where}"
    )
    return (
        f"SELECT s.*, f.label AS label FROM ({picked}) AS s INNER JOIN ({labels}) AS f "
        "ON s.record_id = f.record_id WHERE f.record_id != '' "
        f"UNION ALL SELECT s.*, f.label AS label FROM ({picked}) AS s INNER JOIN ({labels}) AS f "
        "ON s.key = f.key AND s.event_time = f.event_time WHERE f.record_id = ''"
    )


def training_sql(samples: str, feedback: str, features: Sequence[str]) -> str:
    """Labelled feature rows for training, one per record, in event-time order.

    A record sampled by several variants (production, canary, shadow) counts once: the
    features are the same, the labels too.
    """
    cols = ", ".join(_ident(f) for f in features)
    pairs = labelled_pairs(samples, feedback, cols, "variant != 'shadow'")
    firsts = ", ".join(f"any({_ident(f)}) AS {_ident(f)}" for f in features)
    return (
        f"SELECT record_id, any(event_time) AS event_time, {firsts}, any(label) AS label "
        f"FROM ({pairs}) GROUP BY record_id ORDER BY event_time, record_id"
    )


def grid_ks(a: Sequence[float], b: Sequence[float]) -> float:
    """The Kolmogorov–Smirnov distance of two distributions given as mid-point quantile grids."""
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not len(x) or not len(y):
        return float("nan")
    points = np.concatenate([x, y])
    fx = np.searchsorted(np.sort(x), points, side="right") / len(x)
    fy = np.searchsorted(np.sort(y), points, side="right") / len(y)
    return float(np.max(np.abs(fx - fy)))
