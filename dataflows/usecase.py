"""A use case made ready to run: parser, reducer, model, sampler and samples table.

Building one checks everything a topology cannot check on its own — that the model
file loads, takes as many features as the reduction gives, has tensor outputs, that
``keep_when`` evaluates on those outputs and that no column name collides — and says
which YAML path to fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from connectors.samplestore import RESERVED_COLUMNS, SamplesTable
from operators.act import ActionFilter, ActionFilterError
from operators.emit import prediction_values
from operators.infer import ModelError, ModelInfo, OnnxModel, Predictions, describe_model
from operators.parse import RecordParser
from operators.records import Records
from operators.reduce import Reducer
from operators.sample import Sampler, SamplingError
from topologies.errors import TopologyError
from topologies.plan import UseCasePlan
from topologies.schema import Aggregate

__all__ = ["UseCaseRuntime", "samples_table"]


def _fail(source: str, uc: str, path: str, message: str) -> TopologyError:
    return TopologyError(f"{source}: usecases.{uc}.{path}: {message}")


def _columns(info: ModelInfo, outputs: list[str] | None) -> list[tuple[str, str]]:
    cols = []
    for name, kind, width in info.outputs:
        if outputs is not None and name not in outputs:
            continue
        scalar = "Float64" if kind == "float" else "Int64"
        cols.append((name, scalar if width is None else f"Array({scalar})"))
    return cols


def samples_table(plan: UseCasePlan, source: str = "<topology>") -> SamplesTable:
    """The samples table of a use case: reduced inputs, then model outputs."""
    model = plan.usecase.model
    try:
        info = describe_model(model.path, model.input_name)
    except ModelError as exc:
        raise _fail(source, plan.name, "model.path", str(exc)) from exc
    outputs = _columns(info, model.outputs)
    columns = [(f, "Float64") for f in plan.features] + outputs
    seen: set[str] = set(RESERVED_COLUMNS)
    for name, _ in columns:
        if name in seen:
            msg = (
                f"column {name!r} (a feature or model output) collides with another column "
                f"of the samples table; reserved: {sorted(RESERVED_COLUMNS)}"
            )
            raise _fail(source, plan.name, "model", msg)
        seen.add(name)
    return SamplesTable(
        name=plan.table,
        columns=tuple(columns),
        retention_seconds=int(plan.usecase.retention.total_seconds()),
    )


@dataclass
class UseCaseRuntime:
    """Everything one use case's dataflow steps call, checked against each other."""

    plan: UseCasePlan
    parser: RecordParser
    reducer: Reducer
    model: OnnxModel
    sampler: Sampler
    table: SamplesTable

    @classmethod
    def build(cls, plan: UseCasePlan, source: str = "<topology>") -> UseCaseRuntime:
        """Load the model and check the use case end to end; errors name the YAML path."""
        uc = plan.usecase
        table = samples_table(plan, source)
        try:
            model = OnnxModel(
                uc.model.path,
                uc.model.name,
                uc.model.version,
                plan.model_inputs,
                input_name=uc.model.input_name,
                outputs=uc.model.outputs,
            )
        except ModelError as exc:
            raise _fail(source, plan.name, "model", str(exc)) from exc
        fields = uc.reduction.fields if isinstance(uc.reduction, Aggregate) else None
        try:
            sampler = Sampler(uc.sampling.rate, uc.sampling.keep_when, plan.features)
            sampler.check(_example(plan, model))
        except SamplingError as exc:
            raise _fail(source, plan.name, "sampling.keep_when", f"expected {exc}") from exc
        _check_outputs(plan, model, source)
        return cls(
            plan=plan,
            parser=RecordParser(uc.input.schema_, uc.input.key, uc.input.time, uc.input.time_unit),
            reducer=Reducer(plan.name, fields),
            model=model,
            sampler=sampler,
            table=table,
        )


def _check_outputs(plan: UseCasePlan, model: OnnxModel, source: str) -> None:
    """Try each output's ``when`` on predictions shaped as the model makes them."""
    example = [
        orjson.loads(v) for v in prediction_values(_example(plan, model), model.name, model.version)
    ]
    for i, out in enumerate(plan.usecase.outputs):
        if out.source != "predictions":
            continue  # alerts have no fixed columns to try the condition on
        try:
            ActionFilter(out.when)(example)
        except ActionFilterError as exc:
            raise _fail(source, plan.name, f"outputs.{i}.when", f"expected {exc}") from exc


def _example(plan: UseCasePlan, model: OnnxModel) -> Predictions:
    """Two made-up rows run through the model, to try the sampling condition on."""
    rows = 2
    records = Records(
        record_ids=["example:0:0", "example:0:1"],
        ids=np.arange(rows, dtype=np.uint64),
        keys=["example", "example"],
        times=np.zeros(rows, dtype=np.int64),
        columns={f: np.zeros(rows) for f in plan.features},
    )
    return model(records)
