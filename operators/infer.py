"""Model execution: one onnxruntime session per model version, fed numpy batches.

:func:`describe_model` reads a model's inputs and outputs without running it, so a
topology whose feature count or output kinds do not fit the model is refused before
anything starts. :class:`OnnxModel` runs a ``[rows, features]`` float32 batch and
returns one array per output, timed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mlexec.errors import MlexecError
from mlexec.operators.records import Records

__all__ = ["ModelError", "ModelInfo", "OnnxModel", "Predictions", "describe_model"]


class ModelError(MlexecError):
    """A model cannot be loaded or does not fit its use case."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model takes and gives: input name and width, outputs and their kinds."""

    input_name: str
    width: int | None
    #: (name, element type ``float``/``int``, columns or ``None`` for one value per row)
    outputs: tuple[tuple[str, str, int | None], ...]


_FLOAT_TYPES = {"tensor(float)", "tensor(double)", "tensor(float16)"}
_INT_TYPES = {"tensor(int64)", "tensor(int32)", "tensor(int8)", "tensor(uint8)", "tensor(bool)"}


def _session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    if not Path(path).is_file():
        msg = f"model file {path} does not exist"
        raise ModelError(msg)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        msg = f"onnxruntime cannot load {path}: {exc}"
        raise ModelError(msg) from exc


def _info(session: ort.InferenceSession, path: str | Path, input_name: str | None) -> ModelInfo:
    inputs = {i.name: i for i in session.get_inputs()}
    name = input_name or next(iter(inputs))
    if name not in inputs:
        msg = f"model {path} has no input {name!r}; its inputs: {sorted(inputs)}"
        raise ModelError(msg)
    shape = inputs[name].shape
    if len(shape) != 2:
        msg = f"model {path} input {name!r} must be [rows, features], found shape {shape}"
        raise ModelError(msg)
    width = shape[1] if isinstance(shape[1], int) else None
    outputs: list[tuple[str, str, int | None]] = []
    for out in session.get_outputs():
        if out.type in _FLOAT_TYPES:
            kind = "float"
        elif out.type in _INT_TYPES:
            kind = "int"
        else:
            msg = (
                f"model {path} output {out.name!r} has type {out.type}; mlexec needs tensors "
                "(for scikit-learn classifiers export with options={'zipmap': False})"
            )
            raise ModelError(msg)
        dims = out.shape
        if len(dims) == 1 or (len(dims) == 2 and dims[1] == 1):
            columns = None
        elif len(dims) == 2:
            columns = dims[1] if isinstance(dims[1], int) else -1
        else:
            msg = f"model {path} output {out.name!r} has shape {dims}; expected [rows] or [rows, k]"
            raise ModelError(msg)
        outputs.append((out.name, kind, columns))
    return ModelInfo(input_name=name, width=width, outputs=tuple(outputs))


def describe_model(path: str | Path, input_name: str | None = None) -> ModelInfo:
    """Inputs and outputs of the ONNX model at ``path``."""
    return _info(_session(path), path, input_name)


@dataclass
class Predictions:
    """A batch of model answers aligned with the records that produced them."""

    records: Records
    outputs: dict[str, np.ndarray]
    latency_ms: float


class OnnxModel:
    """One model version, running batches of feature columns."""

    def __init__(
        self,
        path: str | Path,
        name: str,
        version: str,
        features: Sequence[str],
        *,
        input_name: str | None = None,
        outputs: Sequence[str] | None = None,
        threads: int = 1,
    ) -> None:
        self.name = name
        self.version = version
        self.features = list(features)
        self._session = _session(path, threads)
        self.info = _info(self._session, path, input_name)
        if self.info.width is not None and self.info.width != len(self.features):
            msg = (
                f"model {path} takes {self.info.width} features, the use case gives "
                f"{len(self.features)}: {self.features}"
            )
            raise ModelError(msg)
        known = [o[0] for o in self.info.outputs]
        wanted = list(outputs) if outputs is not None else known
        missing = [o for o in wanted if o not in known]
        if missing:
            msg = f"model {path} has no output {missing}; its outputs: {known}"
            raise ModelError(msg)
        self.outputs = wanted

    def __call__(self, records: Records) -> Predictions:
        """Run the model on ``records``; outputs of shape ``[rows, 1]`` become ``[rows]``."""
        x = records.matrix(self.features)
        started = time.perf_counter()
        raw = self._session.run(self.outputs, {self.info.input_name: x})
        latency = (time.perf_counter() - started) * 1000.0
        outputs = {}
        for name, value in zip(self.outputs, raw, strict=True):
            arr = np.asarray(value)
            if arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr[:, 0]
            outputs[name] = arr
        return Predictions(records=records, outputs=outputs, latency_ms=latency)
