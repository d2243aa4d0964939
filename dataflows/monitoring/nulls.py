"""Thresholds by false-alarm rate: each statistic's distribution under no drift, per window size.

A fixed PSI or KS cut-off means something else at every window size: a window of 200
rows reaches PSI 0.1 by chance, one of 2 million never does though it shifted. With
``false_alarm_rate: r`` the threshold is the ``1 − r`` quantile of the statistic over
windows of the same size drawn from the reference itself (undrifted by construction):
``false_alarm_replicates`` bootstrap windows (rows drawn with replacement), evaluated by
the very drift statement the live windows go through (grouped by replicate), once per
reference and window size (two significant digits) and stored in
``mlexec_null_distributions``.

Windows larger than :data:`BOOTSTRAP_MAX` rows are bootstrapped at that size and the
quantile scaled by how the statistic's chance spread shrinks with size: ``1/n`` for PSI
(a χ² over n), ``1/√n`` for the others (around the reference's own rate for
``null_rate`` and ``out_of_range``). KS read off the 500-point quantile grids is
resolved to ~0.002, which at a million rows is coarser than its chance spread: there
the declared rate is an upper bound.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from mlexec.connectors.samplestore import SampleStore
from mlexec.monitoring.columns import arrow_table, ms, now_utc
from mlexec.monitoring.references import References
from mlexec.monitoring.sql import NULLS_TABLE, Segmenting, drift_sql, quote
from mlexec.topologies.plan import UseCasePlan
from mlexec.topologies.schema import STATISTICS, Monitoring, Thresholds

__all__ = [
    "BOOTSTRAP_MAX",
    "NullDistributions",
    "bootstrap_column",
    "effective_rows",
    "size_key",
    "threshold_at",
]

#: Windows of more rows are bootstrapped at this size, their quantiles scaled.
BOOTSTRAP_MAX = 5_000
#: How a statistic's chance spread shrinks with the window's rows: n ** -exponent.
_EXPONENT = {"psi": 1.0}
#: Statistics whose no-drift distribution is taken as a gamma (a scaled χ²).
_GAMMA = ("psi",)
#: Statistics whose chance values centre on the reference's own value, not on 0.
_CENTRED = ("null_rate", "out_of_range")


def _rated(mon: Monitoring) -> dict[str, list[str]]:
    """Per watched column, the statistics whose threshold is a false-alarm rate."""
    rated = {
        c: [s for s, t in w.thresholds().items() if t.calibrated] for c, w in mon.watch.items()
    }
    return {c: stats for c, stats in rated.items() if stats}


def _quantile(values: np.ndarray, level: float, statistic: str) -> float:
    """The ``level`` quantile of the bootstrapped values.

    PSI under no drift is a scaled χ² (a gamma): its tail quantile comes from the
    replicates' mean and variance (Wilson–Hilferty), far steadier than the few
    replicates past it; the others are read off the replicates themselves.
    """
    if statistic in _GAMMA and len(values) > 1:
        mean, var = float(np.mean(values)), float(np.var(values, ddof=1))
        if mean > 0 and var > 0:
            shape, scale = mean * mean / var, var / mean
            z = NormalDist().inv_cdf(level)
            c = 1.0 / (9.0 * shape)
            return shape * scale * max(0.0, 1.0 - c + z * math.sqrt(c)) ** 3
    # the smallest value reached by at most 1 − level of the replicates: for a statistic
    # of discrete values (KS off the quantile grids) the rate is then at most the declared
    ordered = np.sort(values)
    candidates = np.unique(ordered)
    reached = 1.0 - np.searchsorted(ordered, candidates, side="left") / len(ordered)
    fitting = candidates[reached <= 1.0 - level + 1e-12]
    return float(fitting[0]) if len(fitting) else float(np.nextafter(ordered[-1], np.inf))


def size_key(rows: int) -> int:
    """The window size a distribution is kept for: two significant digits, at most the cap."""
    n = min(max(int(rows), 1), BOOTSTRAP_MAX)
    digits = len(str(n)) - 2
    return n if digits <= 0 else round(n, -digits)


class NullDistributions:
    """The no-drift distributions of a site's watched statistics, bootstrapped once, stored."""

    def __init__(self, store: SampleStore, references: References) -> None:
        self.store = store
        self.references = references
        self._db = f"`{store.database}`"
        self._cache: dict[tuple[str, str, int], dict[tuple[str, str], np.ndarray]] = {}
        self._rows: dict[tuple[str, str], int] = {}

    def resolve(
        self, uc: UseCasePlan, mon: Monitoring, reference: str, column: str, statistic: str,
        rows: int, limits: Thresholds,
    ) -> Thresholds | None:  # fmt: skip
        """The thresholds of ``column``'s ``statistic`` for a window of ``rows``, or ``None``.

        ``None`` when no undrifted window can be drawn (an empty reference): no verdict.

        The reference is a sample too: a window of ``n`` rows against a reference of
        ``m`` varies like one of ``n·m / (n + m)`` rows against the exact distribution
        (the two-sample statistics' classical scaling), so the bootstrap draws windows of
        that effective size.
        """
        effective = effective_rows(rows, self._reference_rows(uc))
        at = size_key(effective)
        values = self._values(uc, mon, reference, at).get((column, statistic))
        if values is None or not len(values):  # nothing to draw from: no verdict
            return None

        def threshold(rate: float | None, fixed: float | None) -> float | None:
            if rate is None:
                return fixed
            return threshold_at(values, statistic, at, effective, rate)

        warning = threshold(limits.false_alarm_rate, limits.warning)
        critical = threshold(limits.critical_false_alarm_rate, limits.critical)
        if warning is not None and critical is not None:
            critical = max(critical, warning)
        return Thresholds(
            warning=warning if warning is not None or critical is not None else 0.0,
            critical=critical,
        )

    def _reference_rows(self, uc: UseCasePlan) -> int:
        key = self.references.reference_name(uc)
        if (uc.name, key) not in self._rows:
            source = self.references.reference_source(uc)
            found = self.store.query(f"SELECT count() AS n FROM {source}")["n"][0]
            self._rows[(uc.name, key)] = int(found)
        return self._rows[(uc.name, key)]

    def _values(
        self, uc: UseCasePlan, mon: Monitoring, reference: str, n: int
    ) -> dict[tuple[str, str], np.ndarray]:
        key = (uc.name, reference, n)
        if key in self._cache:
            return self._cache[key]
        stored = self.store.query(
            f"SELECT column, statistic, values FROM {self._db}.{NULLS_TABLE} FINAL "
            f"WHERE usecase = {quote(uc.name)} AND reference = {quote(reference)} AND n = {n}"
        )
        found = (
            {(c, s): np.asarray(v, dtype=np.float64) for c, s, v in stored.iter_rows()}
            if stored.height
            else {}
        )
        if not all((c, s) in found for c, rated in _rated(mon).items() for s in rated):
            found = self._bootstrap(uc, mon, reference, n)
        self._cache[key] = found
        return found

    def _bootstrap(
        self, uc: UseCasePlan, mon: Monitoring, reference: str, n: int
    ) -> dict[tuple[str, str], np.ndarray]:
        """``false_alarm_replicates`` windows of ``n`` rows drawn from the reference, evaluated."""
        source = self.references.reference_source(uc)
        total = self._reference_rows(uc)
        if total == 0:
            return {}
        replicates = mon.false_alarm_replicates
        seed = zlib.crc32(f"{uc.name}/{reference}/{n}".encode())
        found: dict[tuple[str, str], np.ndarray] = {}
        rows: list[dict[str, Any]] = []
        created = ms(now_utc())
        for col in _rated(mon):  # one column a statement: replicates × n values in memory
            drawn = bootstrap_column(
                self.store, source, total, uc.name, reference, col, mon.bins,
                mon.watch[col].range, n, replicates, seed, _rated(mon)[col],
            )  # fmt: skip
            for stat, values in drawn.items():
                found[(col, stat)] = values
                rows.append(
                    {
                        "usecase": uc.name,
                        "reference": reference,
                        "column": col,
                        "statistic": stat,
                        "n": n,
                        "values": [float(v) for v in values],
                        "created_at": created,
                    }
                )
        self.store.insert(NULLS_TABLE, arrow_table(rows, NULL_COLUMNS))
        return found


