"""Model execution: one onnxruntime session per model version, fed by its signature.

:func:`plan_feeds` decides, once, what each model input gets from a use case's columns:

- an input named in ``model.inputs: {input: [fields...]}`` gets those fields;
- else, when the model has several inputs, each gets the column named like it (the
  ColumnTransformer export: one ``[rows, 1]`` input per column);
- else the one input gets the declared features in their order (or, when it is named
  after a column and takes one value per row, that column).

Each input is cast to the element type the model declares. A value that cannot be
(a fraction or NaN for an integer input, a number out of its range, anything but 0/1
for a bool) makes its row a dead letter with the reason (:meth:`OnnxModel.admit`); a
string input gets text, a missing text as ``""``. A fixed batch size is served by
splitting a batch into pieces of that size, the last padded with copies of its last
row whose answers are dropped. :class:`OnnxModel` returns one array per output; ZipMap
outputs are ``[rows, classes]`` probabilities in the model's class order.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlexec.operators.records import Records
from mlexec.operators.signature import (
    DEFAULT_OPTIONS,
    ExecutionOptions,
    InputSpec,
    ModelError,
    OutputSpec,
    Signature,
    load_session,
    read_signature,
)
from mlexec.topologies.plan import UseCasePlan

__all__ = [
    "Feed",
    "ModelError",
    "ModelInfo",
    "OnnxModel",
    "Predictions",
    "describe_model",
    "execution_options",
    "model_for",
    "plan_feeds",
]

_NUMPY = {
    "float": np.float32,
    "double": np.float64,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}
_INTEGER = {"int64", "int32", "int16", "int8", "uint8"}


@dataclass(frozen=True)
class Feed:
    """What one model input gets: the columns, in order, cast to the input's type."""

    spec: InputSpec
    columns: tuple[str, ...]

    @property
    def checked(self) -> bool:
        """Whether some values may not cast (integers, bools): rows are admitted first."""
        integral = self.spec.element in _INTEGER or self.spec.element == "bool"
        return integral and self.spec.rank < 3

    def array(self, records: Records) -> np.ndarray:
        """The input tensor for ``records`` (assumed admitted)."""
        element = self.spec.element
        if self.spec.rank == 3:
            return np.asarray(records.columns[self.columns[0]], dtype=_NUMPY[element])
        if element == "string":
            cols = [_texts(records.columns[c]) for c in self.columns]
            x = np.stack(cols, axis=1) if len(cols) > 1 else cols[0].reshape(-1, 1)
        elif element in _INTEGER or element == "bool":
            x = np.nan_to_num(records.matrix(self.columns, np.float64), nan=0.0)
            x = x.astype(_NUMPY[element], copy=False)
        else:
            x = records.matrix(self.columns, _NUMPY[element])
        return x[:, 0] if self.spec.rank == 1 else x

    def problems(self, records: Records) -> dict[int, str]:
        """Rows whose values cannot be cast to this input's type, and why."""
        if not self.checked:
            return {}
        out: dict[int, str] = {}
        info = np.iinfo(_NUMPY[self.spec.element]) if self.spec.element in _INTEGER else None
        for c in self.columns:
            x = np.asarray(records.columns[c], dtype=np.float64)
            if info is not None:
                bad = ~np.isfinite(x) | (x != np.round(x)) | (x < info.min) | (x > info.max)
                want = f"an integer in [{info.min}, {info.max}]"
            else:
                bad = ~np.isin(x, (0.0, 1.0))
                want = "0 or 1 (false or true)"
            for i in np.flatnonzero(bad).tolist():
                out.setdefault(
                    i,
                    f"field {c!r}: model input {self.spec.name!r} takes {self.spec.element}, "
                    f"{want}; found {x[i]!r}",
                )
        return out


def _texts(column: np.ndarray) -> np.ndarray:
    if column.dtype == object:
        return np.asarray(["" if v is None else str(v) for v in column], dtype=object)
    return column.astype(str).astype(object)


