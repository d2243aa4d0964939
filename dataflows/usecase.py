"""A use case made ready to run: parser, reducer, model, sampler and samples table.

Building one checks everything a topology cannot check on its own — that the model
file loads, takes as many features as the reduction gives, has tensor outputs, that
``keep_when`` evaluates on those outputs and that no column name collides — and says
which YAML path to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from mlexec.connectors.samplestore import RESERVED_COLUMNS, SamplesTable
from mlexec.errors import TopologyError
from mlexec.lifecycle.router import ModelRouter
from mlexec.operators.act import ActionFilter, ActionFilterError
from mlexec.operators.dispatch import Dispatched
from mlexec.operators.emit import prediction_values
from mlexec.operators.infer import (
    ModelError,
    ModelInfo,
    OnnxModel,
    Predictions,
    describe_model,
    execution_options,
    model_for,
)
from mlexec.operators.packages import PackageError
from mlexec.operators.parse import RecordParser
from mlexec.operators.records import Records
from mlexec.operators.reduce import Reducer, ReductionError
from mlexec.operators.sample import Sampler, SamplingError
from mlexec.topologies.plan import UseCasePlan
from mlexec.topologies.schema import (
    Aggregate,
    FileReference,
    MicroBatch,
    OnnxReduction,
    PerRecord,
    PythonReduction,
    SequenceReduction,
)

__all__ = ["UseCaseRuntime", "samples_table", "watchable_columns"]


def _fail(source: str, uc: str, path: str, message: str) -> TopologyError:
    return TopologyError(f"{source}: usecases.{uc}.{path}: {message}")


_STORED = {"float": "Float64", "int": "Int64", "bool": "Float64", "str": "String"}


def _stored(kind: str) -> str:
    """The sample store's type for a feature of ``kind``."""
    return "Array(Array(Float64))" if kind.startswith("sequence[") else _STORED[kind]


def _columns(info: ModelInfo, outputs: list[str] | None) -> list[tuple[str, str]]:
    cols = []
    for name, kind, width in info.outputs:
        if outputs is not None and name not in outputs:
            continue
        scalar = _STORED[kind]
        cols.append((name, scalar if width is None else f"Array({scalar})"))
    return cols


def samples_table(plan: UseCasePlan, source: str = "<topology>") -> SamplesTable:
    """The samples table of a use case: reduced inputs, then model outputs."""
    model = plan.usecase.model
    try:
        info = describe_model(model.path, execution_options(plan))
    except ModelError as exc:
        raise _fail(source, plan.name, "model.path", str(exc)) from exc
    outputs = _columns(info, model.outputs)
    columns = [(f, _stored(plan.kind(f))) for f in plan.features] + outputs
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
        retention_from=plan.usecase.retention_from,
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
    #: The versions serving (the topology's model until the registry says otherwise).
    router: ModelRouter

    @classmethod
    def build(cls, plan: UseCasePlan, source: str = "<topology>") -> UseCaseRuntime:
        """Load the model and check the use case end to end; errors name the YAML path."""
        uc = plan.usecase
        table = samples_table(plan, source)
        try:
            model = model_for(plan)
        except ModelError as exc:
            raise _fail(source, plan.name, "model", str(exc)) from exc
        _check_reference_order(plan, model, source)
        reducer = _reducer(plan, source)
        try:
            sampler = Sampler(uc.sampling.rate, uc.sampling.keep_when, plan.features)
            sampler.check(_example(plan, model))
        except SamplingError as exc:
            raise _fail(source, plan.name, "sampling.keep_when", f"expected {exc}") from exc
        _check_outputs(plan, model, source)
        _check_monitoring(plan, table, source)
        return cls(
            plan=plan,
            parser=RecordParser(
                uc.input.schema_,
                uc.input.key,
                uc.input.time,
                uc.input.time_unit,
                earliest_ms=int(uc.input.earliest_time.timestamp() * 1000),
                max_ahead_ms=int(uc.input.max_ahead.total_seconds() * 1000),
                # rules that hold records may dead-letter them later: keep their bytes
                keep_raw=not isinstance(uc.dispatch, PerRecord | MicroBatch),
                nullable=uc.input.nullable,
            ),
            reducer=reducer,
            model=model,
            sampler=sampler,
            table=table,
            router=ModelRouter(plan, model),
        )


