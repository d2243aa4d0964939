"""Data connectors' reading side: CSV, log files, HTTP, SQL, Kafka and MQTT sources.

:func:`open_source` builds the source a topology's connector section declares, at the
state its checkpoint holds; :class:`connectors.runner.ConnectorRunner` drives it.
"""

from __future__ import annotations

from typing import Any

from mlexec.connectors.sources.base import RecordShaper, Source, SourceRecord
from mlexec.topologies.schema import (
    Connector,
    CsvConnector,
    HttpConnector,
    Input,
    KafkaConnector,
    LogfileConnector,
    MqttConnector,
    SqlConnector,
)

__all__ = ["RecordShaper", "Source", "SourceRecord", "open_source"]


def open_source(
    config: Connector,
    schema: Input,
    state: dict[str, Any] | None,
    *,
    kafka_conf: dict[str, Any],
    once: bool = False,
) -> Source:
    """The source for one connector section, resuming at ``state`` (``None``: first run).

    ``kafka_conf`` is the client configuration a ``kafka`` connector reads with when
    it names no cluster of its own.
    """
    shaper = RecordShaper(schema.schema_, schema.key, config.set, schema.nullable)
    if isinstance(config, CsvConnector):
        from mlexec.connectors.sources.csvfiles import CsvSource

        return CsvSource(config, shaper, state, once=once)
    if isinstance(config, LogfileConnector):
        from mlexec.connectors.sources.logfiles import LogfileSource

        return LogfileSource(config, shaper, state, once=once)
    if isinstance(config, HttpConnector):
        from mlexec.connectors.sources.http import HttpSource

        return HttpSource(config, shaper, state, once=once)
    if isinstance(config, SqlConnector):
        from mlexec.connectors.sources.sql import SqlSource

        return SqlSource(config, shaper, state, once=once)
    if isinstance(config, KafkaConnector):
        from mlexec.connectors.kafka import client_config
        from mlexec.connectors.sources.kafka import KafkaTopicSource

        conf = client_config(config.kafka) if config.kafka is not None else kafka_conf
        return KafkaTopicSource(config, shaper, state, conf, once=once)
    if isinstance(config, MqttConnector):
        from mlexec.connectors.sources.mqtt import MqttSource

        return MqttSource(config, shaper, state, key=schema.key, once=once)
    msg = f"unknown connector kind {config.kind!r}"  # pragma: no cover - the schema refuses it
    raise ValueError(msg)