def plan_feeds(
    signature: Signature,
    features: Sequence[str],
    kinds: Mapping[str, str],
    *,
    declared: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    what: str = "the model",
) -> tuple[Feed, ...]:
    """Which columns feed which input; refuses what cannot fit, saying what to change.

    ``features`` are the columns the use case gives, ``kinds`` their types (``str`` for
    text, anything else numeric), ``declared`` the topology's ``model.inputs``.
    """
    inputs = signature.inputs
    names = [i.name for i in inputs]
    if isinstance(declared, Mapping):
        unknown = [n for n in declared if n not in names]
        missing = [n for n in names if n not in declared]
        if unknown or missing:
            msg = (
                f"{what} has inputs {_list(i.describe() for i in inputs)}; model.inputs maps "
                f"{list(declared)}"
                + (f" (no such input: {unknown})" if unknown else "")
                + (f" (not fed: {missing})" if missing else "")
            )
            raise ModelError(msg)
        feeds = [Feed(i, tuple(declared[i.name])) for i in inputs]
    elif len(inputs) > 1:
        missing = [n for n in names if n not in features]
        if missing:
            msg = (
                f"{what} has {len(inputs)} inputs {_list(i.describe() for i in inputs)}; "
                f"the use case gives columns {list(features)}, none named {missing}: name the "
                "schema fields after the inputs, or map them with model.inputs: "
                "{input: [fields...]}"
            )
            raise ModelError(msg)
        feeds = [Feed(i, (i.name,)) for i in inputs]
    else:
        (spec,) = inputs
        if declared is None and spec.name in features and (spec.width or 1) == 1:
            columns: tuple[str, ...] = (spec.name,)
        else:
            columns = tuple(declared) if declared is not None else tuple(features)
        feeds = [Feed(spec, columns)]
    for feed in feeds:
        _check_feed(feed, features, kinds, what)
    _check_names(signature, feeds, what)
    batches = {f.spec.batch for f in feeds}
    if len(batches) > 1:
        msg = f"{what} fixes different batch sizes on its inputs: {sorted(batches, key=str)}"
        raise ModelError(msg)
    return tuple(feeds)


def _list(items: object) -> str:
    return ", ".join(str(i) for i in items)  # type: ignore[attr-defined]


def _check_feed(feed: Feed, features: Sequence[str], kinds: Mapping[str, str], what: str) -> None:
    spec = feed.spec
    where = f"{what} input {spec.describe()}"
    unknown = [c for c in feed.columns if c not in features]
    if unknown:
        msg = f"{where} would get {unknown}, which the use case does not give; its columns: {list(features)}"
        raise ModelError(msg)
    if spec.element not in _NUMPY and spec.element != "string":
        msg = (
            f"{where}: element type {spec.element} is not one mlexec feeds "
            "(float, double, float16, int8-64, uint8, bool, string)"
        )
        raise ModelError(msg)
    sequences = [c for c in feed.columns if kinds.get(c, "").startswith("sequence[")]
    if spec.rank == 3 or sequences:
        _check_sequence(feed, kinds, where)
        return
    if spec.rank not in (1, 2):
        msg = f"{where} has rank {spec.rank}; mlexec feeds [rows], [rows, columns] or [rows, steps, fields] inputs"
        raise ModelError(msg)
    if spec.rank == 1 and len(feed.columns) != 1:
        msg = f"{where} takes one value per row, the use case gives {len(feed.columns)}: {list(feed.columns)}"
        raise ModelError(msg)
    if spec.width is not None and spec.width != len(feed.columns):
        msg = (
            f"{where} takes {spec.width} columns per row, the use case gives "
            f"{len(feed.columns)}: {list(feed.columns)}"
        )
        raise ModelError(msg)
    for c in feed.columns:
        text = kinds.get(c) == "str"
        if text and spec.element != "string":
            msg = f"{where} takes numbers; field {c!r} is a str: declare it float/int or feed it to a string input"
            raise ModelError(msg)
        if not text and spec.element == "string":
            msg = f"{where} takes strings; column {c!r} is numeric: declare the field as str"
            raise ModelError(msg)


def _check_sequence(feed: Feed, kinds: Mapping[str, str], where: str) -> None:
    """A ``[rows, steps, fields]`` input takes one sequence column of that many of each."""
    kind = kinds.get(feed.columns[0], "") if len(feed.columns) == 1 else ""
    if feed.spec.rank != 3 or not kind.startswith("sequence["):
        msg = (
            f"{where} is a sequence [rows, steps, fields]: feed it the records of a window "
            "with reduction: {kind: sequence, fields: [...], length: steps} on a grouping "
            "dispatch (tumbling, sliding, session, count, on request)"
            if feed.spec.rank == 3
            else f"{where} takes [rows, columns]; a sequence column needs a [rows, steps, fields] input"
        )
        raise ModelError(msg)
    length, fields = (int(n) for n in kind[len("sequence[") : -1].split(","))
    _, steps, width = feed.spec.shape
    if steps is not None and steps != length:
        msg = f"{where} takes {steps} steps; the sequence reduction gives length {length}"
        raise ModelError(msg)
    if width is not None and width != fields:
        msg = f"{where} takes {width} fields per step; the sequence reduction gives {fields}"
        raise ModelError(msg)


def _check_names(signature: Signature, feeds: Sequence[Feed], what: str) -> None:
    names = signature.feature_names
    if names is None or len(feeds) != 1:
        return
    given = feeds[0].columns
    if tuple(names) != tuple(given):
        how = "in another order" if sorted(names) == sorted(given) else "other columns"
        msg = (
            f"{what} was trained on features {list(names)} (its metadata feature_names); the "
            f"use case feeds {how}: {list(given)}; order model.inputs (or the schema) as the "
            "model's features"
        )
        raise ModelError(msg)