def _reference_columns(path: str) -> list[str] | None:
    """The column names of a reference file, in order (``None``: not readable here)."""
    import polars as pl

    try:
        frame = pl.scan_parquet(path) if path.lower().endswith(".parquet") else pl.scan_csv(path)
        return list(frame.collect_schema().names())
    except Exception:  # noqa: BLE001 - a missing or bad file is the monitor's to report
        return None


def _check_reference_order(plan: UseCasePlan, model: OnnxModel, source: str) -> None:
    """Refuse an implicit feature order the reference (the training data) contradicts.

    Where ``model.inputs`` is not declared, the order of the one input's columns comes
    from the schema; a reference file holding every one of them in another order says
    the model was trained on that order, and feeding the schema's would be silently
    wrong.
    """
    monitoring = plan.usecase.monitoring
    reference = monitoring.reference if monitoring is not None else None
    if not isinstance(reference, FileReference) or plan.usecase.model.inputs is not None:
        return
    if len(model.feeds) != 1 or len(model.feeds[0].columns) < 2:
        return
    fed = list(model.feeds[0].columns)
    names = _reference_columns(reference.path)
    if names is None or not set(fed) <= set(names):
        return
    trained = [n for n in names if n in fed]
    if trained != fed:
        msg = (
            f"the reference {reference.path} (the training data) holds the features in the "
            f"order {trained}; the schema feeds them as {fed}: declare model.inputs in the "
            "model's order (or order the schema so)"
        )
        raise _fail(source, plan.name, "model.inputs", msg)


def _reducer(plan: UseCasePlan, source: str) -> Reducer:
    """The use case's reducer, tried on two made-up records; errors name the YAML path."""
    red = plan.usecase.reduction
    try:
        if isinstance(red, Aggregate):
            reducer = Reducer(plan.name, red.fields)
        elif isinstance(red, PythonReduction):
            reducer = Reducer(
                plan.name,
                entrypoint=red.entrypoint,
                columns=red.columns,
                package=red.package,
                sha256=red.sha256,
            )
        elif isinstance(red, SequenceReduction):
            reducer = Reducer(plan.name, sequence=(red.fields, red.length, red.pad))
        elif isinstance(red, OnnxReduction):
            reducer = Reducer(
                plan.name,
                premodel=red.path,
                inputs=red.inputs,
                columns=red.columns,
                input_name=red.input_name,
            )
        else:
            return Reducer(plan.name)
    except ReductionError as exc:
        where = "entrypoint" if isinstance(red, PythonReduction) else "path"
        if isinstance(exc.__cause__, PackageError):
            where = "package"
        raise _fail(source, plan.name, f"reduction.{where}", str(exc)) from exc
    schema = plan.usecase.input.schema_
    raw = [
        n
        for n, k in schema.items()
        if k in ("float", "int", "bool", "str")
        and n not in (plan.usecase.input.key, plan.usecase.input.time)
    ]
    rows = 2
    example = Records(
        record_ids=["example:0:0", "example:0:1"],
        ids=np.arange(rows, dtype=np.uint64),
        keys=["example", "example"],
        times=np.asarray([0, 1000], dtype=np.int64),
        columns={f: _made_up(schema[f], rows) for f in raw},
    )
    try:
        reducer(Dispatched(records=example))
    except ReductionError as exc:
        msg = f"the {red.kind} reduction fails on two made-up records: {exc}"
        raise _fail(source, plan.name, "reduction", msg) from exc
    return reducer


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


def watchable_columns(table: SamplesTable) -> list[str]:
    """The samples table's columns monitoring can watch: numeric features and scalar outputs."""
    return [name for name, kind in table.columns if kind in ("Float64", "Int64")]


