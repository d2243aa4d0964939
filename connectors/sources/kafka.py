"""Kafka sources: records from existing topics, into a use case or across a link.

Partitions are assigned, not group-joined, and the next offset of each is the
source's state — so a restart resumes exactly where the checkpoint says, and a slow
consumer-group join (seconds on the local broker) never delays the start.
:class:`KafkaTopicSource` shapes one topic's JSON records for a use case;
:class:`MirrorSource` copies topics byte for byte to ``<site>.<topic>`` on the other
side of a link, partition for partition, with provenance headers (MirrorMaker 2's
contract).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, cast

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from mlexec.connectors.kafka import produce_records
from mlexec.connectors.reading import consumer, high_watermarks
from mlexec.connectors.sources.base import RecordShaper, SourceRecord
from mlexec.errors import MlexecError
from mlexec.topologies.plan import ALERTS_TOPIC, METRICS_TOPIC, MODELS_TOPIC, remote_name
from mlexec.topologies.schema import KafkaConnector

__all__ = ["KafkaTopicSource", "MirrorSource", "priority_of"]

_ONCE_TIMEOUT = 30.0
_REFRESH = 10.0  # seconds between looks for topics that did not exist yet


class _TopicsSource:
    """Every partition of some topics, from saved offsets; one record per message."""

    behind_unit = "messages"

    def __init__(
        self,
        conf: dict[str, Any],
        topics: list[str],
        state: dict[str, Any] | None,
        *,
        start: str = "earliest",
        once: bool = False,
        required: bool = True,
    ) -> None:
        self._conf = conf
        self._topics = topics
        self._once = once
        self._start = start
        self._required = required
        self._consumer = consumer(conf, "mlexec-connector", eof=True, reset=start)
        saved = (state or {}).get("offsets", {})
        self._next: dict[tuple[str, int], int] = {
            (t, int(p)): o for t, parts in saved.items() for p, o in parts.items()
        }
        self._parts: list[tuple[str, int]] = []
        self._at_end: set[tuple[str, int]] = set()
        self._refreshed = 0.0
        self._assign()

    def _assign(self) -> None:
        """Assign the partitions of the topics that exist (refreshed every few seconds)."""
        self._refreshed = time.monotonic()
        meta = self._consumer.list_topics(timeout=30.0).topics
        parts = []
        for topic in self._topics:
            found = meta.get(topic)
            if found is None or found.error is not None or not found.partitions:
                if self._required:
                    self._consumer.close()
                    msg = f"{self._conf.get('bootstrap.servers')}/{topic}: no such topic"
                    raise MlexecError(msg)
                continue
            parts += [(topic, p) for p in sorted(found.partitions)]
        if parts == self._parts:
            return
        default = OFFSET_BEGINNING if self._start == "earliest" else OFFSET_END
        self._consumer.assign(
            [TopicPartition(t, p, self._next.get((t, p), default)) for t, p in parts]
        )
        self._parts = parts

    def state(self) -> dict[str, Any]:
        offsets: dict[str, dict[str, int]] = {}
        for (topic, p), o in self._next.items():
            offsets.setdefault(topic, {})[str(p)] = o
        return {"offsets": offsets}

    def behind(self) -> int | None:
        total = 0
        for topic, p in self._parts:
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, p), cached=True
                )
            except KafkaException:
                return None
            if high >= 0 and (topic, p) in self._next:
                total += max(0, high - self._next[(topic, p)])
        return total

    def wait(self) -> float:
        return 0.0  # consume() below already waits for data

    def close(self) -> None:
        self._consumer.close()

    def read(self, limit: int) -> list[SourceRecord]:
        if not self._required and time.monotonic() - self._refreshed > _REFRESH:
            self._assign()
        deadline = time.monotonic() + (_ONCE_TIMEOUT if self._once else 0.0)
        while True:
            out = self._consume(limit)
            if out or not self._once or len(self._at_end) >= len(self._parts):
                return out
            if time.monotonic() > deadline:
                msg = f"{self._topics}: did not reach the end within {_ONCE_TIMEOUT}s"
                raise MlexecError(msg)

    def _consume(self, limit: int) -> list[SourceRecord]:
        out: list[SourceRecord] = []
        for msg in self._consumer.consume(limit, 0.2):
            err = msg.error()
            tp = (cast(str, msg.topic()), cast(int, msg.partition()))
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._at_end.add(tp)
                    continue
                if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART and not self._required:
                    continue
                msg_ = f"{self._conf.get('bootstrap.servers')}: {err}"
                raise MlexecError(msg_)
            self._at_end.discard(tp)
            self._next[tp] = cast(int, msg.offset()) + 1
            out.append(self._record(msg))
        return out

    def _record(self, msg: Message) -> SourceRecord:
        raise NotImplementedError


class KafkaTopicSource(_TopicsSource):
    """One topic's JSON records, shaped for a use case."""

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
        super().__init__(conf, [config.topic], state, start=config.start, once=once)

    def _record(self, msg: Message) -> SourceRecord:
        position = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"
        value = msg.value()
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


