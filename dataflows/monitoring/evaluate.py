"""Evaluation: one statement each for drift and quality, accuracy against labels, and health."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from mlexec.connectors.samplestore import SampleStore
from mlexec.monitoring.columns import (
    DRIFT_COLUMNS,
    MonitorError,
    arrow_table,
    monitoring_of,
    ms,
    num,
)
from mlexec.monitoring.dle import ErrorModel, fit_error_model
from mlexec.monitoring.estimate import Calibration, estimate, fit_calibration
from mlexec.monitoring.multivariate import Pca, error_sql, fit_pca
from mlexec.monitoring.nulls import NullDistributions
from mlexec.monitoring.profiles import Merged, merged_sql, profile_statistics
from mlexec.monitoring.references import References
from mlexec.monitoring.sql import (
    DRIFT_TABLE,
    METRICS_TABLE,
    REFERENCES_TABLE,
    SEGMENT_MARK,
    Alert,
    Segmenting,
    accuracy_sql,
    drift_sql,
    feedback_table,
    labelled_pairs,
    quote,
    sql_time,
)
from mlexec.topologies.plan import UseCasePlan
from mlexec.topologies.schema import (
    STATISTICS,
    Monitoring,
    RangeReference,
    Thresholds,
)

__all__ = ["Evaluation", "Evaluator"]

#: Reference rows (at most, a random choice) the multivariate drift's components are fitted on.
_PCA_ROWS = 200_000


@dataclass
class Evaluation:
    """One evaluation of one use case."""

    usecase: str
    window_start: datetime
    window_end: datetime
    rows: int = 0
    reference: str = ""
    #: (subject, statistic) → value: every statistic of every watched column, the accuracy
    #: metric per ``version/variant``, and ``("health", measure)`` for judged health
    values: dict[tuple[str, str], float] = field(default_factory=dict)
    #: per (model version, variant): labelled, mae, rmse, error_rate
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    #: measure → latest value
    health: dict[str, float] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    #: (subject, statistic) → the thresholds judged against
    thresholds: dict[tuple[str, str], Thresholds] = field(default_factory=dict)
    #: Why a part gave no verdict (too few rows, no reference yet).
    notes: list[str] = field(default_factory=list)


class Evaluator:
    """Drift, quality, accuracy and health of a use case over a window; written to ``mlexec_drift``."""

    def __init__(self, store: SampleStore, references: References) -> None:
        self.store = store
        self.references = references
        self.nulls = NullDistributions(store, references)
        self._db = f"`{store.database}`"
        #: (use case, reference) → the multivariate drift's components, the reference's error
        self._pcas: dict[tuple[str, str], tuple[Pca, float]] = {}
        #: (use case, reference) → per model version, the calibration of its estimate
        self._calibrations: dict[tuple[str, str], dict[str, Calibration]] = {}
        #: (use case, reference) → per model version, the learned error of its estimate
        self._error_models: dict[tuple[str, str], dict[str, ErrorModel]] = {}

    def evaluate(self, uc: UseCasePlan, now: datetime) -> Evaluation:
        """Drift, quality, accuracy and health of one use case over the window ending ``now``."""
        mon = monitoring_of(uc)
        start = now - mon.window
        ev = Evaluation(uc.name, start, now)
        where = f"event_time >= {sql_time(start)} AND event_time < {sql_time(now)}"
        if mon.watch:
            try:
                ev.reference = self.references.reference_name(uc)
                self.references.ensure_reference(uc, now)
            except MonitorError as exc:
                ev.notes.append(str(exc))
            else:
                if mon.profiles is not None:
                    self._drift_of_profiles(uc, mon, ev)
                else:
                    self._drift(uc, mon, ev, where)
                if mon.multivariate is not None and ev.rows >= mon.min_rows:
                    self._multivariate(uc, mon, ev, where)
        if mon.accuracy is not None:
            self._accuracy(uc, mon, ev, where)
            if mon.accuracy.estimated:
                self._estimated(uc, mon, ev, where)
        self._health(uc, mon, ev, now)
        self._write_drift(ev, now)
        return ev

    def _drift(
        self,
        uc: UseCasePlan,
        mon: Monitoring,
        ev: Evaluation,
        where: str,
    ) -> None:
        columns = list(mon.watch)
        ranges = {c: w.range for c, w in mon.watch.items()}
        source = f"{self._db}.`{uc.table}` FINAL WHERE {where}"
        sql = drift_sql(
            source, self.store.database, uc.name, ev.reference, columns, mon.bins, ranges
        )
        row = self.store.query(sql).row(0, named=True)
        ev.rows = int(row["rows"])
        if ev.rows < mon.min_rows:
            ev.notes.append(f"{ev.rows} samples in the window; drift needs {mon.min_rows}")
            return
        for i, col in enumerate(columns):
            for stat in STATISTICS:
                ev.values[(col, stat)] = num(row[f"c{i}_{stat}"])
            for stat, limits in mon.watch[col].thresholds().items():
                judged = self._limits(uc, mon, ev, col, stat, ev.rows, limits)
                if judged is not None:
                    ev.thresholds[(col, stat)] = judged
        segmenting = _segmenting(mon)
        if segmenting is None:
            return
        sql = drift_sql(
            source,
            self.store.database,
            uc.name,
            ev.reference,
            columns,
            mon.bins,
            ranges,
            segmenting,
        )
        for seg in self.store.query(sql).iter_rows(named=True):
            where_ = f"{SEGMENT_MARK}{segmenting.column}={seg['segment']}"
            for i, col in enumerate(columns):
                for stat in STATISTICS:
                    ev.values[(col + where_, stat)] = num(seg[f"c{i}_{stat}"])
                for stat, limits in mon.watch[col].thresholds().items():
                    judged = self._limits(uc, mon, ev, col, stat, int(seg["rows"]), limits)
                    if judged is not None:
                        ev.thresholds[(col + where_, stat)] = judged

    def _drift_of_profiles(self, uc: UseCasePlan, mon: Monitoring, ev: Evaluation) -> None:
        """Drift and quality from the window's profiles: all sites merged, and per site.

        The window is that of the last whole profile windows: ``monitoring.window`` back
        from the latest multiple of ``profiles.window`` (as profiles are aligned).
        """
        assert mon.profiles is not None
        size = mon.profiles.window
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        end = ev.window_end - (ev.window_end - epoch) % size
        start = end - mon.window
        db = self.store.database
        refs = self.store.query(
            f"SELECT column, edges, counts, grid, mean, std, min, max FROM {self._db}."
            f"{REFERENCES_TABLE} FINAL WHERE usecase = {quote(uc.name)} "
            f"AND reference = {quote(ev.reference)}"
        )
        reference = {r["column"]: r for r in refs.iter_rows(named=True)}
        passes = [False, True] if mon.profiles.per_site else [False]
        for by_site in passes:
            sql = merged_sql(db, uc.name, start, end, by_site=by_site)
            merged: dict[tuple[str, str], Merged] = {}
            for row in self.store.query(sql).iter_rows(named=True):
                at = (row["column"], row["site"] if by_site else "")
                held = merged.get(at)
                if held is not None:  # profiles of two accuracies: judge the larger part
                    ev.notes.append(f"{at[0]}: profiles of more than one accuracy in the window")
                    if held.rows >= int(row["all_rows"]):
                        continue
                merged[at] = Merged.of(row)
            if not by_site:
                ev.rows = max((m.rows for m in merged.values()), default=0)
                if ev.rows < mon.min_rows:
                    ev.notes.append(
                        f"{ev.rows} rows profiled in the window; drift needs {mon.min_rows}"
                    )
                    return
            for (col, site), profile in merged.items():
                if col not in mon.watch or col not in reference or profile.rows < mon.min_rows:
                    continue
                subject = col + (f"{SEGMENT_MARK}site={site}" if by_site else "")
                got = profile_statistics(profile, reference[col], mon.watch[col].range)
                for stat, value in got.items():
                    ev.values[(subject, stat)] = num(value)
                for stat, limits in mon.watch[col].thresholds().items():
                    judged = self._limits(uc, mon, ev, col, stat, profile.rows, limits)
                    if judged is not None:
                        ev.thresholds[(subject, stat)] = judged

    def _limits(
        self, uc: UseCasePlan, mon: Monitoring, ev: Evaluation, column: str, stat: str,
        rows: int, limits: Thresholds,
    ) -> Thresholds | None:  # fmt: skip
        """The thresholds judged: as declared, or from a false-alarm rate at ``rows``."""
        if not limits.calibrated:
            return limits
        judged = self.nulls.resolve(uc, mon, ev.reference, column, stat, rows, limits)
        if judged is None:
            ev.notes.append(f"{column}/{stat}: no undrifted window to draw from the reference")
        return judged

    def _multivariate(self, uc: UseCasePlan, mon: Monitoring, ev: Evaluation, where: str) -> None:
        """The window's PCA reconstruction error ÷ the reference's, as ``multivariate``."""
        multi = mon.multivariate
        assert multi is not None
        key = (uc.name, ev.reference)
        if key not in self._pcas:
            columns = list(multi.columns or mon.watch)
            source = self.references.reference_source(uc)
            listed = ", ".join(f"toFloat64(`{c}`) AS `{c}`" for c in columns)
            rows = self.store.query(
                f"SELECT {listed} FROM {source} ORDER BY rand() LIMIT {_PCA_ROWS}"
            )
            pca = fit_pca(rows.select(columns).to_numpy(), columns, multi.variance)
            reference_error = self.store.query(error_sql(pca, source))["error"][0]
            self._pcas[key] = (pca, float(reference_error))
        pca, reference_error = self._pcas[key]
        found = self.store.query(error_sql(pca, f"{self._db}.`{uc.table}` FINAL WHERE {where}"))
        error = float(found["error"][0])
        ratio = error / reference_error if reference_error > 1e-12 else float("nan")
        ev.values[("multivariate", "reconstruction")] = ratio
        ev.thresholds[("multivariate", "reconstruction")] = multi.thresholds

    def _accuracy(
        self,
        uc: UseCasePlan,
        mon: Monitoring,
        ev: Evaluation,
        where: str,
    ) -> None:
        acc = mon.accuracy
        assert acc is not None
        samples = f"{self._db}.`{uc.table}`"
        feedback = f"{self._db}.`{feedback_table(uc)}`"
        frame = self.store.query(accuracy_sql(samples, feedback, acc.output, where))
        for row in frame.iter_rows(named=True):
            ev.accuracy.append(row)
            if row["labelled"] >= acc.min_labels:
                subject = f"{row['version']}/{row['variant']}"
                ev.values[(subject, acc.metric)] = float(row[acc.metric])
                ev.thresholds[(subject, acc.metric)] = acc.thresholds
        segmenting = _segmenting(mon)
        if segmenting is None:
            return
        sql = accuracy_sql(samples, feedback, acc.output, where, segmenting)
        for row in self.store.query(sql).iter_rows(named=True):
            subject = (
                f"{row['version']}/{row['variant']}{SEGMENT_MARK}"
                f"{segmenting.column}={row['segment']}"
            )
            ev.values[(subject, acc.metric)] = float(row[acc.metric])
            ev.thresholds[(subject, acc.metric)] = acc.thresholds

    def _labelled_reference(self, uc: UseCasePlan, ref: RangeReference, picked: str) -> str:
        """The production samples of the reference range joined with their labels."""
        where = (
            f"event_time >= {sql_time(ref.start)} AND event_time < {sql_time(ref.end)} "
            "AND variant = 'production'"
        )
        samples, feedback = f"{self._db}.`{uc.table}`", f"{self._db}.`{feedback_table(uc)}`"
        return labelled_pairs(samples, feedback, picked, where)

    def _calibrations_of(
        self, uc: UseCasePlan, mon: Monitoring, ev: Evaluation
    ) -> dict[str, Calibration]:
        """Per model version, the estimate's calibration on the reference's labelled samples.

        Fitted once per reference on the production variant's samples of each version
        the reference range holds (a version's probabilities are its own).
        """
        acc, ref = mon.accuracy, mon.reference
        assert acc is not None and acc.probabilities is not None
        assert isinstance(ref, RangeReference)
        key = (uc.name, ref.name())
        if key in self._calibrations:
            return self._calibrations[key]
        pairs = self._labelled_reference(
            uc, ref, f"model_version AS version, `{acc.probabilities}` AS p"
        )
        frame = self.store.query(f"SELECT version, p, label FROM ({pairs}) ORDER BY version")
        needed = max(acc.min_labels, 100)
        fitted: dict[str, Calibration] = {}
        for (version,), group in frame.group_by(["version"], maintain_order=True):
            if group.height >= needed:
                p, labels = _probabilities(group["p"]), group["label"].to_numpy()
                try:
                    fitted[str(version)] = fit_calibration(p, labels, acc.classes)
                except ValueError as exc:  # e.g. classes that do not fit the probabilities
                    ev.notes.append(f"version {version}: no estimated accuracy: {exc}")
        if not fitted:
            ev.notes.append(
                f"{frame.height} labelled samples in the reference range; the estimated "
                f"accuracy is calibrated on at least {needed} of a version"
            )
            return fitted
        self._calibrations[key] = fitted
        return fitted

    def _error_models_of(
        self, uc: UseCasePlan, mon: Monitoring, ev: Evaluation, columns: tuple[str, ...]
    ) -> dict[str, ErrorModel]:
        """Per model version, its error learned on the reference's labelled samples (DLE)."""
        acc, ref = mon.accuracy, mon.reference
        assert acc is not None and isinstance(ref, RangeReference)
        key = (uc.name, ref.name())
        if key in self._error_models:
            return self._error_models[key]
        picked = ", ".join(f"toFloat64(`{c}`) AS `{c}`" for c in columns)
        pairs = self._labelled_reference(
            uc, ref, f"model_version AS version, {picked}, toFloat64(`{acc.output}`) AS predicted"
        )
        frame = self.store.query(f"SELECT * FROM ({pairs}) ORDER BY version, record_id")
        fitted: dict[str, ErrorModel] = {}
        for (version,), group in frame.group_by(["version"], maintain_order=True):
            try:
                fitted[str(version)] = fit_error_model(
                    group.select(columns).to_numpy(),
                    group["predicted"].to_numpy(),
                    group["label"].to_numpy(),
                    columns,
                )
            except ValueError as exc:
                ev.notes.append(f"version {version}: no estimated {acc.metric}: {exc}")
        if fitted:
            self._error_models[key] = fitted
        else:
            ev.notes.append(
                f"{frame.height} labelled samples in the reference range: no version's "
                f"error could be learned for the estimated {acc.metric}"
            )
        return fitted

    def _estimated_error(
        self, uc: UseCasePlan, mon: Monitoring, ev: Evaluation, where: str
    ) -> None:
        """A regressor's expected MAE and RMSE per version and variant, before labels (DLE)."""
        acc = mon.accuracy
        assert acc is not None
        columns = tuple(
            acc.features or [f for f in uc.features if uc.kind(f) in ("float", "int", "bool")]
        )
        models = self._error_models_of(uc, mon, ev, columns)
        if not models:
            return
        picked = ", ".join(f"toFloat64(`{c}`) AS `{c}`" for c in columns)
        frame = self.store.query(
            f"SELECT model_version AS version, variant, {picked}, toFloat64(`{acc.output}`) "
            f"AS predicted FROM {self._db}.`{uc.table}` FINAL WHERE {where} "
            "ORDER BY version, variant"
        )
        for (version, variant), group in frame.group_by(
            ["version", "variant"], maintain_order=True
        ):
            subject = f"{version}/{variant}"
            model = models.get(str(version))
            if model is None or group.height < mon.min_rows:
                why = (
                    f"no labelled reference samples of version {version}"
                    if model is None
                    else f"{group.height} samples; it needs {mon.min_rows}"
                )
                ev.notes.append(f"{subject}: no estimated {acc.metric}: {why}")
                continue
            got = model.estimate(group.select(columns).to_numpy(), group["predicted"].to_numpy())
            for name, value in got.items():
                ev.values[(subject, f"estimated_{name}")] = value
            ev.thresholds[(subject, f"estimated_{acc.metric}")] = acc.thresholds

    def _estimated(self, uc: UseCasePlan, mon: Monitoring, ev: Evaluation, where: str) -> None:
        """Accuracy, precision, recall, F1 and ROC AUC per version, before labels (CBPE)."""
        acc = mon.accuracy
        assert acc is not None
        if acc.metric != "error_rate":
            self._estimated_error(uc, mon, ev, where)
            return
        calibrations = self._calibrations_of(uc, mon, ev)
        if not calibrations:
            return
        frame = self.store.query(
            f"SELECT model_version AS version, variant, `{acc.probabilities}` AS p, "
            f"toFloat64(`{acc.output}`) AS predicted FROM {self._db}.`{uc.table}` FINAL "
            f"WHERE {where} ORDER BY version, variant"
        )
        for (version, variant), group in frame.group_by(
            ["version", "variant"], maintain_order=True
        ):
            subject = f"{version}/{variant}"
            calibration = calibrations.get(str(version))
            if calibration is None:
                ev.notes.append(
                    f"{subject}: no labelled reference samples of version {version} to "
                    "calibrate its estimated accuracy on"
                )
                continue
            if group.height < mon.min_rows:
                ev.notes.append(
                    f"{subject}: {group.height} samples; the estimated accuracy needs {mon.min_rows}"
                )
                continue
            got = estimate(_probabilities(group["p"]), group["predicted"].to_numpy(), calibration)
            for name, value in got.items():
                ev.values[(subject, f"estimated_{name}")] = value
            ev.thresholds[(subject, "estimated_error_rate")] = acc.thresholds

    def _health(
        self,
        uc: UseCasePlan,
        mon: Monitoring,
        ev: Evaluation,
        now: datetime,
    ) -> None:
        recent = now - max(mon.every * 3, timedelta(minutes=1))
        frame = self.store.query(
            f"SELECT site, part, name, argMax(value, time) AS value FROM {self._db}.{METRICS_TABLE} "
            f"WHERE usecase = {quote(uc.name)} AND time >= {sql_time(recent)} "
            "GROUP BY site, part, name"
        )
        for row in frame.iter_rows(named=True):
            name = row["name"]
            ev.health[name] = max(ev.health.get(name, 0.0), float(row["value"]))
        for name in ("lag", "deadletter_rate", "latency_p99_ms", "store_backlog"):
            limits = getattr(mon.health, name)
            if limits is not None and name in ev.health:
                ev.values[("health", name)] = ev.health[name]
                ev.thresholds[("health", name)] = limits

    def _write_drift(self, ev: Evaluation, now: datetime) -> None:
        rows = [
            (subject, stat, value)
            for (subject, stat), value in ev.values.items()
            if subject != "health" and value == value
        ]
        if not rows:
            return
        self.store.insert(
            DRIFT_TABLE,
            arrow_table(
                [
                    {
                        "time": ms(now),
                        "usecase": ev.usecase,
                        "column": col.split(SEGMENT_MARK)[0],
                        "segment": col.split(SEGMENT_MARK)[1] if SEGMENT_MARK in col else "",
                        "statistic": stat,
                        "value": value,
                        "severity": (
                            limits.severity(value)
                            if (limits := ev.thresholds.get((col, stat)))
                            else None
                        )
                        or "",
                        "rows": ev.rows,
                        "window_start": ms(ev.window_start),
                        "window_end": ms(ev.window_end),
                        "reference": ev.reference,
                        # the thresholds judged against (a false-alarm rate's, for this size)
                        "warning": limits.warning if limits else None,
                        "critical": limits.critical if limits else None,
                    }
                    for col, stat, value in rows
                ],
                DRIFT_COLUMNS,
            ),
        )


def _probabilities(column: pl.Series) -> np.ndarray:
    """``[rows, classes]`` from a list column, or ``[rows]`` from a column of P(class 1)."""
    if isinstance(column.dtype, pl.List | pl.Array):
        return np.array(column.to_list(), dtype=np.float64)
    return column.cast(pl.Float64).to_numpy()


def _segmenting(mon: Monitoring) -> Segmenting | None:
    if mon.segments is None:
        return None
    return Segmenting(mon.segments.by, mon.segments.min_rows, mon.segments.largest)