def bootstrap_column(
    store: SampleStore, source: str, total: int, usecase: str, reference: str, column: str,
    bins: int, value_range: tuple[float, float] | None, n: int, replicates: int, seed: int,
    statistics: Sequence[str] = STATISTICS,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Every statistic of ``column`` over windows drawn from the reference, sorted.

    ``replicates`` windows of ``n`` rows drawn with replacement from ``source``
    (``total`` rows), evaluated by the live drift statement grouped by replicate.
    """
    drawn = (
        f"(SELECT k.replicate AS replicate, r.`{column}` AS `{column}` FROM (SELECT "
        f"intDiv(number, {n}) AS replicate, cityHash64({seed}, number) % {total} AS "
        f"__row FROM numbers({replicates * n})) AS k INNER JOIN (SELECT `{column}`, "
        f"rowNumberInAllBlocks() AS __row FROM {source}) AS r ON k.__row = r.__row) "
        "AS drawn"
    )
    sql = drift_sql(
        drawn, store.database, usecase, reference, [column], bins, {column: value_range},
        Segmenting("replicate", 1, replicates), sample=n, statistics=statistics,
    )  # fmt: skip
    frame = store.query(sql)
    out = {}
    for stat in statistics:
        values = frame[f"c0_{stat}"].cast(float).to_numpy()
        out[stat] = np.sort(values[np.isfinite(values)])
    return out


def threshold_at(
    values: np.ndarray, statistic: str, drawn_at: int, rows: int, rate: float
) -> float:
    """The value an undrifted window of ``rows`` (effective) reaches at ``rate``.

    From the statistic's ``values`` over windows of ``drawn_at`` rows, scaled past it.
    """
    q = _quantile(values, 1.0 - rate, statistic)
    if rows <= drawn_at:
        return q
    base = float(np.median(values)) if statistic in _CENTRED else 0.0
    return base + (q - base) * (drawn_at / rows) ** _EXPONENT.get(statistic, 0.5)


def effective_rows(rows: int, reference_rows: int) -> int:
    """A window of ``rows`` against a reference of ``reference_rows``, as one against the truth."""
    m = reference_rows
    return max(1, round(rows * m / (rows + m))) if m else rows


def _null_columns() -> dict[str, Any]:
    import pyarrow as pa

    from mlexec.monitoring.columns import MS_TIME

    return {
        "usecase": pa.string(),
        "reference": pa.string(),
        "column": pa.string(),
        "statistic": pa.string(),
        "n": pa.uint64(),
        "values": pa.list_(pa.float64()),
        "created_at": MS_TIME,
    }


NULL_COLUMNS = _null_columns()
