"""Operators: bytewax steps of a use case — pure logic and declared state, no clients."""

from operators.dispatch import Dispatched, MicroBatchLogic
from operators.infer import ModelError, OnnxModel, Predictions, describe_model
from operators.parse import ParseResult, RecordParser
from operators.records import DeadLetter, Records
from operators.reduce import Reducer
from operators.sample import Sampler
from operators.windows import WindowLogic

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
