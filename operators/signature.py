"""A model's signature, read from its graph, and the onnxruntime session that serves it.

The signature is the model contract: every input (name, element type, shape), every
output (kind, width, and for a ZipMap the class labels) and, where the exporter or the
data scientist recorded them, the feature names (``feature_names`` in the model's
metadata: a JSON list or comma-separated names).

Two exporter defaults are made servable without changing a prediction:

- a ZipMap output (``seq(map(label, float))``, skl2onnx's and onnxmltools' default for
  classifiers) is served as the tensor it zips — ``[rows, classes]`` probabilities in
  the model's class order — by turning the ZipMap node into an Identity of its input;
- a ``StringNormalizer`` (TF-IDF pipelines) names a locale, ``en_US.UTF-8`` by default;
  on a machine without it, onnxruntime cannot build the session, so the node is given
  ``C.UTF-8`` (always present with glibc) and the signature says so.

Execution providers are taken in the declared order where this onnxruntime has them;
the CPU provider is always the last fallback, and what was asked for but is missing is
noted in the signature (``mlexec validate`` prints it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from onnx import helper

from mlexec.errors import MlexecError

__all__ = [
    "DEFAULT_OPTIONS",
    "ELEMENTS",
    "ExecutionOptions",
    "InputSpec",
    "ModelError",
    "OutputSpec",
    "Signature",
    "load_session",
    "read_signature",
]


class ModelError(MlexecError):
    """A model cannot be loaded or does not fit its use case."""


#: ONNX tensor element types mlexec feeds, by the name ``describe`` uses.
ELEMENTS = {
    "tensor(float)": "float",
    "tensor(double)": "double",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}
_OUTPUT_KIND = {
    "float": "float",
    "double": "float",
    "float16": "float",
    "int64": "int",
    "int32": "int",
    "int16": "int",
    "int8": "int",
    "uint8": "int",
    "bool": "int",
    "string": "str",
}
_OPTIMIZATION = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
_PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
}
_FALLBACK_LOCALE = "C.UTF-8"


@dataclass(frozen=True)
class ExecutionOptions:
    """How onnxruntime runs a model: threads, graph optimisation, providers in order."""

    threads: int = 1
    optimization: str = "all"
    providers: tuple[str, ...] = ("cpu",)


#: CPU, one thread, every graph optimisation.
DEFAULT_OPTIONS = ExecutionOptions()


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, element type (``float``, ``int64``, ``string``, ...), shape."""

    name: str
    element: str
    #: Each dimension: a fixed size, or ``None`` (free, possibly named in the graph).
    shape: tuple[int | None, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def batch(self) -> int | None:
        """The fixed batch size, or ``None`` when the first dimension is free."""
        return self.shape[0] if self.shape else None

    @property
    def width(self) -> int | None:
        """Columns of a ``[rows, k]`` input (``None``: free); 1 for a ``[rows]`` input."""
        if self.rank == 1:
            return 1
        return self.shape[-1] if self.rank >= 2 else None

    def describe(self) -> str:
        dims = ", ".join("N" if i == 0 and d is None else "?" if d is None else str(d)
                         for i, d in enumerate(self.shape))  # fmt: skip
        return f"{self.name}: {self.element}[{dims}]"


@dataclass(frozen=True)
class OutputSpec:
    """One model output as mlexec serves it: ``float``/``int``/``str`` values per row."""

    name: str
    kind: str
    #: ``None``: one value per row; else values per row (``-1``: not fixed by the graph).
    width: int | None
    #: For a ZipMap output: the class labels, in the order of the probabilities.
    classes: tuple[str | int, ...] | None = None
    #: Why this output cannot be served (a sequence or map mlexec does not read), or "".
    unsupported: str = ""

    def describe(self) -> str:
        if self.unsupported:
            return f"{self.name}: {self.unsupported}"
        shape = "" if self.width is None else f"[{'?' if self.width < 0 else self.width}]"
        classes = f" classes {list(self.classes)}" if self.classes is not None else ""
        return f"{self.name}: {self.kind}{shape} per row{classes}"


@dataclass(frozen=True)
class Signature:
    """What a model takes and gives, read from its graph."""

    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    #: Feature names the model carries (metadata ``feature_names``), in input order.
    feature_names: tuple[str, ...] | None = None
    #: The execution providers the session runs on, in order.
    providers: tuple[str, ...] = ()
    #: What mlexec changed or could not honour to serve the model (locale, providers).
    notes: tuple[str, ...] = field(default=())

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        msg = f"no input {name!r}; its inputs: {[i.name for i in self.inputs]}"
        raise ModelError(msg)

    def output(self, name: str) -> OutputSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        msg = f"no output {name!r}; its outputs: {[o.name for o in self.outputs]}"
        raise ModelError(msg)


def _dims(shape: Any) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in (shape or []))


