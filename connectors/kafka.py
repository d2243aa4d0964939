"""Kafka for the dataflows: client settings from a site, topics, a batch source and sink.

The hot path moves whole consumed batches: the source emits one :class:`RawBatch` per
poll of a partition and snapshots the next offset; the sink hands whole lists to
``produce_batch`` and flushes only at snapshot and close. Nothing is dropped: queue
full means poll and retry, and the first delivery error is raised at the next write.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from mlexec.topologies.errors import ConnectorError, MlexecError
from mlexec.topologies.plan import TopicSpec
from mlexec.topologies.schema import KafkaSettings

__all__ = [
    "CONSUMER_TUNING",
    "KafkaBatchSink",
    "KafkaDeliveryError",
    "Outgoing",
    "client_config",
    "end_offsets",
    "high_watermarks",
    "PRODUCED",
    "ensure_topics",
    "produce_records",
    "read_topic",
]

_log = logging.getLogger(__name__)

#: Consumer settings that matter on the local Tansu broker (it does not wake a waiting
#: fetch when data arrives) and cost nothing on Apache Kafka.
CONSUMER_TUNING: dict[str, Any] = {"fetch.wait.max.ms": 5, "fetch.queue.backoff.ms": 10}
#: How long an idle source partition waits before it polls its (non-blocking) consumer again.
_IDLE_PAUSE = timedelta(milliseconds=1)


class KafkaDeliveryError(ConnectorError):
    """A message could not be delivered to the broker."""


def client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Librdkafka settings for a site: bootstrap, security and the site's extras."""
    sec = kafka.security
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap,
        "security.protocol": sec.protocol,
        # mlexec creates every topic with its declared partitions (ensure_topics); a topic
        # the broker made up on a write (4 partitions on Tansu) would never be read
        "allow.auto.create.topics": False,
    }
    if sec.ca:
        conf["ssl.ca.location"] = sec.ca
    if sec.cert and sec.key:
        conf["ssl.certificate.location"] = sec.cert
        conf["ssl.key.location"] = sec.key
    if sec.sasl is not None:
        conf["sasl.mechanism"] = sec.sasl.mechanism
        conf["sasl.username"] = sec.sasl.username
        conf["sasl.password"] = sec.sasl.password.get_secret_value()
    conf.update(kafka.client)
    return conf


def ensure_topics(conf: dict[str, Any], topics: Iterable[TopicSpec], timeout: float = 30.0) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = AdminClient(conf)
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [
        NewTopic(t.name, num_partitions=t.partitions, replication_factor=1, config=dict(t.config))
        for t in topics
        if t.name not in existing
    ]
    if not new:
        return
    for name, future in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                msg = f"cannot create topic {name!r}: {exc}"
                raise MlexecError(msg) from exc


#: Messages this process's batch sinks have handed to the broker, per topic.
PRODUCED: dict[str, int] = {}


# -------------------------------------------------------------------------- sink


@dataclass(frozen=True)
class Outgoing:
    """Messages for one topic. With ``headers``, each message is produced on its own."""

    topic: str
    values: Sequence[bytes]
    keys: Sequence[bytes | str | None] | None = None
    headers: Sequence[list[tuple[str, bytes]]] | None = None


class _Delivery:
    """Keeps the first delivery error, to raise it at the next write or flush."""

    def __init__(self) -> None:
        self.error: KafkaError | None = None

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None and self.error is None:
            self.error = err

    def raise_if_failed(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            msg = f"delivery to Kafka failed: {err}"
            raise KafkaDeliveryError(msg)


class _ProducerPart(StatefulSinkPartition[Outgoing, None]):
    def __init__(self, conf: dict[str, Any]) -> None:
        self._producer = Producer(conf)
        self._delivery = _Delivery()

    def write_batch(self, items: list[Outgoing]) -> None:
        self._delivery.raise_if_failed()
        for out in items:
            PRODUCED[out.topic] = PRODUCED.get(out.topic, 0) + len(out.values)
            if out.headers is not None:
                self._produce_each(out)
            else:
                self._produce_batch(out)
        self._producer.poll(0)

    def _produce_batch(self, out: Outgoing) -> None:
        pending: list[dict[str, Any]]
        if out.keys is None:
            pending = [{"value": v} for v in out.values]
        else:
            pending = [{"value": v, "key": k} for v, k in zip(out.values, out.keys, strict=True)]
        while pending:
            try:
                self._producer.produce_batch(out.topic, pending, on_delivery=self._delivery)
            except BufferError:
                self._producer.poll(0.05)
                continue
            failed = [m for m in pending if "_error" in m]
            for m in failed:
                err = m.pop("_error")
                if err.code() != KafkaError._QUEUE_FULL:
                    msg = f"producing to {out.topic!r} failed: {err}"
                    raise KafkaDeliveryError(msg)
            if failed:
                self._producer.poll(0.05)
            pending = failed

    def _produce_each(self, out: Outgoing) -> None:
        keys = out.keys if out.keys is not None else [None] * len(out.values)
        headers = out.headers or []
        for value, key, hdrs in zip(out.values, keys, headers, strict=True):
            while True:
                try:
                    self._producer.produce(
                        out.topic,
                        value=value,
                        key=key,
                        headers=cast(Any, hdrs),
                        on_delivery=self._delivery,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)

    def snapshot(self) -> None:
        """Everything written so far is delivered before bytewax commits the epoch."""
        self._flush()

    def _flush(self) -> None:
        remaining = self._producer.flush(60.0)
        self._delivery.raise_if_failed()
        if remaining:
            msg = f"{remaining} messages were still undelivered after 60 s"
            raise KafkaDeliveryError(msg)

    def close(self) -> None:
        self._flush()


class KafkaBatchSink(FixedPartitionedSink[Outgoing, None]):
    """Idempotent producers for every :class:`Outgoing` handed to it as ``(key, item)``.

    A stateful sink so that its snapshot — taken at each epoch's end, before bytewax
    commits the input offsets of that epoch — flushes the producer: a crash can then
    repeat messages (removed downstream by id) but never lose one. ``parts`` producers
    share the load; an item goes to the part its key hashes to.
    """

    def __init__(self, conf: dict[str, Any], parts: int = 1) -> None:
        self._parts = parts
        self._conf = {
            **conf,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": conf.get("linger.ms", 5),
            # reports only for failures: no Python call per delivered message
            "delivery.report.only.error": True,
        }

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self._parts)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ProducerPart:
        return _ProducerPart(self._conf)


