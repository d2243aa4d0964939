"""The batch source: every partition of a topic, one consumed batch per poll.

The hot path moves whole consumed batches: the source emits one :class:`RawBatch` per
poll of a partition and snapshots the next offset with the topic's id, so a log the
broker lost or re-created is never read on from old offsets. The partitions a worker
reads share one consumer, which reads on through the local broker's slow path for a
topic of many tiny batches.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from mlexec.connectors.delivery import KafkaDeliveryError
from mlexec.connectors.kafka import ensure_topics, idle_pause, produce_records
from mlexec.connectors.reading import CONSUMER_TUNING, consumer_config
from mlexec.errors import ConnectorError, MlexecError
from mlexec.topologies.plan import TopicSpec

__all__ = [
    "PROGRESS",
    "STALLS",
    "KafkaBatchSource",
    "RawBatch",
    "SourceState",
    "TopicChangedError",
    "resume_offset",
    "send_alert",
    "topic_identity",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawBatch:
    """Messages consumed from one partition in one poll, as parallel lists."""

    topic: str
    partition: int
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    #: The name record ids are made of: the topic, or ``<topic>@<log>`` once the topic's
    #: log was found re-created (offsets start again, and ids must not repeat old ones).
    label: str = ""

    def __len__(self) -> int:
        return len(self.offsets)


#: What this process's batch sources have read, per (topic, partition): the next offset
#: to process, the fetch-side end of the partition (its high watermark; Tansu's
#: ListOffsets answer cannot be trusted) and the records read since the process started.
#: The runtime health (``dataflows.health``) reads it; lag is ``end - next``.
PROGRESS: dict[tuple[str, int], list[int]] = {}


#: Seconds between looks at whether a source's topic is still the one it reads.
_IDENTITY_EVERY = 2.0
#: Seconds of fetches delivering under ``_SLOW_RATE`` records/s while behind before the
#: slow path is assumed, and how long the longer fetch wait is then kept.
_STALL_AFTER = 2.0
_SLOW_RATE = 500  # records/s
_SLOW_FOR = 60.0
#: Per topic, how often this process's sources found the broker's fetches stalled.
STALLS: dict[str, int] = {}


class TopicChangedError(ConnectorError):
    """A topic a dataflow reads vanished, was re-created or changed its partitions."""


def topic_identity(admin: AdminClient, topic: str, timeout: float = 10.0) -> tuple[str, int] | None:
    """The topic's id and partition count as the broker says now; ``None`` if it is missing."""
    try:
        found = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)
        desc = found[topic].result(timeout)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return None
        raise
    return str(desc.topic_id), len(desc.partitions)


def send_alert(conf: dict[str, Any], alert: dict[str, Any]) -> None:
    """One alert on ``mlexec.alerts`` (created if missing); a failure to send is logged."""
    from mlexec.topologies.plan import ALERTS_TOPIC

    _log.error("%s: %s", alert.get("kind", "alert"), alert.get("message"))
    try:
        ensure_topics(conf, [TopicSpec(ALERTS_TOPIC, 1)], timeout=10.0)
        key = str(alert.get("usecase") or "").encode()
        produce_records(conf, ALERTS_TOPIC, [(key, orjson.dumps(alert))])
    except Exception as exc:  # noqa: BLE001 - an alert that cannot be sent is still logged
        _log.error("could not send the alert: %s", exc)


def _admin_conf(conf: dict[str, Any]) -> dict[str, Any]:
    consumer_only = ("fetch.", "group.", "enable.", "auto.offset.")
    # errors only: a short-lived admin client otherwise logs its purged queue at exit
    return {"log_level": 3, **{k: v for k, v in conf.items() if not k.startswith(consumer_only)}}


