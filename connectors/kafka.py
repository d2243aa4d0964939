"""Kafka for the dataflows: client settings from a site, topics, and the batch sink.

The hot path moves whole consumed batches: the source emits one :class:`RawBatch` per
poll of a partition and snapshots the next offset; the sink hands whole lists to
``produce_batch`` and flushes only at snapshot and close. Nothing is dropped: queue
full means poll and retry, and the first delivery error is raised at the next write.
"""

from __future__ import annotations

import logging
import threading
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import (
    KafkaError,
    KafkaException,
    Message,
)
from confluent_kafka.admin import AdminClient, NewTopic

from mlexec.connectors.delivery import ReliableProducer
from mlexec.connectors.kafkalog import LOGGER
from mlexec.errors import ConnectorError, MlexecError
from mlexec.topologies.plan import TopicSpec
from mlexec.topologies.schema import KafkaSettings
from mlexec.topologies.secrets import mask_url

__all__ = [
    "REACH_TIMEOUT",
    "BrokerUnreachable",
    "KafkaBatchSink",
    "Outgoing",
    "client_config",
    "PRODUCED",
    "ensure_topics",
    "produce_records",
]

_log = logging.getLogger(__name__)

#: How long an idle source partition waits before it polls its (non-blocking) consumer
#: again, by how long it has been silent: 1 ms for its first 100 ms of silence — a busy
#: partition is only ever silent between two fetches, and a longer pause there would
#: let a backlog build — then 10 ms, and 50 ms once silent for a second: an idle site
#: wakes 20 times a second, not 1,000.
_IDLE_STEPS = ((0.1, timedelta(milliseconds=1)), (1.0, timedelta(milliseconds=10)))
_IDLE_MAX = timedelta(milliseconds=50)


def idle_pause(silent_for: float) -> timedelta:
    """The pause after an empty poll of a partition silent for ``silent_for`` seconds."""
    for below, pause in _IDLE_STEPS:
        if silent_for < below:
            return pause
    return _IDLE_MAX


def client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Librdkafka settings for a site: bootstrap, security and the site's extras."""
    sec = kafka.security
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap,
        "security.protocol": sec.protocol,
        # mlexec creates every topic with its declared partitions (ensure_topics); a topic
        # the broker made up on a write (4 partitions on Tansu) would never be read
        "allow.auto.create.topics": False,
        # librdkafka's own log through mlexec's logging, each kind of line once a minute
        "logger": LOGGER,
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


class BrokerUnreachable(ConnectorError):
    """The site's broker does not answer; the message names it and what to do."""


#: How long the first contact with a broker may take before it counts as unreachable.
REACH_TIMEOUT = 6.0