_LAST = 2
#: Seconds of a link's bandwidth one read may spend at once.
_BURST = 0.25


def _sheddable(topic: str) -> bool:
    """What a backlog budget may leave behind: neither alerts, health nor models."""
    return priority_of(topic) > 0 and topic != MODELS_TOPIC


def priority_of(topic: str) -> int:
    """A topic's place on a link, first first: alerts and health, predictions, the rest."""
    if topic in (ALERTS_TOPIC, METRICS_TOPIC):
        return 0
    if topic.endswith((".predictions", ".replies")):
        return 1
    return _LAST


class MirrorSource(_TopicsSource):
    """Topics of one site copied to ``<site>.<topic>`` on another, partition for partition.

    Key, value and headers are kept; ``mlexec.mirror.source`` and
    ``mlexec.mirror.offset`` say where a record came from. Topics that do not exist
    yet are looked for again every few seconds.

    What is waiting goes by priority (:func:`priority_of`): while alerts or health wait,
    predictions and samples are paused, and while predictions wait, samples — so a thin
    or newly restored link carries what matters first. With ``bandwidth`` (bytes a
    second) it reads no faster than that.

    With ``backlog`` (records), at most that many wait to be sent: past it — a member
    back after a long outage — the oldest records of the lowest priority (samples, then
    predictions; never alerts, health or models) are not sent. They are counted per
    topic in the source's state (``dropped``) and reported by an alert on the site's
    ``mlexec.alerts``, which the link carries first.
    """

    def __init__(
        self,
        site: str,
        conf: dict[str, Any],
        topics: list[str],
        state: dict[str, Any] | None,
        *,
        once: bool = False,
        bandwidth: float | None = None,
        backlog: int | None = None,
        target: str = "",
    ) -> None:
        self.site = site
        self.target = target
        self.origin = f"{site} ({conf.get('bootstrap.servers')})"
        self._budget = backlog
        self._shed_at = 0.0
        self.dropped: dict[str, int] = dict((state or {}).get("dropped", {}))
        self._paused: set[tuple[str, int]] = set()
        self._rate = bandwidth
        self._tokens = (bandwidth or 0.0) * _BURST
        self._filled = time.monotonic()
        self._size = 1024.0  # bytes a message, as measured so far
        super().__init__(conf, topics, state, once=once, required=False)
        if backlog is not None:  # the link is back: what waited while it was down
            ends = {
                (topic, p): high
                for topic in {t for t, _ in self._parts}
                for p, high in high_watermarks(conf, topic).items()
            }
            if self._shed(ends):
                self._consumer.assign(
                    [
                        TopicPartition(t, p, self._next.get((t, p), OFFSET_BEGINNING))
                        for t, p in self._parts
                    ]
                )

    def partitions(self) -> dict[str, int]:
        """Partition count per source topic that exists (the remote topics need as many)."""
        counts: dict[str, int] = {}
        for topic, _p in self._parts:
            counts[topic] = counts.get(topic, 0) + 1
        return counts

    def _waiting(self, tp: tuple[str, int]) -> bool:
        try:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
        except KafkaException:
            return False
        return high > self._next.get(tp, 0)

    def _prioritize(self) -> None:
        """Pause every partition below the first priority with records waiting."""
        waiting = [priority_of(t) for t, p in self._parts if self._waiting((t, p))]
        top = min(waiting, default=_LAST)  # nothing known to wait: nothing paused
        pause = {tp for tp in self._parts if priority_of(tp[0]) > top}
        if pause == self._paused:
            return
        if pause - self._paused:
            self._consumer.pause([TopicPartition(*tp) for tp in pause - self._paused])
        resumed = self._paused - pause
        if resumed:
            self._consumer.resume([TopicPartition(*tp) for tp in resumed])
            for tp in resumed:  # on from what was last taken, whatever was fetched meanwhile
                if tp in self._next:
                    with contextlib.suppress(KafkaException):
                        self._consumer.seek(TopicPartition(*tp, self._next[tp]))
        self._paused = pause

    def state(self) -> dict[str, Any]:
        return {**super().state(), "dropped": dict(self.dropped)}

    def _shed(self, ends: dict[tuple[str, int], int] | None = None) -> bool:
        """Past the backlog budget: skip the oldest of the lowest priority first, counted.

        ``ends``: the partitions' ends as scanned at the start (the consumer knows none
        yet); later, the ends its fetches saw. Whether anything was skipped.
        """
        if self._budget is None or (ends is None and time.monotonic() < self._shed_at):
            return False
        self._shed_at = time.monotonic() + 1.0
        waiting: dict[tuple[str, int], tuple[int, int]] = {}  # (next, end)
        for tp in self._parts:
            if ends is not None:
                low, high = 0, ends.get(tp, -1)
            else:
                try:
                    low, high = self._consumer.get_watermark_offsets(
                        TopicPartition(*tp), cached=True
                    )
                except KafkaException:
                    continue
            if high >= 0:
                start = self._next.get(tp, max(low, 0))
                waiting[tp] = (start, max(high, start))
        excess = sum(high - start for start, high in waiting.values()) - self._budget
        if excess <= 0:
            return False
        skipped: dict[str, int] = {}
        for level in sorted({priority_of(t) for t, _ in waiting if _sheddable(t)}, reverse=True):
            parts = sorted(
                tp for tp in waiting if _sheddable(tp[0]) and priority_of(tp[0]) == level
            )
            there = {tp: waiting[tp][1] - waiting[tp][0] for tp in parts}
            total = sum(there.values())
            take = min(total, excess)
            if take <= 0:
                continue
            # each partition gives up its share, so what goes up is the newest everywhere
            skips = {tp: there[tp] * take // total for tp in parts}
            for tp in sorted(parts, key=lambda tp: -there[tp] + skips[tp])[
                : take - sum(skips.values())
            ]:
                skips[tp] += 1
            for tp, skip in skips.items():
                if skip <= 0:
                    continue
                start = waiting[tp][0]
                if ends is None:
                    with contextlib.suppress(KafkaException):
                        self._consumer.seek(TopicPartition(*tp, start + skip))
                self._next[tp] = start + skip
                skipped[tp[0]] = skipped.get(tp[0], 0) + skip
            excess -= take
            if excess <= 0:
                break
        for topic, n in skipped.items():
            self.dropped[topic] = self.dropped.get(topic, 0) + n
        if skipped:
            self._report(skipped)
        return bool(skipped)

    def _report(self, skipped: dict[str, int]) -> None:
        at = int(time.time() * 1000)
        alerts = [
            {
                "kind": "link",
                "usecase": topic.split(".", 1)[0],
                "site": self.site,
                "subject": topic,
                "statistic": "records not sent",
                "value": n,
                "threshold": self._budget,
                "severity": "warning",
                "message": (
                    f"{n:,} records of {topic} past the link's backlog of {self._budget:,} were "
                    f"not sent to {self.target or 'the other side'} "
                    f"({self.dropped[topic]:,} in all); they stay on {self.site}"
                ),
                "at": at,
            }
            for topic, n in skipped.items()
        ]
        produce_records(
            self._conf,
            ALERTS_TOPIC,
            [
                (topic.split(".", 1)[0].encode(), orjson.dumps(a))
                for topic, a in zip(skipped, alerts, strict=True)
            ],
        )

    def _consume(self, limit: int) -> list[SourceRecord]:
        self._shed()
        self._prioritize()
        if self._rate is None:
            return super()._consume(limit)
        self._refill()
        chunk = self._rate * _BURST / 2
        if self._tokens < chunk:  # over the budget: wait for a chunk's worth of it
            time.sleep((chunk - self._tokens) / self._rate)
            self._refill()
        # a read of what the budget allows: priorities are looked at again soon
        out = super()._consume(max(1, min(limit, int(self._tokens / self._size))))
        if out:
            spent = sum(len(r.value or b"") + len(r.key or b"") for r in out)
            self._size = 0.8 * self._size + 0.2 * spent / len(out)
            self._tokens -= spent
        return out

    def _refill(self) -> None:
        assert self._rate is not None
        now = time.monotonic()
        burst = self._rate * _BURST
        self._tokens = min(burst, self._tokens + (now - self._filled) * self._rate)
        self._filled = now

    def _record(self, msg: Message) -> SourceRecord:
        topic, partition = cast(str, msg.topic()), cast(int, msg.partition())
        position = f"{topic}:{partition}:{msg.offset()}"
        headers = tuple(cast(list[tuple[str, bytes]], msg.headers() or [])) + (
            ("mlexec.mirror.source", self.site.encode()),
            ("mlexec.mirror.offset", position.encode()),
        )
        return SourceRecord(
            position,
            position,
            msg.key(),
            msg.value(),
            topic=remote_name(self.site, topic),
            partition=partition,
            headers=headers,
        )