class _SharedConsumer:
    """One consumer for every partition of a topic that one worker of one step reads.

    A consumer per partition would double the fetch requests (and the broker's work)
    for nothing; this one fetches for all of them and deals the messages out to each
    partition's buffer, in order. Partition EOF travels in the buffer as ``None``.
    """

    _shared: dict[tuple[str, int, str], _SharedConsumer] = {}

    def __init__(self, conf: dict[str, Any], topic: str) -> None:
        self.conf = conf
        self.consumer = Consumer(conf)
        self.topic = topic
        #: Per partition, the next offset to read (to re-create the consumer in place).
        self.next_of: dict[int, int] = {}
        self._window_start: float | None = None
        self._window_read = 0
        #: Until when fetches wait long (the broker's slow path), or 0.
        self._slow_until = 0.0
        self.buffers: dict[int, list[Message | None]] = {}
        #: Partitions whose position was past the log's end: (position, low, high).
        self.reset: dict[int, tuple[int, int, int]] = {}
        self.admin = AdminClient(_admin_conf(conf))
        self.identity: tuple[str, int] | None = None
        self._looked = 0.0

    def check_identity(self) -> None:
        """Every few seconds: the topic must still be the one first read, same partitions.

        A broker that lost its log (a memory broker restarted) or a topic deleted and
        made again must never be read on from the old offsets; the dataflow stops with
        the reason, its supervisor restarts it, and the new start reads the new log
        from its beginning with an alert (see :class:`_BatchPartition`).
        """
        now = time.monotonic()
        if now - self._looked < _IDENTITY_EVERY:
            return
        self._looked = now
        try:
            found = topic_identity(self.admin, self.topic, timeout=5.0)
        except KafkaException as exc:  # broker unreachable: librdkafka keeps retrying
            _log.info("cannot describe %s now: %s", self.topic, exc)
            return
        if self.identity is None:
            self.identity = found
            return
        if found != self.identity:
            was = f"id {self.identity[0]}, {self.identity[1]} partitions"
            now_is = "missing" if found is None else f"id {found[0]}, {found[1]} partitions"
            msg = (
                f"topic {self.topic!r} changed under the dataflow ({was} → {now_is}): the "
                "broker lost or re-created it; stopping so that a restart creates the "
                "declared topics and reads the new log from its start"
            )
            raise TopicChangedError(msg)

    @classmethod
    def attach(
        cls, step_id: str, conf: dict[str, Any], topic: str, partition: int, start: int
    ) -> _SharedConsumer:

        key = (step_id, threading.get_ident(), topic)  # one per step, worker and topic
        shared = cls._shared.get(key)
        if shared is None:
            shared = cls._shared[key] = cls(conf, topic)
        shared.buffers[partition] = []
        shared.next_of[partition] = start
        shared.consumer.incremental_assign([TopicPartition(topic, partition, start)])
        return shared

    def detach(self, partition: int) -> None:
        self.buffers.pop(partition, None)
        self.next_of.pop(partition, None)
        if not self.buffers:
            for key, shared in list(self._shared.items()):
                if shared is self:
                    del self._shared[key]
            self.consumer.close()

    def take(self, partition: int, limit: int, timeout: float) -> list[Message | None]:
        """Up to ``limit`` buffered messages of ``partition``, polling when it has none."""
        buffer = self.buffers[partition]
        if not buffer:
            msgs = self.consumer.consume(limit, timeout)
            read = 0
            for msg in msgs:
                err = msg.error()
                target = self.buffers.get(cast(int, msg.partition()))
                if target is None:
                    continue
                if err is None:
                    target.append(msg)
                    self.next_of[cast(int, msg.partition())] = cast(int, msg.offset()) + 1
                    read += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    target.append(None)
                elif err.code() == KafkaError._AUTO_OFFSET_RESET:
                    self._restart_partition(cast(int, msg.partition()))
                elif err.fatal() or not err.retriable():
                    text = f"consuming {self.topic}[{msg.partition()}] failed: {err}"
                    raise KafkaDeliveryError(text)
                else:
                    _log.warning("consuming %s[%s]: %s", self.topic, msg.partition(), err)
            # after next_of took this poll's messages: a re-made consumer must not read them again
            self._watch_stall(read)
        taken = buffer[:limit]
        del buffer[:limit]
        return taken

    def _watch_stall(self, got: int) -> None:
        """Fetches that deliver next to nothing while records wait: the broker's slow path.

        The local Tansu broker gives up a fetch at ``fetch.wait.max.ms`` and answers with
        little or nothing when the log holds many tiny batches (a trickle of 1-2 records
        a write); the short wait mlexec uses for latency then reads a few records a fetch
        (seen: 95 records/s). When a window of ``_STALL_AFTER`` seconds delivers under
        ``_SLOW_RATE`` records/s while the partitions are behind, the consumer is made
        again with librdkafka's default wait for ``_SLOW_FOR`` seconds (then the short
        wait is tried again).
        """
        now = time.monotonic()
        self._window_read += got
        if self._window_start is None:
            self._window_start = now
            return
        elapsed = now - self._window_start
        if elapsed < _STALL_AFTER:
            return
        read, self._window_start, self._window_read = self._window_read, now, 0
        if self._slow_until:
            if now > self._slow_until:
                self._remake(dict(CONSUMER_TUNING), slow=False)
            return
        if read < _SLOW_RATE * elapsed and self._behind():
            STALLS[self.topic] = STALLS.get(self.topic, 0) + 1
            _log.warning(
                "fetches from %s deliver %d records in %.0fs while records wait (the "
                "broker's slow path for a topic of many tiny batches?); reading with longer "
                "fetch waits for %.0fs",
                self.topic,
                read,
                elapsed,
                _SLOW_FOR,
            )
            self._remake({"fetch.wait.max.ms": 500}, slow=True)

    def _behind(self) -> bool:
        for partition, at in self.next_of.items():
            try:
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=2.0, cached=False
                )
            except KafkaException:
                return False
            if high > max(at, low):
                return True
        return False

    def _remake(self, tuning: dict[str, Any], *, slow: bool) -> None:
        self.consumer.close()
        self.consumer = Consumer({**self.conf, **tuning})
        self.consumer.assign(
            [TopicPartition(self.topic, p, at) for p, at in sorted(self.next_of.items())]
        )
        self._slow_until = time.monotonic() + _SLOW_FOR if slow else 0.0
        self._window_start, self._window_read = None, 0

    def _restart_partition(self, partition: int) -> None:
        """The position is past the log's end (truncated, re-created): read from its start."""
        tp = TopicPartition(self.topic, partition)
        position = self.consumer.position([tp])[0].offset
        low, high = self.consumer.get_watermark_offsets(tp, timeout=5.0, cached=False)
        self.reset[partition] = (position, low, high)
        self.buffers[partition] = []
        self.next_of[partition] = OFFSET_BEGINNING
        self.consumer.incremental_unassign([tp])
        self.consumer.incremental_assign([TopicPartition(self.topic, partition, OFFSET_BEGINNING)])