def ensure_topics(
    conf: dict[str, Any],
    topics: Iterable[TopicSpec],
    timeout: float = 30.0,
    *,
    site: str | None = None,
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are.

    The first contact of every part with its broker: one that does not answer within
    :data:`REACH_TIMEOUT` is refused in one line (librdkafka's own log of every failed
    connection attempt is kept quiet for it).
    """
    admin = AdminClient({**conf, "log_level": 0})
    wait = min(timeout, REACH_TIMEOUT)
    try:
        existing = set(admin.list_topics(timeout=wait).topics)
    except KafkaException as exc:
        where = mask_url(str(conf.get("bootstrap.servers", "?")))
        reason = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        whose = f"site {site}'s Kafka broker" if site else "the Kafka broker"
        msg = (
            f"{whose} at {where} does not answer within {wait:g} s ({reason}): is it "
            "running and reachable? `mlexec broker` starts a local one"
        )
        raise BrokerUnreachable(msg) from None
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


#: (sink, worker thread) → the worker's producer and how many of its parts use it.
_WORKER_PRODUCERS: dict[tuple[str, int], tuple[ReliableProducer, int]] = {}
_PRODUCERS_LOCK = threading.Lock()


class _ProducerPart(StatefulSinkPartition[Outgoing, None]):
    """One part of the sink; the parts a worker owns share its one producer.

    A worker calls its parts one after another on its own thread, so a flush at one
    part's snapshot waits only for what that worker produced.
    """

    def __init__(self, conf: dict[str, Any], sink: str) -> None:
        self._key = (sink, threading.get_ident())
        with _PRODUCERS_LOCK:
            found = _WORKER_PRODUCERS.get(self._key)
            producer = found[0] if found else ReliableProducer(conf, what="the dataflow's sink")
            _WORKER_PRODUCERS[self._key] = (producer, (found[1] if found else 0) + 1)
        self._producer = producer

    def write_batch(self, items: list[Outgoing]) -> None:
        self._producer.raise_if_failed()
        for out in items:
            PRODUCED[out.topic] = PRODUCED.get(out.topic, 0) + len(out.values)
            if out.headers is not None:
                keys = out.keys if out.keys is not None else [None] * len(out.values)
                for value, key, hdrs in zip(out.values, keys, out.headers, strict=True):
                    self._producer.produce(out.topic, value, key=key, headers=hdrs)
            else:
                self._producer.produce_batch(out.topic, out.values, out.keys)
        self._producer.poll(0)

    def snapshot(self) -> None:
        """Everything written so far is delivered before bytewax commits the epoch."""
        self._producer.flush(60.0)

    def close(self) -> None:
        try:
            self._producer.flush(60.0)
        finally:
            with _PRODUCERS_LOCK:
                producer, users = _WORKER_PRODUCERS.pop(self._key, (self._producer, 1))
                if users > 1:
                    _WORKER_PRODUCERS[self._key] = (producer, users - 1)


#: The sink's parts: fixed, so that its recovery state (a key per part) stays valid
#: whatever the number of workers and processes a site resumes with.
SINK_PARTS = 16


class KafkaBatchSink(FixedPartitionedSink[Outgoing, None]):
    """Idempotent producers for every :class:`Outgoing` handed to it as ``(key, item)``.

    A stateful sink so that its snapshot — taken at each epoch's end, before bytewax
    commits the input offsets of that epoch — flushes the producer: a crash can then
    repeat messages (removed downstream by id) but never lose one.

    There are always :data:`SINK_PARTS` parts (bytewax panics when a resumed run lists
    fewer parts than the recovery state holds), and in a cluster each process lists
    only its share of them: part ``i`` belongs to process ``i % processes``. Bytewax
    makes a worker that lists a part its owner, so every part lives in the process that
    listed it, and :meth:`key_for` keys an item to one of this process's own parts: a
    prediction never crosses to another process to be produced. The parts a worker owns
    share one producer, so there are as many producers as workers (up to
    ``SINK_PARTS``), whatever the scale.
    """

    def __init__(
        self,
        conf: dict[str, Any],
        parts: int = SINK_PARTS,
        *,
        process: int = 0,
        processes: int = 1,
    ) -> None:
        self._parts = [str(i) for i in range(parts)]
        # bytewax picks the part at part_fn(key) % len(parts) of the *sorted* part names
        self._index = {name: i for i, name in enumerate(sorted(self._parts))}
        local = [name for i, name in enumerate(self._parts) if i % processes == process]
        # more processes than parts: the extra ones produce through another's part
        self._local = local or [self._parts[process % parts]]
        self._listed = local
        self._id = uuid.uuid4().hex
        self._conf = {
            **conf,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": conf.get("linger.ms", 5),
            # reports only for failures: no Python call per delivered message
            "delivery.report.only.error": True,
        }

    def key_for(self, topic: str) -> str:
        """The key that routes an item for ``topic`` to one of this process's own parts.

        Always the same part per topic, so a key's records keep their order.
        """
        return self._local[zlib.crc32(topic.encode()) % len(self._local)]

    def list_parts(self) -> list[str]:
        return self._listed

    def part_fn(self, item_key: str) -> int:
        return self._index[item_key]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ProducerPart:
        return _ProducerPart(self._conf, self._id)


def produce_records(
    conf: dict[str, Any],
    topic: str,
    records: Sequence[tuple[bytes | None, bytes]],
    headers: Sequence[list[tuple[str, bytes]]] | None = None,
) -> list[tuple[int, int]]:
    """Produce ``(key, value)`` records in order, idempotently; return each (partition, offset).

    For alerts, the registry, feeding topics from files, the demo, benchmarks and
    tests. Never drops: a full queue is polled and retried; any delivery error is raised.
    """
    producer = ReliableProducer(
        conf, what=f"producing to {topic!r}", **{"linger.ms": conf.get("linger.ms", 10)}
    )
    positions: list[tuple[int, int]] = [(-1, -1)] * len(records)

    def delivered(i: int) -> Any:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                positions[i] = (cast(int, msg.partition()), cast(int, msg.offset()))

        return report

    for i, (key, value) in enumerate(records):
        hdrs = headers[i] if headers is not None else None
        producer.produce(topic, value, key=key, headers=hdrs, on_delivery=delivered(i))
    producer.flush(120.0)
    return positions
