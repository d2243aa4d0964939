"""The model life cycle, and the use case that holds every section."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from mlexec.topologies.schema.common import Duration, _Model
from mlexec.topologies.schema.connectors import Connector, LogfileConnector
from mlexec.topologies.schema.dispatch import Condition, Dispatch, Input, PerRecord, Placement
from mlexec.topologies.schema.monitoring import Monitoring
from mlexec.topologies.schema.outputs import Output, Sampling
from mlexec.topologies.schema.reduction import (
    Aggregate,
    Identity,
    Model,
    OnnxReduction,
    Reduction,
    SequenceReduction,
)

__all__ = ["Lifecycle", "Training", "UseCase"]


# ---------------------------------------------------------------- model life cycle


class Training(_Model):
    """How ``mlexec train`` (or a retraining trigger) makes a new version."""

    #: ``module:function``: takes a polars DataFrame of sampled features and ``label``
    #: (plus ``event_time``), returns an ONNX model (``onnx.ModelProto``, bytes or a path).
    entrypoint: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    #: The latest share of the labelled rows (by event time) kept out to evaluate on.
    holdout: float = Field(default=0.2, gt=0.0, lt=1.0)
    #: Fewer labelled samples than this: no training.
    min_rows: int = Field(default=200, ge=10)
    #: A new version better than production starts as a canary on this share of keys
    #: (0: it stays a candidate for someone to promote).
    canary: float = Field(default=0.1, ge=0.0, lt=1.0)
    #: Alerts of these kinds (warning or critical) start a training, at most once per
    #: ``cooldown``.
    retrain_on: list[Literal["drift", "quality", "accuracy"]] = []
    cooldown: Duration = timedelta(hours=1)


class Lifecycle(_Model):
    """When the monitor promotes a canary or rolls it back, from their comparison.

    Errors are ``monitoring.accuracy``'s metric of its output against the labels.
    """

    #: Labelled samples each of the canary and production need before the policy acts.
    min_labels: int = Field(default=50, ge=1)
    #: Promote the canary when its error is lower than production's by at least this.
    promote_when_better_by: float | None = Field(default=0.0, ge=0.0)
    #: Roll the canary back when its error is higher than production's by more than this...
    rollback_when_worse_by: float | None = Field(default=0.0, ge=0.0)
    #: ...or when its predictions' distribution is this far (KS) from production's.
    rollback_when_distance_above: float | None = Field(default=None, gt=0.0, le=1.0)
    #: Samples each needs before the distribution is compared.
    min_samples: int = Field(default=200, ge=10)
    training: Training | None = None


class UseCase(_Model):
    """One model's whole use case, from raw topic to sample store."""

    input: Input
    #: Where the raw records come from; run on the ``connectors`` site by ``mlexec connect``.
    connectors: list[Connector] = []
    placement: Placement = Placement()
    dispatch: Dispatch
    reduction: Reduction = Identity(kind="identity")
    model: Model
    sampling: Sampling = Sampling()
    retention: Duration = timedelta(days=30)
    #: What ``retention`` counts from: when a sample is ``stored`` (history replayed
    #: today is kept as long as live samples), or its ``event`` time.
    retention_from: Literal["stored", "event"] = "stored"
    outputs: list[Output] = []
    monitoring: Monitoring | None = None
    lifecycle: Lifecycle | None = None

    @field_validator("retention")
    @classmethod
    def _retention_positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            msg = f"a retention of at least 1s, found {value}"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _connectors_fit_schema(self) -> UseCase:
        names: set[str] = set()
        for i, conn in enumerate(self.connectors):
            name = conn.name or conn.kind
            if name in names:
                msg = (
                    f"connectors.{i}.name: a name unique in the use case, found {name!r} twice "
                    "(name connectors of the same kind)"
                )
                raise ValueError(msg)
            names.add(name)
            if isinstance(conn, LogfileConnector) and conn.pattern is not None:
                given = set(re.compile(conn.pattern).groupindex) | set(conn.set)
                missing = [f for f in self.input.schema_ if f not in given]
                if missing:
                    msg = (
                        f"connectors.{i}.pattern: named groups (or 'set' values) for every "
                        f"schema field, found none for {missing}"
                    )
                    raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _lifecycle_judged_by_accuracy(self) -> UseCase:
        if self.lifecycle is not None and (
            self.monitoring is None or self.monitoring.accuracy is None
        ):
            msg = (
                "lifecycle: promotion, rollback and training compare errors against labels: "
                "declare monitoring.accuracy (the output and metric), found none"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _outputs_named_once(self) -> UseCase:
        names: set[str] = set()
        for i, out in enumerate(self.outputs):
            name = out.name or out.kind
            if name in names:
                msg = (
                    f"outputs.{i}.name: a name unique in the use case, found {name!r} twice "
                    "(name outputs of the same kind)"
                )
                raise ValueError(msg)
            names.add(name)
        return self

    @model_validator(mode="after")
    def _reduction_fits_schema(self) -> UseCase:
        numeric = {"float", "int", "bool"}

        def need_numeric(path: str, name: str) -> None:
            found = self.input.schema_.get(name)
            if found not in numeric:
                msg = (
                    f"{path}: a numeric input field (float, int, bool), "
                    f"found {found or 'no such field'!r} for {name!r}"
                )
                raise ValueError(msg)

        if isinstance(self.reduction, Aggregate):
            for name in self.reduction.fields:
                need_numeric(f"reduction.fields.{name}", name)
        if isinstance(self.reduction, OnnxReduction):
            for i, name in enumerate(self.reduction.inputs):
                need_numeric(f"reduction.inputs.{i}", name)
        if isinstance(self.reduction, SequenceReduction):
            for i, name in enumerate(self.reduction.fields):
                need_numeric(f"reduction.fields.{i}", name)
            if isinstance(self.dispatch, PerRecord):
                msg = (
                    "reduction: a sequence is the records of a group (a window, a count, a "
                    "session, a request, a micro-batch per key), found dispatch 'record'"
                )
                raise ValueError(msg)
            if self.reduction.stateful is not None:
                msg = "reduction.stateful: not for a sequence (its column is the whole sequence)"
                raise ValueError(msg)
        if isinstance(self.dispatch, Condition):
            need_numeric("dispatch.field", self.dispatch.field)
        return self