#: A source partition's state: the next offset, the id of the topic it belongs to and
#: the label its record ids carry.
SourceState = tuple[int, str | None, str]


class _BatchPartition(StatefulSourcePartition[RawBatch, SourceState]):
    def __init__(
        self,
        step_id: str,
        conf: dict[str, Any],
        topic: str,
        partition: int,
        resume: Any,
        batch_size: int,
        poll_timeout: float,
        until_end: bool,
        context: dict[str, Any],
    ) -> None:
        self._conf = conf
        self._context = context
        start, seen, label = _resume_of(resume)
        identity = topic_identity(AdminClient(_admin_conf(conf)), topic)
        if identity is None:
            msg = f"topic {topic!r} does not exist on {conf['bootstrap.servers']}"
            raise TopicChangedError(msg)
        self._topic_id = identity[0]
        self._label = label or topic
        if seen is not None and seen != self._topic_id and start > 0:
            self._label = f"{topic}@{zlib.crc32(self._topic_id.encode()):08x}"
            self._alert(
                f"{topic}[{partition}] is a new log (topic id {seen} → {self._topic_id}: the "
                f"broker lost or re-created it); the recovery state was at offset {start}, "
                "reading the new log from its start, its record ids as "
                f"{self._label}:{partition}:<offset> — records of the old log after that "
                "offset that no copy holds are gone"
            )
            start = OFFSET_BEGINNING
        self._shared = _SharedConsumer.attach(step_id, conf, topic, partition, start)
        if self._shared.identity is None:
            self._shared.identity = identity
        self._topic = topic
        self._partition = partition
        self._next = start
        self._batch_size = batch_size
        self._poll_timeout = poll_timeout
        self._until_end = until_end
        self._done = False
        #: When the partition's current silence began (monotonic seconds), or None.
        self._silent_since: float | None = None
        self._progress = PROGRESS.setdefault((topic, partition), [0, 0, 0])
        self._progress[0] = max(start, 0)
        self._progress[1] = max(self._progress[1], self._progress[0])
        self._tp = TopicPartition(topic, partition)

    def _alert(self, message: str) -> None:
        send_alert(
            self._conf,
            {
                "kind": "input",
                "severity": "critical",
                "message": message,
                "at": int(time.time() * 1000),
                **self._context,
            },
        )

    def next_batch(self) -> list[RawBatch]:
        if self._done:
            raise StopIteration
        self._shared.check_identity()
        taken = self._shared.take(self._partition, self._batch_size, self._poll_timeout)
        reset = self._shared.reset.pop(self._partition, None)
        if reset is not None:
            position, low, high = reset
            self._alert(
                f"{self._topic}[{self._partition}]: the position {position} is past the "
                f"log's end (offsets {low}..{high}): the log was truncated or re-created; "
                "reading on from its start"
            )
        good: list[Message] = []
        for msg in taken:
            if msg is not None:
                good.append(msg)
            elif self._until_end:
                self._done = True
        if taken:
            self._silent_since = None
        elif self._silent_since is None:
            self._silent_since = time.monotonic()
        if taken:
            _low, high = self._shared.consumer.get_watermark_offsets(self._tp, cached=True)
            if high >= 0:
                self._progress[1] = high
        if not good:
            return []
        offsets = cast(list[int], [m.offset() for m in good])
        self._next = offsets[-1] + 1
        progress = self._progress
        progress[0] = self._next
        progress[1] = max(progress[1], self._next)
        progress[2] += len(good)
        return [
            RawBatch(
                topic=self._topic,
                partition=self._partition,
                offsets=offsets,
                keys=[m.key() for m in good],
                values=[m.value() for m in good],
                label=self._label,
            )
        ]

    def next_awake(self) -> datetime | None:
        """Poll again at once while records come; after an empty poll, in 1 to 50 ms.

        Polls never block (the other partitions and steps of the worker run meanwhile);
        the pause, growing while the partition stays silent, keeps it from spinning.
        """
        if self._silent_since is None:
            return None
        return datetime.now(UTC) + idle_pause(time.monotonic() - self._silent_since)

    def snapshot(self) -> SourceState:
        return (self._next, self._topic_id, self._label)

    def close(self) -> None:
        self._shared.detach(self._partition)


