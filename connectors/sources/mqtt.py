"""MQTT source: sensor messages published to topic filters, into a use case's raw topic.

The client subscribes with QoS 1 on a persistent session (a fixed client id, clean
session off) and acknowledges a message only after the connector's runner has it in
Kafka and checkpointed (:meth:`MqttSource.committed`), so a crash before that makes the
MQTT broker deliver it again: at least once, nothing lost. Payloads are JSON objects;
the key may come from a segment of the topic (``plant/<machine>/telemetry``).
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from typing import Any

import orjson

from mlexec.connectors.sources.base import RecordShaper, SourceRecord
from mlexec.topologies.schema import MqttConnector

__all__ = ["MqttSource"]

_ONCE_IDLE = 1.0  # seconds without a message that end a --once pass


class MqttSource:
    """Messages from MQTT topic filters, acknowledged once committed."""

    behind_unit = "messages"

    def __init__(
        self,
        config: MqttConnector,
        shaper: RecordShaper,
        state: dict[str, Any] | None,
        *,
        key: str,
        once: bool = False,
    ) -> None:
        from mlexec.connectors.outputs import mqtt_client

        self.config = config
        broker = config.broker
        self.origin = f"mqtt://{broker.host}:{broker.port} {' '.join(config.topics)}"
        self._shaper = shaper
        self._key = key
        self._once = once
        self._queue: queue.Queue[Any] = queue.Queue()
        self._read: list[Any] = []  # handed on, not yet acknowledged
        self._seq = 0
        self._subscribed = threading.Event()
        digest = hashlib.sha256("|".join(config.topics).encode()).hexdigest()[:12]
        self._client = mqtt_client(broker, f"mlexec-{digest}", clean=False)
        self._client.manual_ack_set(True)
        self._client.on_message = lambda _c, _u, msg: self._queue.put(msg)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        if self._client.is_connected():
            self._subscribe()
        self._subscribed.wait(10.0)

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            self._subscribe()

    def _subscribe(self) -> None:
        self._client.subscribe([(t, self.config.qos) for t in self.config.topics])

    def state(self) -> dict[str, Any]:
        return {}  # the MQTT broker keeps the session: what is unacknowledged comes again

    def behind(self) -> int:
        return self._queue.qsize()

    def wait(self) -> float:
        return self.config.poll.total_seconds()

    def committed(self) -> None:
        """Acknowledge what the runner has in Kafka and checkpointed."""
        for msg in self._read:
            if msg.qos > 0:
                self._client.ack(msg.mid, msg.qos)
        self._read = []

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def read(self, limit: int) -> list[SourceRecord]:
        out: list[SourceRecord] = []
        timeout = _ONCE_IDLE if self._once else 0.0
        while len(out) < limit:
            try:
                msg = self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
            except queue.Empty:
                break
            timeout = 0.0
            self._read.append(msg)
            out.append(self._record(msg))
        return out

    def _record(self, msg: Any) -> SourceRecord:
        self._seq += 1
        position = f"{msg.topic}#{time.time_ns()}-{self._seq}"
        where = f"mqtt {msg.topic}"
        payload: bytes = msg.payload
        try:
            fields = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return SourceRecord(position, where, None, payload, f"not valid JSON: {exc}")
        if not isinstance(fields, dict):
            reason = f"expected a JSON object, found {type(fields).__name__}"
            return SourceRecord(position, where, None, payload, reason)
        segment = self.config.key_segment
        if segment is not None and self._key not in fields:
            parts = msg.topic.split("/")
            if segment >= len(parts):
                reason = f"topic {msg.topic!r} has no segment {segment} for the key"
                return SourceRecord(position, where, None, payload, reason)
            fields[self._key] = parts[segment]
        try:
            key, value = self._shaper.shape(fields)
        except ValueError as exc:
            return SourceRecord(position, where, None, payload, str(exc))
        return SourceRecord(position, where, key, value)
