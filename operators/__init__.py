"""Operators: bytewax steps of a use case — pure logic and declared state, no clients.

The names below load on first use: a process that only acts on predictions does not
pay for onnx and onnxruntime.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: Public name → the module that defines it.
_API = {
    "DeadLetter": "mlexec.operators.records",
    "Dispatched": "mlexec.operators.dispatch",
    "MicroBatchLogic": "mlexec.operators.dispatch",
    "ModelError": "mlexec.operators.infer",
    "OnnxModel": "mlexec.operators.infer",
    "ParseResult": "mlexec.operators.parse",
    "Predictions": "mlexec.operators.infer",
    "RecordParser": "mlexec.operators.parse",
    "Records": "mlexec.operators.records",
    "Reducer": "mlexec.operators.reduce",
    "Sampler": "mlexec.operators.sample",
    "WindowLogic": "mlexec.operators.windows",
    "describe_model": "mlexec.operators.infer",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    msg = f"module 'mlexec.operators' has no attribute {name!r}"
    raise AttributeError(msg)
