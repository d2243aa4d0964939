"""Kafka source: bring records from an existing topic (this cluster or another) into a use case.

Partitions are assigned, not group-joined, and the next offset of each is the
connector's state — so a restart resumes exactly where the checkpoint says, and a slow
consumer-group join (seconds on the local broker) never delays the start.
"""

from __future__ import annotations

import time
from typing import Any, cast

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from connectors.kafka import CONSUMER_TUNING
from connectors.sources.base import RecordShaper, SourceRecord
from topologies.errors import MlexecError
from topologies.schema import KafkaConnector

__all__ = ["KafkaTopicSource"]

_ONCE_TIMEOUT = 30.0


class KafkaTopicSource:
    """Messages of one topic, every partition, from the checkpointed offsets."""

    behind_unit = "messages"

    def __init__(
        self,
        config: KafkaConnector,
        shaper: RecordShaper,
        state: dict[str, Any] | None,
        conf: dict[str, Any],
        *,
        once: bool = False,
    ) -> None:
        self.config = config
        self.origin = f"{conf.get('bootstrap.servers')}/{config.topic}"
        self._shaper = shaper
        self._once = once
        self._consumer = Consumer(
            {
                **conf,
                **CONSUMER_TUNING,
                "group.id": "mlexec-connector",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": config.start,
            }
        )
        topic = config.topic
        meta = self._consumer.list_topics(topic, timeout=30.0).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            self._consumer.close()
            msg = f"{self.origin}: no such topic ({meta.error if meta else 'not found'})"
            raise MlexecError(msg)
        saved = {int(p): o for p, o in (state or {}).get("offsets", {}).items()}
        default = OFFSET_BEGINNING if config.start == "earliest" else OFFSET_END
        self._parts = sorted(meta.partitions)
        self._next = dict(saved)
        self._consumer.assign(
            [TopicPartition(topic, p, saved.get(p, default)) for p in self._parts]
        )
        self._at_end: set[int] = set()

    def state(self) -> dict[str, Any]:
        return {"offsets": {str(p): o for p, o in self._next.items()}}

    def behind(self) -> int | None:
        total = 0
        for p in self._parts:
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.config.topic, p), cached=True
                )
            except KafkaException:
                return None
            if high >= 0 and p in self._next:
                total += max(0, high - self._next[p])
        return total

    def wait(self) -> float:
        return 0.0  # consume() below already waits for data

    def close(self) -> None:
        self._consumer.close()

    def read(self, limit: int) -> list[SourceRecord]:
        deadline = time.monotonic() + (_ONCE_TIMEOUT if self._once else 0.0)
        while True:
            out = self._consume(limit)
            if out or not self._once or len(self._at_end) == len(self._parts):
                return out
            if time.monotonic() > deadline:
                msg = f"{self.origin}: did not reach the end of the topic within {_ONCE_TIMEOUT}s"
                raise MlexecError(msg)

    def _consume(self, limit: int) -> list[SourceRecord]:
        out: list[SourceRecord] = []
        for msg in self._consumer.consume(limit, 0.2):
            err = msg.error()
            partition = cast(int, msg.partition())
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._at_end.add(partition)
                    continue
                msg_0 = f"{self.origin}: {err}"
                raise MlexecError(msg_0)
            self._at_end.discard(partition)
            offset = cast(int, msg.offset())
            self._next[partition] = offset + 1
            position = f"{self.config.topic}:{partition}:{offset}"
            out.append(self._record(position, msg.value()))
        return out

    def _record(self, position: str, value: bytes | None) -> SourceRecord:
        if value is None:
            return SourceRecord(position, position, None, None, "empty message (no value)")
        try:
            fields = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return SourceRecord(position, position, None, value, f"not valid JSON: {exc}")
        if not isinstance(fields, dict):
            reason = f"expected a JSON object, found {type(fields).__name__}"
            return SourceRecord(position, position, None, value, reason)
        try:
            key, shaped = self._shaper.shape(fields)
        except ValueError as exc:
            return SourceRecord(position, position, None, value, str(exc))
        return SourceRecord(position, position, key, shaped)
