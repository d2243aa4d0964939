"""Monitoring: watched columns, thresholds, references, accuracy, health."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    Field,
    model_validator,
)

from mlexec.topologies.schema.common import Duration, _Model

__all__ = [
    "Accuracy",
    "FileReference",
    "Health",
    "ModelReference",
    "Monitoring",
    "Multivariate",
    "Profiles",
    "RangeReference",
    "Reference",
    "STATISTICS",
    "Segments",
    "Thresholds",
    "Watched",
]


# -------------------------------------------------------------------- monitoring

#: What a watched value can be judged by; every one is "higher is worse".
#: Drift against the reference: population stability index, Kolmogorov–Smirnov
#: statistic, Jensen–Shannon distance (base 2), Wasserstein-1 distance, the shift of
#: the mean and of the 5/25/50/75/95 % quantiles in reference standard deviations.
#: Quality of the current window alone: the share of missing (NaN) values and of values
#: outside the declared range (default: the reference's minimum to maximum).
STATISTICS = (
    "psi",
    "ks",
    "js",
    "wasserstein",
    "mean_shift",
    "quantile_shift",
    "null_rate",
    "out_of_range",
)


class Thresholds(_Model):
    """Alert at ``warning`` and/or ``critical`` when the value reaches it.

    Or by the false alarms wanted: ``false_alarm_rate: 0.01`` puts the warning where an
    undrifted window of the same size reaches it 1 % of the time (the statistic's
    distribution under no drift, bootstrapped from the reference; drift and quality
    statistics only), ``critical_false_alarm_rate`` the critical one.
    """

    warning: float | None = Field(default=None, ge=0)
    critical: float | None = Field(default=None, ge=0)
    false_alarm_rate: float | None = Field(default=None, gt=0, lt=0.5)
    critical_false_alarm_rate: float | None = Field(default=None, gt=0, lt=0.5)

    @property
    def calibrated(self) -> bool:
        """Whether a threshold comes from a false-alarm rate (resolved per window size)."""
        return self.false_alarm_rate is not None or self.critical_false_alarm_rate is not None

    @model_validator(mode="after")
    def _some(self) -> Thresholds:
        if self.warning is None and self.critical is None and not self.calibrated:
            msg = (
                "'warning' and/or 'critical' (a number), or 'false_alarm_rate' (e.g. 0.01), "
                "found none"
            )
            raise ValueError(msg)
        if self.warning is not None and self.false_alarm_rate is not None:
            msg = "'warning' or 'false_alarm_rate', not both: the rate sets the warning"
            raise ValueError(msg)
        if self.critical is not None and self.critical_false_alarm_rate is not None:
            msg = "'critical' or 'critical_false_alarm_rate', not both"
            raise ValueError(msg)
        rates = (self.false_alarm_rate, self.critical_false_alarm_rate)
        if None not in rates and rates[1] >= rates[0]:  # type: ignore[operator]
            msg = (
                f"critical_false_alarm_rate ({rates[1]}) below false_alarm_rate ({rates[0]}): "
                "critical is the rarer"
            )
            raise ValueError(msg)
        if self.warning is not None and self.critical is not None and self.critical < self.warning:
            msg = f"critical ({self.critical}) at least warning ({self.warning})"
            raise ValueError(msg)
        return self

    def severity(self, value: float) -> str | None:
        """``critical``, ``warning`` or ``None`` for ``value``."""
        if self.critical is not None and value >= self.critical:
            return "critical"
        if self.warning is not None and value >= self.warning:
            return "warning"
        return None


class Watched(_Model):
    """One watched feature or output: the statistics to judge it by, with thresholds.

    With none declared it is judged by PSI (warning 0.1, critical 0.25).
    """

    #: The values expected, for ``out_of_range``; default: the reference's min to max.
    range: tuple[float, float] | None = None
    psi: Thresholds | None = None
    ks: Thresholds | None = None
    js: Thresholds | None = None
    wasserstein: Thresholds | None = None
    mean_shift: Thresholds | None = None
    quantile_shift: Thresholds | None = None
    null_rate: Thresholds | None = None
    out_of_range: Thresholds | None = None

    @model_validator(mode="after")
    def _ordered_range(self) -> Watched:
        if self.range is not None and self.range[0] > self.range[1]:
            msg = f"range: [low, high] with low <= high, found {list(self.range)}"
            raise ValueError(msg)
        return self

    def thresholds(self) -> dict[str, Thresholds]:
        """Statistic → thresholds, defaults applied."""
        declared = {s: t for s in STATISTICS if (t := getattr(self, s)) is not None}
        return declared or {"psi": Thresholds(warning=0.1, critical=0.25)}


class RangeReference(_Model):
    """The samples of a fixed event-time range ``[start, end)`` of the use case itself."""

    kind: Literal["range"]
    start: AwareDatetime
    end: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> RangeReference:
        if self.end <= self.start:
            msg = f"end after start, found {self.start.isoformat()} .. {self.end.isoformat()}"
            raise ValueError(msg)
        return self

    def name(self) -> str:
        return f"range:{self.start.isoformat()}/{self.end.isoformat()}"


class FileReference(_Model):
    """Rows from a Parquet or CSV file holding the watched columns (relative to the topology)."""

    kind: Literal["file"]
    path: str = Field(pattern=r"(?i)\.(parquet|csv)$")

    def name(self) -> str:
        return f"file:{self.path}"


class ModelReference(_Model):
    """The training data recorded for a model version (``mlexec monitor reference``)."""

    kind: Literal["model"]
    #: Default: the use case's ``model.version``.
    version: str | None = None

    def name(self) -> str:
        return f"model:{self.version}"


Reference = Annotated[RangeReference | FileReference | ModelReference, Field(discriminator="kind")]


class Accuracy(_Model):
    """Predictions against labels from ``<uc>.feedback``, per model version and variant."""

    #: The (scalar) model output compared with the label.
    output: str
    #: ``mae`` / ``rmse`` for values, ``error_rate`` (share of output != label) for classes.
    metric: Literal["mae", "rmse", "error_rate"] = "mae"
    thresholds: Thresholds
    #: Fewer labelled predictions than this in the window give no verdict.
    min_labels: int = Field(default=20, ge=1)
    #: Also estimate it before labels arrive: for ``error_rate`` from the class
    #: probabilities in ``probabilities`` (CBPE), for ``mae`` / ``rmse`` by a model of the
    #: error learned from ``features`` and the prediction (DLE); both fitted on the
    #: labelled samples of the reference range, judged as ``estimated_<metric>`` with
    #: the same thresholds.
    estimated: bool = False
    #: The output of class probabilities (per row, in class order), or of P(class 1).
    probabilities: str | None = None
    #: The label value of each probability, in order (default 0, 1, …).
    classes: tuple[float, ...] | None = None
    #: The numeric columns a regressor's error is learned from (default: every numeric
    #: feature of the samples).
    features: list[str] | None = None

    @model_validator(mode="after")
    def _estimable(self) -> Accuracy:
        if self.thresholds.calibrated:
            msg = (
                "thresholds: a number for accuracy (warning/critical); false_alarm_rate is "
                "for drift and quality statistics, whose no-drift distribution the reference gives"
            )
            raise ValueError(msg)
        if not self.estimated:
            return self
        if self.metric != "error_rate":  # a regressor's: learned from the features
            if self.probabilities is not None:
                msg = (
                    f"probabilities: class probabilities estimate a classifier's error_rate; "
                    f"metric {self.metric!r} is estimated from the features (drop it)"
                )
                raise ValueError(msg)
            return self
        if self.probabilities is None:
            msg = "probabilities: the output of class probabilities, for estimated: true"
            raise ValueError(msg)
        return self


class Segments(_Model):
    """Drift and accuracy per value of a column, besides over the whole window."""

    #: A column of the samples table: ``key``, a text or integer feature, ``model_version``.
    by: str
    #: Segments with fewer samples (labelled predictions) in the window are not judged.
    min_rows: int = Field(default=100, ge=1)
    #: At most this many segments per window are evaluated: the largest.
    largest: int = Field(default=200, ge=1, le=10_000)
    #: How many of the most drifting ``monitor show`` and the dashboard list.
    top: int = Field(default=10, ge=1)


class Multivariate(_Model):
    """Drift of the columns' joint distribution: the reference's PCA rebuilding a window."""

    #: The numeric columns taken together (default: every watched column).
    columns: list[str] | None = None
    #: The share of the standardised reference's variance the kept components explain.
    variance: float = Field(default=0.65, gt=0, lt=1)
    #: On the window's mean reconstruction error ÷ the reference's (1.0: alike).
    thresholds: Thresholds = Thresholds(warning=1.2, critical=1.5)


class Profiles(_Model):
    """The inference site sends mergeable profiles of the watched columns per window.

    Drift and quality are then computed from the profiles of every record (merged per
    site and over the evaluation window), not from the samples, so a thin link carries
    monitoring without carrying data; the samples stay optional (``sampling.rate: 0``).
    """

    #: The profile window (event time); it must divide the evaluation window.
    window: Duration = timedelta(minutes=5)
    #: A window is sent once the newest event time is this far past its end.
    lateness: Duration = timedelta(seconds=30)
    #: ... or once the input has been idle this long (wall clock).
    idle_close: Duration = timedelta(minutes=1)
    #: The histogram's relative accuracy: a value's bucket represents it within this share.
    accuracy: float = Field(default=0.005, gt=0, le=0.05)
    #: Also judge every site's own merged profiles (subject ``column @ site=<name>``).
    per_site: bool = True


class Health(_Model):
    """Thresholds on the runtime health the dataflows report."""

    #: Records behind the end of the raw (or reduced) topics.
    lag: Thresholds | None = None
    #: Dead letters per record read, over the evaluation window.
    deadletter_rate: Thresholds | None = None
    #: Inference latency p99 in milliseconds.
    latency_p99_ms: Thresholds | None = None
    #: Samples waiting in Kafka for the sample store.
    store_backlog: Thresholds | None = None

    @model_validator(mode="after")
    def _numbers(self) -> Health:
        for name in ("lag", "deadletter_rate", "latency_p99_ms", "store_backlog"):
            limits = getattr(self, name)
            if limits is not None and limits.calibrated:
                msg = (
                    f"{name}: a number (warning/critical); false_alarm_rate is for drift statistics"
                )
                raise ValueError(msg)
        return self


class Monitoring(_Model):
    """What ``mlexec monitor run`` watches for a use case, how often and against what."""

    #: How often a scheduled run evaluates.
    every: Duration = timedelta(minutes=1)
    #: The evaluation window: samples whose event time is in the last ``window``.
    window: Duration = timedelta(hours=1)
    #: Equal-frequency bins of the reference for PSI and Jensen–Shannon.
    bins: int = Field(default=10, ge=2, le=100)
    #: Fewer samples than this in the window give no drift or quality verdict.
    min_rows: int = Field(default=100, ge=1)
    #: Bootstrap windows drawn from the reference per window size, for the thresholds
    #: given as a false-alarm rate (the rarest rate needs a few of them past it).
    false_alarm_replicates: int = Field(default=1000, ge=50, le=10_000)
    reference: Reference | None = None
    watch: dict[str, Watched] = {}
    accuracy: Accuracy | None = None
    segments: Segments | None = None
    multivariate: Multivariate | None = None
    profiles: Profiles | None = None
    health: Health = Health()

    @model_validator(mode="after")
    def _reference_when_watching(self) -> Monitoring:
        drift = {"psi", "ks", "js", "wasserstein", "mean_shift", "quantile_shift"}
        for column, watched in self.watch.items():
            judged = set(watched.thresholds())
            rated = [s for s, t in watched.thresholds().items() if t.calibrated]
            if self.reference is None and rated:
                msg = (
                    f"reference: a reference to draw undrifted windows from, for the "
                    f"false_alarm_rate of watch.{column}.{rated[0]}, found none"
                )
                raise ValueError(msg)
            if self.reference is None and drift & judged:
                msg = (
                    f"reference: a reference (kind range, file or model) for the drift of "
                    f"watch.{column}, found none"
                )
                raise ValueError(msg)
            if self.reference is None and "out_of_range" in judged and watched.range is None:
                msg = (
                    f"watch.{column}.range: [low, high] for out_of_range (or a reference, whose "
                    "min and max are the default), found neither"
                )
                raise ValueError(msg)
        if self.profiles is not None:
            if not self.watch:
                msg = "profiles: watched columns to profile (watch: {...}), found none"
                raise ValueError(msg)
            if self.window % self.profiles.window:
                msg = (
                    f"profiles.window: a duration that divides the evaluation window "
                    f"({self.window}), found {self.profiles.window}"
                )
                raise ValueError(msg)
        if self.multivariate is not None:
            if self.multivariate.thresholds.calibrated:
                msg = "multivariate.thresholds: a number (warning/critical), not a false-alarm rate"
                raise ValueError(msg)
            if self.reference is None:
                msg = "reference: a reference to fit the multivariate drift's components on"
                raise ValueError(msg)
            if len(self.multivariate.columns or self.watch) < 2:
                msg = (
                    "multivariate.columns: two or more numeric columns taken together "
                    f"(default: the watched ones), found {list(self.multivariate.columns or self.watch)}"
                )
                raise ValueError(msg)
        if self.accuracy is not None and self.accuracy.estimated:
            if not isinstance(self.reference, RangeReference):
                msg = (
                    "reference: a range of labelled samples (kind range) to calibrate the "
                    f"estimated accuracy on, found {'none' if self.reference is None else self.reference.kind}"
                )
                raise ValueError(msg)
        return self