def produce_records(
    conf: dict[str, Any],
    topic: str,
    records: Sequence[tuple[bytes | None, bytes]],
    headers: Sequence[list[tuple[str, bytes]]] | None = None,
) -> list[tuple[int, int]]:
    """Produce ``(key, value)`` records in order, idempotently; return each (partition, offset).

    For feeding topics from files, the demo, benchmarks and tests. Never drops: a full
    queue is polled and retried; any delivery error is raised.
    """
    producer = Producer(
        {**conf, "enable.idempotence": True, "linger.ms": conf.get("linger.ms", 10)}
    )
    positions: list[tuple[int, int]] = [(-1, -1)] * len(records)
    errors: list[KafkaError] = []

    def delivered(i: int) -> Any:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err)
            else:
                positions[i] = (cast(int, msg.partition()), cast(int, msg.offset()))

        return report

    for i, (key, value) in enumerate(records):
        while True:
            try:
                producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=cast(Any, headers[i] if headers is not None else None),
                    on_delivery=delivered(i),
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120.0)
    if errors or left:
        msg = f"producing to {topic!r} failed: {errors[:3]} ({left} undelivered)"
        raise KafkaDeliveryError(msg)
    return positions


def end_offsets(conf: dict[str, Any], topic: str, timeout: float = 30.0) -> dict[int, int]:
    """Per partition, the end offset the broker reports (ListOffsets).

    On Apache Kafka this is the log end; the local Tansu broker answers a lower bound
    (its last batch's base offset + 1), so use it only where a lower bound is safe,
    such as where to start scanning for one's own recent messages.
    """
    consumer = Consumer({**conf, "group.id": "mlexec-offsets", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
        return {
            p: consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=timeout, cached=False
            )[1]
            for p in sorted(meta.partitions)
        }
    finally:
        consumer.close()


def high_watermarks(conf: dict[str, Any], topic: str, timeout: float = 10.0) -> dict[int, int]:
    """Per partition, the log end as a fetch reports it.

    A fetch's high watermark is right on the local Tansu broker too, where ListOffsets
    is not: each partition is fetched at its end until the broker says so.
    """
    consumer = Consumer(
        {
            **conf,
            **CONSUMER_TUNING,
            "group.id": "mlexec-watermarks",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        parts = sorted(meta.partitions)
        ends = end_offsets(conf, topic, timeout)
        consumer.assign([TopicPartition(topic, p, ends.get(p, 0)) for p in parts])
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < len(parts) and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.1):
                err = msg.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    seen.add(cast(int, msg.partition()))
        out = {}
        for p in parts:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            out[p] = max(high, ends.get(p, 0))
        return out
    finally:
        consumer.close()


def read_topic(
    conf: dict[str, Any],
    topic: str,
    *,
    start: dict[int, int] | None = None,
    timeout: float = 30.0,
) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int, int]]:
    """Messages of ``topic`` to its end: (key, value, headers, partition, offset).

    From the beginning, or per partition from ``start`` (partitions it omits are read
    from the beginning). Stops at partition EOF on every partition.
    """
    start = start or {}
    consumer = Consumer(
        {
            **conf,
            **CONSUMER_TUNING,
            "group.id": "mlexec-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
        parts = sorted(meta.partitions)
        consumer.assign([TopicPartition(topic, p, start.get(p, OFFSET_BEGINNING)) for p in parts])
        out: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int, int]] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < len(parts):
            if time.monotonic() > deadline:
                msg = f"reading {topic!r} did not reach the end within {timeout}s"
                raise MlexecError(msg)
            for msg_ in consumer.consume(1000, 0.1):
                err = msg_.error()
                if err is None:
                    headers = cast(list[tuple[str, bytes]], msg_.headers() or [])
                    out.append(
                        (
                            msg_.key(),
                            msg_.value(),
                            headers,
                            cast(int, msg_.partition()),
                            cast(int, msg_.offset()),
                        )
                    )
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(cast(int, msg_.partition()))
                else:
                    raise KafkaDeliveryError(str(err))
        return out
    finally:
        consumer.close()