@dataclass(frozen=True)
class ModelInfo:
    """What a model takes and gives, as the use case checks it."""

    signature: Signature

    @property
    def outputs(self) -> tuple[tuple[str, str, int | None], ...]:
        """(name, ``float``/``int``/``str``, values per row or ``None`` for one) per output."""
        return tuple((o.name, o.kind, o.width) for o in self.signature.outputs if not o.unsupported)

    def output(self, name: str) -> OutputSpec:
        return self.signature.output(name)


def describe_model(path: str | Path, options: ExecutionOptions = DEFAULT_OPTIONS) -> ModelInfo:
    """Inputs and outputs of the ONNX model at ``path``."""
    return ModelInfo(read_signature(path, options))


@dataclass
class Predictions:
    """A batch of model answers aligned with the records that produced them."""

    records: Records
    outputs: dict[str, np.ndarray]
    latency_ms: float


class OnnxModel:
    """One model version, running batches of records through its signature."""

    def __init__(
        self,
        path: str | Path,
        name: str,
        version: str,
        features: Sequence[str],
        *,
        kinds: Mapping[str, str] | None = None,
        inputs: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        outputs: Sequence[str] | None = None,
        options: ExecutionOptions = DEFAULT_OPTIONS,
    ) -> None:
        self.name = name
        self.version = version
        self.path = Path(path)
        self._session, self.signature = load_session(path, options)
        self.info = ModelInfo(self.signature)
        what = f"model {path}"
        self.feeds = plan_feeds(
            self.signature, list(features), kinds or {}, declared=inputs, what=what
        )
        self.features = [c for f in self.feeds for c in f.columns]
        known = [o.name for o in self.signature.outputs]
        wanted = list(outputs) if outputs is not None else known
        missing = [o for o in wanted if o not in known]
        if missing:
            msg = f"{what} has no output {missing}; its outputs: {known}"
            raise ModelError(msg)
        for name_ in wanted:
            spec = self.signature.output(name_)
            if spec.unsupported:
                msg = (
                    f"{what} output {name_!r} is {spec.unsupported}, which mlexec cannot "
                    "store or publish; name the outputs to serve with model.outputs "
                    f"(e.g. {[o.name for o in self.signature.outputs if not o.unsupported]})"
                )
                raise ModelError(msg)
        self.outputs = wanted
        self.batch = self.feeds[0].spec.batch
        self._checked = [f for f in self.feeds if f.checked]

    def admit(self, records: Records) -> tuple[Records, dict[int, str]]:
        """The rows the model can take, and why each other row cannot (by position)."""
        if not self._checked or not len(records):
            return records, {}
        problems: dict[int, str] = {}
        for feed in self._checked:
            for i, reason in feed.problems(records).items():
                problems.setdefault(i, reason)
        if not problems:
            return records, {}
        keep = np.ones(len(records), dtype=bool)
        keep[list(problems)] = False
        return records.take(keep), problems

    def __call__(self, records: Records) -> Predictions:
        """Run the model on ``records``; outputs of shape ``[rows, 1]`` become ``[rows]``."""
        feeds = {f.spec.name: f.array(records) for f in self.feeds}
        started = time.perf_counter()
        raw = self._run(feeds, len(records))
        latency = (time.perf_counter() - started) * 1000.0
        outputs = {}
        for name, value in zip(self.outputs, raw, strict=True):
            arr = np.asarray(value)
            if arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr[:, 0]
            outputs[name] = arr
        return Predictions(records=records, outputs=outputs, latency_ms=latency)

    def _run(self, feeds: dict[str, np.ndarray], rows: int) -> list[np.ndarray]:
        size = self.batch
        if size is None or rows == size or rows == 0:
            return [np.asarray(v) for v in self._session.run(self.outputs, feeds)]
        pieces: list[list[np.ndarray]] = []
        for start in range(0, rows, size):
            part = {}
            for name, x in feeds.items():
                chunk = x[start : start + size]
                if len(chunk) < size:  # pad the last piece with copies of its last row
                    pad = np.repeat(chunk[-1:], size - len(chunk), axis=0)
                    chunk = np.concatenate([chunk, pad])
                part[name] = chunk
            pieces.append([np.asarray(v) for v in self._session.run(self.outputs, part)])
        return [np.concatenate(parts)[:rows] for parts in zip(*pieces, strict=True)]


def execution_options(plan: UseCasePlan) -> ExecutionOptions:
    """The topology's ``model.threads``, ``optimization`` and ``providers``."""
    model = plan.usecase.model
    return ExecutionOptions(model.threads, model.optimization, tuple(model.providers))


def model_for(
    plan: UseCasePlan,
    path: str | Path | None = None,
    *,
    name: str | None = None,
    version: str | None = None,
) -> OnnxModel:
    """A version of ``plan``'s model (default: the topology's own file), fed as declared."""
    model = plan.usecase.model
    return OnnxModel(
        path if path is not None else model.path,
        name or model.name,
        version or model.version,
        plan.features,
        kinds=dict(plan.feature_kinds),
        inputs=plan.declared_inputs,
        outputs=model.outputs,
        options=execution_options(plan),
    )