def _resume_of(resume: Any) -> tuple[int, str | None, str]:
    if resume is None:
        return OFFSET_BEGINNING, None, ""
    if isinstance(resume, int):  # the state before topic ids were kept
        return resume, None, ""
    return resume[0], resume[1], resume[2] if len(resume) > 2 else ""


def resume_offset(state: Any) -> int:
    """The next offset in a batch source partition's recovery state (either form)."""
    return _resume_of(state)[0]


class _RetiredPartition(StatefulSourcePartition[RawBatch, SourceState]):
    """A part the recovery state holds whose topic is gone: nothing to read, ever."""

    def __init__(self, resume: Any) -> None:
        self._resume = resume

    def next_batch(self) -> list[RawBatch]:
        raise StopIteration

    def snapshot(self) -> SourceState:
        return cast(SourceState, self._resume)


class KafkaBatchSource(FixedPartitionedSource[RawBatch, SourceState]):
    """Every partition of ``topic`` (or of several topics), one :class:`RawBatch` per poll.

    ``until_end`` stops each partition at the end it finds (partition EOF from the
    fetch high watermark — Tansu's ListOffsets answer cannot be trusted). Offsets
    resume from bytewax recovery, not from consumer groups. The partitions of a topic
    a worker reads share one consumer. One topic's parts are its partition numbers;
    with several — or ``qualified``, for a fleet's mirrored ``<member>.<topic>`` of
    however many members — ``<topic>/<partition>``.

    ``retired`` parts are ones the recovery state holds that the topics no longer
    name (a member taken out of the inventory): bytewax refuses to resume without
    them, so they are listed too — read on if their topic is still there, else empty.
    """

    def __init__(
        self,
        conf: dict[str, Any],
        topic: str | Sequence[str],
        *,
        batch_size: int = 1000,
        poll_timeout: float = 0.0,
        until_end: bool = False,
        group: str = "mlexec",
        context: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        qualified: bool = False,
        retired: Sequence[str] = (),
    ) -> None:
        # a position past the end is an error to notice, never a silent jump
        self._conf = consumer_config(conf, group, eof=True, reset="error", **(settings or {}))
        #: What alerts of this source name (use case, site).
        self._context = dict(context or {})
        self._topics = [topic] if isinstance(topic, str) else list(topic)
        if not self._topics:
            msg = "a Kafka source needs at least one topic"
            raise ValueError(msg)
        self._batch_size = batch_size
        self._poll_timeout = poll_timeout
        self._until_end = until_end
        self._qualified = qualified or len(self._topics) > 1
        self._retired = [p for p in retired if "/" in p]
        self._gone: set[str] = set()

    def list_parts(self) -> list[str]:
        admin = AdminClient(_admin_conf(self._conf))
        found = admin.list_topics(timeout=30.0).topics if self._qualified else None
        parts = []
        for topic in self._topics:
            meta = (
                found.get(topic)
                if found is not None
                else admin.list_topics(topic, timeout=30.0).topics.get(topic)
            )
            if meta is None or meta.error is not None or not meta.partitions:
                msg = f"topic {topic!r} does not exist on {self._conf['bootstrap.servers']}"
                raise MlexecError(msg)
            if not self._qualified:
                return [str(p) for p in sorted(meta.partitions)]
            parts += [f"{topic}/{p}" for p in sorted(meta.partitions)]
        for part in self._retired:
            if part not in parts:
                topic = part.rpartition("/")[0]
                meta = found.get(topic) if found is not None else None
                if meta is None or meta.error is not None:
                    self._gone.add(part)
                parts.append(part)
        return parts

    def build_part(
        self, step_id: str, for_part: str, resume_state: Any
    ) -> StatefulSourcePartition[RawBatch, SourceState]:
        if for_part in self._gone:
            return _RetiredPartition(resume_state)
        topic, _, partition = for_part.rpartition("/")
        return _BatchPartition(
            step_id,
            self._conf,
            topic or self._topics[0],
            int(partition),
            resume_state,
            self._batch_size,
            self._poll_timeout,
            self._until_end,
            self._context,
        )