def _check_monitoring(plan: UseCasePlan, table: SamplesTable, source: str) -> None:
    """Watched values and the accuracy output must be numeric scalar columns of the table."""
    monitoring = plan.usecase.monitoring
    if monitoring is None:
        return
    columns = watchable_columns(table)
    kinds = dict(table.columns)
    text = (
        "; text (a str field, class names) is not watched: watch numbers, e.g. class probabilities"
    )
    for name in monitoring.watch:
        if name not in columns:
            why = text if kinds.get(name) == "String" else ""
            msg = f"a numeric feature or scalar model output of {columns}, found {name!r}{why}"
            raise _fail(source, plan.name, f"monitoring.watch.{name}", msg)
    reference = monitoring.reference
    if isinstance(reference, FileReference) and monitoring.watch:
        names = _reference_columns(reference.path)
        if names is None:
            what = "does not exist" if not Path(reference.path).is_file() else "cannot be read"
            msg = f"the reference file {reference.path} {what} (Parquet or CSV with the watched columns)"
            raise _fail(source, plan.name, "monitoring.reference.path", msg)
        missing = [c for c in monitoring.watch if c not in names]
        if missing:
            msg = f"the reference file {reference.path} lacks watched columns {missing}; its columns: {names}"
            raise _fail(source, plan.name, "monitoring.reference.path", msg)
    accuracy = monitoring.accuracy
    outputs = [name for name in columns if name not in plan.features]
    if accuracy is not None and accuracy.output not in outputs:
        why = (
            "; labels are numbers, so class names cannot be compared with them yet: compare "
            "an int64-labelled export's label, or a probability"
            if kinds.get(accuracy.output) == "String"
            else ""
        )
        msg = f"a numeric scalar model output of {outputs}, found {accuracy.output!r}{why}"
        raise _fail(source, plan.name, "monitoring.accuracy.output", msg)
    multivariate = monitoring.multivariate
    for name in (multivariate.columns or []) if multivariate is not None else []:
        if name not in columns:
            msg = f"numeric features or scalar model outputs of {columns}, found {name!r}"
            raise _fail(source, plan.name, "monitoring.multivariate.columns", msg)
    segments = monitoring.segments
    if segments is not None:
        kinds_of = dict(table.all_columns())
        allowed = [
            n for n, k in kinds_of.items() if k in ("String", "LowCardinality(String)", "Int64")
        ]
        allowed = [n for n in allowed if n not in ("record_id", "sample_reason")]
        if segments.by not in allowed:
            msg = f"a text or integer column of the samples to segment by, one of {allowed}, found {segments.by!r}"
            raise _fail(source, plan.name, "monitoring.segments.by", msg)
    for name in (accuracy.features or []) if accuracy is not None else []:
        if name not in columns or name not in plan.features:
            features = [c for c in columns if c in plan.features]
            msg = f"numeric features of the samples to learn the error from, of {features}, found {name!r}"
            raise _fail(source, plan.name, "monitoring.accuracy.features", msg)
    if accuracy is not None and accuracy.probabilities is not None:
        found = kinds.get(accuracy.probabilities)
        if found not in ("Float64", "Array(Float32)", "Array(Float64)"):
            probable = [n for n, k in table.columns if k.startswith("Array(Float") or n in outputs]
            msg = (
                "the output of class probabilities (a row of floats per record) or of P(class 1), "
                f"one of {probable}, found {accuracy.probabilities!r}"
            )
            raise _fail(source, plan.name, "monitoring.accuracy.probabilities", msg)


def _example(plan: UseCasePlan, model: OnnxModel) -> Predictions:
    """Two made-up rows run through the model, to try the sampling condition on."""
    rows = 2
    records = Records(
        record_ids=["example:0:0", "example:0:1"],
        ids=np.arange(rows, dtype=np.uint64),
        keys=["example", "example"],
        times=np.zeros(rows, dtype=np.int64),
        columns={f: _made_up(plan.kind(f), rows) for f in plan.features},
    )
    return model(records)


def _made_up(kind: str, rows: int) -> np.ndarray:
    """A column of ``rows`` neutral values of ``kind`` (text: ``""``, numbers: 0)."""
    if kind.startswith("sequence["):  # sequence[<length>,<fields>]
        length, fields = (int(n) for n in kind[len("sequence[") : -1].split(","))
        return np.zeros((rows, length, fields))
    return np.full(rows, "", dtype=object) if kind == "str" else np.zeros(rows)
