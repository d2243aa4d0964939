"""Connectors: everything that touches the outside — Kafka, the sample store, the broker.

The names below load on first use: a process that only supervises or mirrors does not
pay for the sample store's polars and pyarrow, nor for bytewax.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: Public name → the module that defines it.
_API = {
    "KafkaBatchSink": "mlexec.connectors.kafka",
    "KafkaBatchSource": "mlexec.connectors.batchsource",
    "LocalBroker": "mlexec.connectors.broker",
    "Outgoing": "mlexec.connectors.kafka",
    "SampleStore": "mlexec.connectors.samplestore",
    "SamplesTable": "mlexec.connectors.samplestore",
    "client_config": "mlexec.connectors.kafka",
    "ensure_topics": "mlexec.connectors.kafka",
    "local_broker": "mlexec.connectors.broker",
    "open_store": "mlexec.connectors.samplestore",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    msg = f"module 'mlexec.connectors' has no attribute {name!r}"
    raise AttributeError(msg)
