"""Connectors: everything that touches the outside — Kafka, the sample store, the broker."""

from mlexec.connectors.batchsource import KafkaBatchSource
from mlexec.connectors.broker import LocalBroker, local_broker
from mlexec.connectors.kafka import KafkaBatchSink, Outgoing, client_config, ensure_topics
from mlexec.connectors.samplestore import SamplesTable, SampleStore, open_store

__all__ = [
    "KafkaBatchSink",
    "KafkaBatchSource",
    "LocalBroker",
    "Outgoing",
    "SampleStore",
    "SamplesTable",
    "client_config",
    "ensure_topics",
    "local_broker",
    "open_store",
]
