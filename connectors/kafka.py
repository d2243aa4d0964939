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
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from mlexec.topologies.errors import ConnectorError, MlexecError
from mlexec.topologies.plan import TopicSpec
from mlexec.topologies.schema import KafkaSettings

__all__ = [
    "CONSUMER_TUNING",
    "KafkaBatchSink",
    "KafkaBatchSource",
    "KafkaDeliveryError",
    "Outgoing",
    "RawBatch",
    "STALLS",
    "SourceState",
    "TopicChangedError",
    "resume_offset",
    "send_alert",
    "topic_identity",
    "client_config",
    "end_offsets",
    "high_watermarks",
    "PROGRESS",
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


# ------------------------------------------------------------------------ source


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
#: Messages this process's batch sinks have handed to the broker, per topic.
PRODUCED: dict[str, int] = {}


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

    _shared: dict[tuple[str, int], _SharedConsumer] = {}

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
        import threading

        key = (step_id, threading.get_ident())  # one per step and worker thread
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
        self._idle = False
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
        self._idle = not taken
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
        """Poll again at once while records come; after an empty poll, in a millisecond.

        Polls never block (the other partitions and steps of the worker run meanwhile);
        the pause keeps an idle partition from spinning a core.
        """
        return datetime.now(UTC) + _IDLE_PAUSE if self._idle else None

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


class KafkaBatchSource(FixedPartitionedSource[RawBatch, SourceState]):
    """Every partition of ``topic``, one :class:`RawBatch` per poll.

    ``until_end`` stops each partition at the end it finds (partition EOF from the
    fetch high watermark — Tansu's ListOffsets answer cannot be trusted). Offsets
    resume from bytewax recovery, not from consumer groups. The partitions a worker
    reads share one consumer.
    """

    def __init__(
        self,
        conf: dict[str, Any],
        topic: str,
        *,
        batch_size: int = 1000,
        poll_timeout: float = 0.0,
        until_end: bool = False,
        group: str = "mlexec",
        context: dict[str, Any] | None = None,
    ) -> None:
        self._conf = {
            **conf,
            **CONSUMER_TUNING,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # a position past the end is an error to notice, never a silent jump
            "auto.offset.reset": "error",
        }
        #: What alerts of this source name (use case, site).
        self._context = dict(context or {})
        self._topic = topic
        self._batch_size = batch_size
        self._poll_timeout = poll_timeout
        self._until_end = until_end

    def list_parts(self) -> list[str]:
        admin = AdminClient(_admin_conf(self._conf))
        meta = admin.list_topics(self._topic, timeout=30.0).topics.get(self._topic)
        if meta is None or meta.error is not None or not meta.partitions:
            msg = f"topic {self._topic!r} does not exist on {self._conf['bootstrap.servers']}"
            raise MlexecError(msg)
        return [str(p) for p in sorted(meta.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: Any
    ) -> _BatchPartition:
        return _BatchPartition(
            step_id,
            self._conf,
            self._topic,
            int(for_part),
            resume_state,
            self._batch_size,
            self._poll_timeout,
            self._until_end,
            self._context,
        )


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
