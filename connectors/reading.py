"""The one way mlexec reads topics outside the dataflows' source: :class:`TopicReader`.

Outputs, the registry watcher, monitoring, ``status`` and the tests read through it: a
consumer assigned to partitions (no consumer group: positions are the caller's own
checkpoint), non-EOF errors raised, and a partition's end noticed — so "read to the
end" (:func:`read_topic`) and "follow from a checkpoint" are the same loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from mlexec.errors import ConnectorError

__all__ = [
    "BACKGROUND_TUNING",
    "CONSUMER_TUNING",
    "KafkaReadError",
    "TopicReader",
    "consumer",
    "consumer_config",
    "end_offsets",
    "high_watermarks",
    "read_topic",
]

_log = logging.getLogger(__name__)

#: Consumer settings that matter on the local Tansu broker (it does not wake a waiting
#: fetch when data arrives) and cost nothing on Apache Kafka.
CONSUMER_TUNING: dict[str, Any] = {"fetch.wait.max.ms": 5, "fetch.queue.backoff.ms": 10}

#: For readers whose records may wait a quarter of a second (the store's samples and
#: profiles, the model registry): on the local broker a 5 ms wait is, while the topic is
#: silent, 200 fetches a second of the client's and the broker's CPU; on Apache Kafka a
#: fetch returns as soon as data comes, whatever the wait.
BACKGROUND_TUNING: dict[str, Any] = {"fetch.wait.max.ms": 250}

#: One read message: (key, value, headers, partition, offset).
Read = tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int, int]


class KafkaReadError(ConnectorError):
    """A topic could not be read (an error from the broker, or no end in time)."""


def consumer_config(
    conf: dict[str, Any], group: str, *, eof: bool = False, reset: str = "earliest", **settings: Any
) -> dict[str, Any]:
    """Settings of a consumer for assigned partitions: tuned, no auto-commit, ``group`` a name."""
    return {
        **conf,
        **CONSUMER_TUNING,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.partition.eof": eof,
        "auto.offset.reset": reset,
        **settings,
    }


def consumer(conf: dict[str, Any], group: str, **options: Any) -> Consumer:
    """A consumer of :func:`consumer_config`'s settings."""
    return Consumer(consumer_config(conf, group, **options))


class TopicReader:
    """Partitions read from given offsets, each known to be at its end or not.

    ``strict`` raises every error but a partition's end; otherwise errors (a topic
    that does not exist yet, say) are logged and reading goes on.
    """

    def __init__(
        self,
        conf: dict[str, Any],
        group: str,
        *,
        reset: str = "earliest",
        strict: bool = True,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self._consumer = consumer(conf, group, eof=True, reset=reset, **(settings or {}))
        self._strict = strict
        self.parts: set[tuple[str, int]] = set()
        self.at_end: set[tuple[str, int]] = set()

    def partitions(self, topic: str, timeout: float = 30.0) -> list[int]:
        """The partitions of ``topic`` (none when it does not exist)."""
        meta = self._consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        return sorted(meta.partitions)

    def assign(self, positions: Iterable[tuple[str, int, int]]) -> None:
        """Read these (topic, partition, offset)s from now on, instead of any before."""
        chosen = list(positions)
        self._consumer.assign([TopicPartition(t, p, o) for t, p, o in chosen])
        self.parts = {(t, p) for t, p, _ in chosen}
        self.at_end = set()

    def assign_topics(
        self,
        topics: Iterable[str],
        start: Mapping[tuple[str, int], int] | None = None,
        *,
        default: int = OFFSET_BEGINNING,
        timeout: float = 30.0,
    ) -> None:
        """Every partition of ``topics``, from ``start`` or else from ``default``."""
        start = start or {}
        self.assign(
            (t, p, start.get((t, p), default)) for t in topics for p in self.partitions(t, timeout)
        )

    def poll(self, max_messages: int = 1000, timeout: float = 0.1) -> list[Message]:
        """The messages that arrived (no error ones); partitions' ends noted in :attr:`at_end`."""
        good: list[Message] = []
        for msg in self._consumer.consume(max_messages, timeout):
            err = msg.error()
            tp = (cast(str, msg.topic()), cast(int, msg.partition()))
            if err is None:
                good.append(msg)
                self.at_end.discard(tp)
            elif err.code() == KafkaError._PARTITION_EOF:
                self.at_end.add(tp)
            elif self._strict:
                msg_ = f"{tp[0] or 'kafka'}: {err}"
                raise KafkaReadError(msg_)
            else:
                _log.debug("%s: %s", tp[0], err)
        return good

    @property
    def done(self) -> bool:
        """Every assigned partition is at its end."""
        return self.at_end >= self.parts

    def read_to_end(self, timeout: float = 30.0, what: str = "") -> list[Message]:
        """Everything up to the end of every assigned partition."""
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while not self.done:
            if time.monotonic() > deadline:
                msg = (
                    f"reading {what or sorted(self.parts)} did not reach the end within {timeout}s"
                )
                raise KafkaReadError(msg)
            out += self.poll()
        return out

    def watermark(self, topic: str, partition: int) -> int:
        """The high watermark the last fetch of a partition reported."""
        _low, high = self._consumer.get_watermark_offsets(
            TopicPartition(topic, partition), cached=True
        )
        return cast(int, high)

    def close(self) -> None:
        """Leave the broker."""
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_topic(
    conf: dict[str, Any],
    topic: str,
    *,
    start: dict[int, int] | None = None,
    timeout: float = 30.0,
) -> list[Read]:
    """Messages of ``topic`` to its end: (key, value, headers, partition, offset).

    From the beginning, or per partition from ``start`` (partitions it omits are read
    from the beginning). Stops at partition EOF on every partition.
    """
    with TopicReader(conf, "mlexec-reader") as reader:
        parts = reader.partitions(topic, timeout)  # none: a topic that does not exist is empty
        reader.assign((topic, p, (start or {}).get(p, OFFSET_BEGINNING)) for p in parts)
        return [
            (
                m.key(),
                m.value(),
                cast(list[tuple[str, bytes]], m.headers() or []),
                cast(int, m.partition()),
                cast(int, m.offset()),
            )
            for m in reader.read_to_end(timeout, repr(topic))
        ]


def end_offsets(conf: dict[str, Any], topic: str, timeout: float = 30.0) -> dict[int, int]:
    """Per partition, the end offset the broker reports (ListOffsets).

    On Apache Kafka this is the log end; the local Tansu broker answers a lower bound
    (its last batch's base offset + 1), so use it only where a lower bound is safe,
    such as where to start scanning for one's own recent messages.
    """
    c = consumer(conf, "mlexec-offsets")
    try:
        meta = c.list_topics(topic, timeout=timeout).topics[topic]
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)[1]
            for p in sorted(meta.partitions)
        }
    finally:
        c.close()


def high_watermarks(conf: dict[str, Any], topic: str, timeout: float = 10.0) -> dict[int, int]:
    """Per partition, the log end as a fetch reports it.

    A fetch's high watermark is right on the local Tansu broker too, where ListOffsets
    is not: each partition is fetched at its end until the broker says so.
    """
    with TopicReader(conf, "mlexec-watermarks") as reader:
        parts = reader.partitions(topic, timeout)
        if not parts:
            return {}
        ends = end_offsets(conf, topic, timeout)
        reader.assign((topic, p, ends.get(p, 0)) for p in parts)
        deadline = time.monotonic() + timeout
        while not reader.done and time.monotonic() < deadline:
            reader.poll(10_000)
        return {p: max(reader.watermark(topic, p), ends.get(p, 0)) for p in parts}
