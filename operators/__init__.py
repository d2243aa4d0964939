"""Operators: bytewax steps of a use case — pure logic and declared state, no clients."""

from mlexec.operators.dispatch import Dispatched, MicroBatchLogic
from mlexec.operators.infer import ModelError, OnnxModel, Predictions, describe_model
from mlexec.operators.parse import ParseResult, RecordParser
from mlexec.operators.records import DeadLetter, Records
from mlexec.operators.reduce import Reducer
from mlexec.operators.sample import Sampler
from mlexec.operators.windows import WindowLogic

__all__ = [
    "DeadLetter",
    "Dispatched",
    "MicroBatchLogic",
    "ModelError",
    "OnnxModel",
    "ParseResult",
    "Predictions",
    "RecordParser",
    "Records",
    "Reducer",
    "Sampler",
    "WindowLogic",
    "describe_model",
]
