"""Run one data connector: read its source, produce to Kafka, checkpoint — exactly once.

Each step reads up to ``batch`` records, produces them (idempotent producer,
``acks=all``; a full queue is polled and retried, a delivery error stops the step),
waits for every delivery and only then writes the checkpoint: the source's state plus,
per partition of the raw and dead-letter topics, the offset after our last delivered
message. The checkpoint file is replaced atomically, in the site's state directory.

A crash after delivery and before the checkpoint would produce the last step twice.
So every message carries the connector's id and the record's source position in its
headers, and a start first scans both topics from the checkpointed offsets for this
connector's messages; records re-read from the checkpointed state whose position is
already there are skipped. The first run writes its checkpoint before it produces,
with the offsets the broker reports as ends — on Apache Kafka the log end, on the
local Tansu broker a lower bound, which only makes the scan a little longer.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import orjson
from confluent_kafka import KafkaError, KafkaException, Message
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from mlexec.connectors.delivery import ReliableProducer
from mlexec.connectors.kafka import ensure_topics
from mlexec.connectors.reading import end_offsets, read_topic
from mlexec.connectors.sources.base import Source, SourceRecord
from mlexec.errors import MlexecError, TopologyError
from mlexec.topologies.plan import TopicSpec

__all__ = [
    "HEADER_CONNECTOR",
    "HEADER_POSITION",
    "Checkpoint",
    "SiteParts",
    "ConnectorCollector",
    "ConnectorRunner",
    "ConnectorStatus",
    "StatusCollector",
    "run_all",
    "run_restarting",
]

_log = logging.getLogger(__name__)

R = TypeVar("R")

HEADER_CONNECTOR = "mlexec.connector"
HEADER_POSITION = "mlexec.position"

#: Producer settings for connectors: nothing lost, nothing doubled by retries.
PRODUCER_SETTINGS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    # a topic the broker lost fails the batch in 30 s (then made again), not in 5 min
    "message.timeout.ms": 30_000,
}


def run_restarting(
    step: Callable[[], None],
    stop: threading.Event,
    *,
    once: bool,
    status: Any,
    what: str,
    backoff: tuple[float, float] = (0.5, 30.0),
) -> None:
    """Run ``step`` until it returns or ``stop`` is set; after a failure, again after a backoff.

    Each failure counts in ``status.errors`` / ``status.last_error``; with ``once`` it is
    raised instead. The step is expected to start over from its checkpoint.
    """
    delay = backoff[0]
    while not stop.is_set():
        try:
            step()
            return
        except Exception as exc:  # the part goes on; the error is counted and logged
            with status.lock:
                status.errors += 1
                status.last_error = str(exc)
            if once:
                raise
            expected = isinstance(exc, MlexecError | KafkaException | OSError | ValueError)
            _log.warning(
                "%s failed, starting over from its checkpoint in %.1fs: %s",
                what,
                delay,
                exc,
                exc_info=not expected,
            )
            stop.wait(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not secrecy
            delay = min(delay * 2, backoff[1])


def run_all(runners: Sequence[Any], stop: threading.Event, *, once: bool, kind: str) -> None:
    """Run each runner's ``run(stop, once=once)`` in a thread of its own; wait for all.

    The first error is raised once every runner has stopped (with ``once``; running
    continuously a runner only stops when ``stop`` is set).
    """
    errors: list[BaseException] = []

    def work(runner: Any) -> None:
        try:
            runner.run(stop, once=once)
        except BaseException as exc:  # reported after every runner has stopped
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(r,), name=f"{kind}-{i}", daemon=True)
        for i, r in enumerate(runners)
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    if errors:
        first = errors[0]
        if isinstance(first, MlexecError):
            raise first
        msg = f"a {kind} failed: {first}"
        raise MlexecError(msg) from first


@dataclass(frozen=True)
class SiteParts(Generic[R]):
    """The runners of one kind (connectors, outputs) a site runs, and the topics they need."""

    kind: str
    site: str
    runners: list[R]
    topics: list[TopicSpec]
    kafka_conf: dict[str, Any]

    @property
    def statuses(self) -> list[Any]:
        return [cast(Any, r).status for r in self.runners]

    def run(self, stop: threading.Event | None = None, *, once: bool = False) -> None:
        """Run every runner until ``stop`` is set, or with ``once`` until each has caught up.

        With ``once`` the first error is raised after all have stopped; running
        continuously, a failing runner retries from its checkpoint with backoff.
        """
        if not self.runners:
            msg = f"site {self.site!r} has no {self.kind}s to run"
            raise TopologyError(msg)
        ensure_topics(self.kafka_conf, self.topics)
        for runner in self.runners:  # a broker that lost them: made again on each restart
            if hasattr(runner, "topic_specs"):
                runner.topic_specs = list(self.topics)
        run_all(self.runners, stop or threading.Event(), once=once, kind=self.kind)


class Checkpoint:
    """A JSON checkpoint file, replaced atomically (write, fsync, rename, fsync dir)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError as exc:
            msg = f"{self.path}: the connector checkpoint is not valid JSON ({exc}); move it away to start over"
            raise MlexecError(msg) from exc
        return cast(dict[str, Any], data)

    def save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(orjson.dumps(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass
class ConnectorStatus:
    """What a connector has done since its process started; exported to Prometheus."""

    usecase: str
    connector: str
    kind: str
    origin: str
    read: int = 0
    produced: int = 0
    deadlettered: int = 0
    #: Re-read after a restart and already in the topic, so not produced again.
    skipped: int = 0
    errors: int = 0
    behind: int | None = None
    behind_unit: str = ""
    position: str = ""
    last_error: str = ""
    checkpointed_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


class ConnectorRunner:
    """Drive one source into its use case's raw and dead-letter topics."""

    def __init__(
        self,
        *,
        connector_id: str,
        status: ConnectorStatus,
        open_source: Callable[[dict[str, Any] | None], Source],
        conf: dict[str, Any],
        raw_topic: str,
        deadletter_topic: str | None,
        checkpoint: Checkpoint,
        batch: int = 5000,
        topics: list[str] | None = None,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.connector_id = connector_id
        self.status = status
        self._open_source = open_source
        self._conf = conf
        self._raw = raw_topic
        self._dead = deadletter_topic
        #: Every topic this runner writes: scanned for its own messages on a restart.
        self._topics = topics or [t for t in (raw_topic, deadletter_topic) if t is not None]
        self.checkpoint = checkpoint
        self._batch = batch
        self._backoff = backoff
        self._id_header = (HEADER_CONNECTOR, connector_id.encode())
        #: The topics to (re)create at every start, set by the site's runner set.
        self.topic_specs: list[TopicSpec] = []

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event, *, once: bool = False) -> None:
        """Run until ``stop`` is set (or, with ``once``, until caught up).

        A failing step (source or broker) starts over from the checkpoint after a
        backoff; with ``once`` the error is raised instead.
        """
        run_restarting(
            lambda: self._run(stop, once),
            stop,
            once=once,
            status=self.status,
            what=f"connector {self.connector_id}",
            backoff=self._backoff,
        )

    def _run(self, stop: threading.Event, once: bool) -> None:
        if self.topic_specs:
            ensure_topics(self._conf, self.topic_specs)
        saved = self.checkpoint.load()
        if saved is None:
            offsets = {t: end_offsets(self._conf, t) for t in self._topics}
            seen: set[str] = set()
        else:
            offsets = {
                t: {int(p): o for p, o in parts.items()} for t, parts in saved["offsets"].items()
            }
            seen = self._already_produced(offsets)
        source = self._open_source(saved["state"] if saved is not None else None)
        with self.status.lock:
            self.status.origin = source.origin
        try:
            if saved is None:
                self._save(source, offsets)
            producer = ReliableProducer(
                self._conf, what=f"connector {self.connector_id}", **PRODUCER_SETTINGS
            )
            try:
                self._loop(stop, once, source, producer, offsets, seen)
            finally:
                producer.flush(30.0)
        finally:
            source.close()

    def _loop(
        self,
        stop: threading.Event,
        once: bool,
        source: Source,
        producer: ReliableProducer,
        offsets: dict[str, dict[int, int]],
        seen: set[str],
    ) -> None:
        while not stop.is_set():
            records = source.read(self._batch)
            if not records:
                self._note(behind=source.behind(), unit=source.behind_unit)
                if once:
                    return
                stop.wait(source.wait())
                continue
            fresh = records
            if seen:
                fresh = [r for r in records if r.position not in seen]
                seen.difference_update(r.position for r in records)
            delivered = self._produce(producer, source.origin, fresh)
            for (topic, partition), offset in delivered.items():
                reached = offsets.setdefault(topic, {})
                reached[partition] = max(reached.get(partition, 0), offset + 1)
            self._save(source, offsets)
            committed = getattr(source, "committed", None)
            if committed is not None:  # e.g. MQTT: acknowledge what Kafka now holds
                committed()
            bad = sum(1 for r in fresh if r.error is not None)
            with self.status.lock:
                s = self.status
                s.read += len(records)
                s.skipped += len(records) - len(fresh)
                s.produced += len(fresh) - bad
                s.deadlettered += bad
                s.position = records[-1].where
            self._note(behind=source.behind(), unit=source.behind_unit)

    def _note(self, *, behind: int | None, unit: str) -> None:
        with self.status.lock:
            self.status.behind = behind
            self.status.behind_unit = unit

    # --------------------------------------------------------------- produce

    def _produce(
        self, producer: ReliableProducer, origin: str, records: list[SourceRecord]
    ) -> dict[tuple[str, int], int]:
        """Produce and wait for every delivery; the last offset per topic-partition."""
        last: dict[tuple[str, int], int] = {}

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                tp = (cast(str, msg.topic()), cast(int, msg.partition()))
                last[tp] = max(last.get(tp, -1), cast(int, msg.offset()))

        for rec in records:
            headers: list[tuple[str, str | bytes | None]] = [
                self._id_header,
                (HEADER_POSITION, rec.position.encode()),
            ]
            headers += rec.headers
            topic = rec.topic or self._raw
            if rec.error is not None:
                if self._dead is None:
                    msg = f"{self.connector_id}: {rec.where}: {rec.error}"
                    raise MlexecError(msg)
                topic = self._dead
                headers += [
                    ("mlexec.reason", rec.error.encode()),
                    ("mlexec.stage", b"connector"),
                    ("mlexec.source", origin.encode()),
                    ("mlexec.where", rec.where.encode()),
                ]
            partition = -1 if rec.partition is None else rec.partition  # -1: by key
            producer.produce(
                topic,
                rec.value,
                key=rec.key,
                headers=headers,
                partition=partition,
                on_delivery=report,
            )
        producer.flush(60.0)
        return last

    def _save(self, source: Source, offsets: dict[str, dict[int, int]]) -> None:
        self.checkpoint.save(
            {
                "connector": self.connector_id,
                "state": source.state(),
                "offsets": {
                    t: {str(p): o for p, o in parts.items()} for t, parts in offsets.items()
                },
                "saved_at": time.time(),
            }
        )
        with self.status.lock:
            self.status.checkpointed_at = time.time()

    def _already_produced(self, offsets: dict[str, dict[int, int]]) -> set[str]:
        """Positions of this connector's messages after the checkpointed offsets."""
        seen: set[str] = set()
        for topic, after in offsets.items():
            # never past the end: a fetch beyond it waits forever on the local broker
            ends = end_offsets(self._conf, topic)
            start = {p: min(o, ends.get(p, o)) for p, o in after.items()}
            for _key, _value, headers, _p, _o in read_topic(self._conf, topic, start=start):
                if headers and self._id_header in headers:
                    seen.update(v.decode() for k, v in headers if k == HEADER_POSITION)
        if seen:
            _log.info(
                "connector %s: %d records were produced after its last checkpoint; "
                "they are skipped when re-read",
                self.connector_id,
                len(seen),
            )
        return seen


class StatusCollector(Collector):
    """Prometheus metrics read from status dataclasses at scrape time.

    ``labels`` and ``counters`` / ``gauges`` name attributes of each status; the counters
    are exported as ``<prefix>_<name>_total``, the gauges as ``<prefix>_<name>``.
    """

    def __init__(
        self,
        prefix: str,
        statuses: list[Any],
        *,
        labels: list[str],
        counters: dict[str, str],
        gauges: dict[str, str] | None = None,
    ) -> None:
        self._prefix = prefix
        self._statuses = statuses
        self._labels = labels
        self._counters = counters
        self._gauges = gauges or {}

    def collect(self) -> Iterator[Any]:
        families: dict[str, Any] = {
            name: CounterMetricFamily(f"{self._prefix}_{name}", doc, labels=self._labels)
            for name, doc in self._counters.items()
        }
        families |= {
            name: GaugeMetricFamily(f"{self._prefix}_{name}", doc, labels=self._labels)
            for name, doc in self._gauges.items()
        }
        for status in self._statuses:
            with status.lock:
                values = [str(getattr(status, label)) for label in self._labels]
                for name, family in families.items():
                    family.add_metric(values, getattr(status, name))
                self.add_extra(status, values)
        yield from families.values()
        yield from self.extra()

    def add_extra(self, status: Any, values: list[str]) -> None:
        """Add a status's metrics that do not fit the counters and gauges."""

    def extra(self) -> Iterator[Any]:
        """The families :meth:`add_extra` filled."""
        return iter(())


class ConnectorCollector(StatusCollector):
    """Prometheus metrics of a set of connectors."""

    def __init__(self, statuses: list[ConnectorStatus]) -> None:
        super().__init__(
            "mlexec_connector",
            statuses,
            labels=["usecase", "connector", "kind"],
            counters={
                "read": "Records read from the source",
                "produced": "Records produced to the raw topic",
                "deadlettered": "Records sent to the dead-letter topic",
                "skipped": "Records re-read after a restart that were already produced",
                "errors": "Failed steps (the connector starts over from its checkpoint)",
            },
            gauges={"checkpointed_at": "When the connector last wrote its checkpoint (unix time)"},
        )
        self._behind: GaugeMetricFamily | None = None
        self._position: InfoMetricFamily | None = None

    def collect(self) -> Iterator[Any]:
        labels = ["usecase", "connector", "kind"]
        self._behind = GaugeMetricFamily(
            "mlexec_connector_behind",
            "How much of the source is not read yet",
            labels=[*labels, "unit"],
        )
        self._position = InfoMetricFamily(
            "mlexec_connector_position", "Where the connector last read", labels=labels
        )
        yield from super().collect()

    def add_extra(self, status: Any, values: list[str]) -> None:
        assert self._behind is not None and self._position is not None
        if status.behind is not None:
            self._behind.add_metric([*values, status.behind_unit], status.behind)
        self._position.add_metric(values, {"position": status.position, "origin": status.origin})

    def extra(self) -> Iterator[Any]:
        yield from (f for f in (self._behind, self._position) if f is not None)