def _zipmaps(model: onnx.ModelProto) -> dict[str, tuple[str | int, ...]]:
    """Serve each graph output made by a ZipMap as its probability tensor; their labels."""
    outputs = {o.name: o for o in model.graph.output}
    labels: dict[str, tuple[str | int, ...]] = {}
    for node in model.graph.node:
        if node.op_type != "ZipMap" or node.output[0] not in outputs:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "classlabels_int64s" in attrs:
            classes: tuple[str | int, ...] = tuple(int(v) for v in attrs["classlabels_int64s"].ints)
        else:
            classes = tuple(v.decode() for v in attrs["classlabels_strings"].strings)
        name = node.output[0]
        node.op_type, node.domain = "Identity", ""
        del node.attribute[:]
        out = outputs[name]
        out.type.CopyFrom(
            helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, ["N", len(classes)])
        )
        labels[name] = classes
    return labels


def _set_locale(model: onnx.ModelProto, locale: str) -> list[str]:
    """Give every StringNormalizer ``locale``; the locales they named before."""
    before = []
    for node in model.graph.node:
        if node.op_type != "StringNormalizer":
            continue
        attrs = {a.name: a for a in node.attribute}
        if "locale" in attrs:
            before.append(attrs["locale"].s.decode())
            attrs["locale"].s = locale.encode()
        else:
            before.append("en_US.UTF-8 (the default)")
            node.attribute.append(helper.make_attribute("locale", locale))
    return before


def _providers(wanted: Sequence[str]) -> tuple[list[str], list[str]]:
    available = ort.get_available_providers()
    chosen, notes = [], []
    for name in wanted:
        full = _PROVIDER_NAMES.get(name.lower(), name)
        if full in available:
            if full not in chosen:
                chosen.append(full)
        else:
            notes.append(
                f"execution provider {full} is not available in this onnxruntime "
                f"(available: {', '.join(available)}); falling back"
            )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen, notes


def load_session(
    path: str | Path, options: ExecutionOptions = DEFAULT_OPTIONS
) -> tuple[ort.InferenceSession, Signature]:
    """The session serving the model at ``path``, and its signature."""
    if not Path(path).is_file():
        msg = f"model file {path} does not exist"
        raise ModelError(msg)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others for a bad file
        msg = f"{path} is not an ONNX model: {exc}"
        raise ModelError(msg) from exc
    classes = _zipmaps(model)
    providers, notes = _providers(options.providers)
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    so.graph_optimization_level = _OPTIMIZATION[options.optimization]
    try:
        session = _session(model, so, providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        if "Failed to construct locale" not in str(exc):
            msg = f"onnxruntime cannot load {path}: {_first_line(exc)}"
            raise ModelError(msg) from exc
        before = _set_locale(model, _FALLBACK_LOCALE)
        try:
            session = _session(model, so, providers)
        except Exception as again:  # noqa: BLE001 - the reason goes into the error
            msg = (
                f"onnxruntime cannot load {path}: its StringNormalizer needs locale "
                f"{', '.join(before)}, not installed here, and {_FALLBACK_LOCALE} did not "
                f"work either ({_first_line(again)}); install the locale (locale-gen)"
            )
            raise ModelError(msg) from again
        notes.append(
            f"StringNormalizer locale {', '.join(sorted(set(before)))} is not installed "
            f"here: served with {_FALLBACK_LOCALE} (its case mapping)"
        )
    return session, _signature(session, model, classes, notes)


def _session(
    model: onnx.ModelProto, so: ort.SessionOptions, providers: list[str]
) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), so, providers=providers)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _signature(
    session: ort.InferenceSession,
    model: onnx.ModelProto,
    classes: dict[str, tuple[str | int, ...]],
    notes: list[str],
) -> Signature:
    inputs = []
    for i in session.get_inputs():
        element = ELEMENTS.get(i.type)
        inputs.append(InputSpec(i.name, element or i.type, _dims(i.shape)))
    outputs = []
    for o in session.get_outputs():
        element = ELEMENTS.get(o.type)
        if element is None:
            outputs.append(OutputSpec(o.name, "", None, unsupported=f"{o.type} (not a tensor)"))
            continue
        dims = _dims(o.shape)
        # The first dimension is the batch; exporters sometimes fix it wrongly (LightGBM's
        # label says [1]), so only the others are read.
        rest = dims[1:]
        if not rest or rest == (1,):
            width = None
        elif len(rest) == 1:
            width = rest[0] if rest[0] is not None else -1
        else:
            outputs.append(
                OutputSpec(o.name, "", None, unsupported=f"{o.type} of rank {len(dims)}")
            )
            continue
        outputs.append(OutputSpec(o.name, _OUTPUT_KIND[element], width, classes.get(o.name)))
    return Signature(
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        feature_names=_feature_names(model),
        providers=tuple(session.get_providers()),
        notes=tuple(notes),
    )


def _feature_names(model: onnx.ModelProto) -> tuple[str, ...] | None:
    for prop in model.metadata_props:
        if prop.key != "feature_names":
            continue
        text = prop.value.strip()
        try:
            names = json.loads(text) if text.startswith("[") else text.split(",")
        except ValueError:
            return None
        return tuple(str(n).strip() for n in names if str(n).strip())
    return None


def read_signature(path: str | Path, options: ExecutionOptions = DEFAULT_OPTIONS) -> Signature:
    """The signature of the ONNX model at ``path`` (its session is built and dropped)."""
    return load_session(path, options)[1]
