"""Dispatch rules: *when* the model runs, as bytewax stateful logic over batches.

- :class:`MicroBatchLogic` — at most ``max_records`` records, waiting at most
  ``max_wait`` for a batch to fill; keyed by source partition so whole consumed
  batches pass through untouched.
- :class:`TumblingLogic` — fixed event-time windows per record key, closed by a
  watermark or after ``idle_close`` of wall time without data. As in Flink, the
  watermark is the *minimum* over source partitions of each one's newest event time,
  minus the allowed lateness, so one partition read ahead of another does not make
  the other's records late; a partition silent for ``idle_close`` stops holding it
  back. Records for a window already closed are dead letters.
  The state is keyed by a stable hash bucket of the record key, so one worker owns all
  of a key's windows whichever partition its records arrive on.

Time is injectable (``now``) so tests are deterministic.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
from bytewax.operators import StatefulBatchLogic

from operators.records import DeadLetter, Records

__all__ = [
    "Dispatched",
    "MicroBatchLogic",
    "TumblingLogic",
    "bucket_of",
    "split_by_bucket",
]

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Dispatched:
    """What a dispatch emits: records to reduce (with their windows) or late records."""

    records: Records | None = None
    #: Per row of ``records``: the window start (ms) it belongs to; ``None`` = no windows.
    window_starts: np.ndarray | None = None
    window_size_ms: int = 0
    late: list[DeadLetter] = field(default_factory=list)


# ---------------------------------------------------------------- micro-batch


@dataclass
class _BatchState:
    pending: list[Records]
    since: datetime | None


class MicroBatchLogic(StatefulBatchLogic[Records, Dispatched, _BatchState]):
    """Collect records until ``max_records`` or until the oldest waited ``max_wait``."""

    def __init__(
        self,
        max_records: int,
        max_wait: timedelta,
        resume: _BatchState | None = None,
        now: Clock = _utc_now,
    ) -> None:
        self._max = max_records
        self._wait = max_wait
        self._now = now
        self._pending: list[Records] = list(resume.pending) if resume else []
        self._count = sum(len(r) for r in self._pending)
        self._since = resume.since if resume else None

    def on_batch(self, values: list[Records]) -> tuple[Iterable[Dispatched], bool]:
        if self._since is None:
            self._since = self._now()
        self._pending.extend(values)
        self._count += sum(len(v) for v in values)
        if self._count >= self._max or self._wait <= timedelta(0):
            return self._flush(), StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Dispatched], bool]:
        return self._flush(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Dispatched], bool]:
        return self._flush(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return None if self._since is None else self._since + self._wait

    def _flush(self) -> list[Dispatched]:
        if not self._pending:
            self._since = None
            return []
        whole = Records.concat(self._pending)
        self._pending, self._count, self._since = [], 0, None
        return [Dispatched(records=part) for part in whole.slices(self._max)]

    def snapshot(self) -> _BatchState:
        return _BatchState(pending=list(self._pending), since=self._since)


# -------------------------------------------------------------------- tumbling


def bucket_of(key: str, buckets: int) -> int:
    """The stable bucket of a record key (crc32, the same in every process)."""
    return zlib.crc32(key.encode()) % buckets


def split_by_bucket(records: Records, buckets: int) -> list[tuple[str, Records]]:
    """Split a batch into per-bucket batches keyed ``"b<n>"`` for stateful routing."""
    if buckets == 1:
        return [("b0", records)]
    per_key: dict[str, int] = {}
    codes = np.fromiter(
        (per_key.setdefault(k, bucket_of(k, buckets)) for k in records.keys),
        dtype=np.int64,
        count=len(records),
    )
    return [(f"b{b}", records.take(codes == b)) for b in np.unique(codes)]


@dataclass
class _WindowState:
    pending: list[Records]
    #: Source partition → (newest event time in ms, wall time it was last heard from).
    partitions: dict[int, tuple[int, datetime]]
    closed_until: int | None
    last_arrival: datetime | None


class TumblingLogic(StatefulBatchLogic[Records, Dispatched, _WindowState]):
    """Event-time tumbling windows of ``size`` per record key."""

    def __init__(
        self,
        size: timedelta,
        lateness: timedelta,
        idle_close: timedelta,
        resume: _WindowState | None = None,
        now: Clock = _utc_now,
    ) -> None:
        self._size = int(size / timedelta(milliseconds=1))
        self._lateness = int(lateness / timedelta(milliseconds=1))
        self._idle = idle_close
        self._now = now
        self._pending: list[Records] = list(resume.pending) if resume else []
        self._partitions: dict[int, tuple[int, datetime]] = (
            dict(resume.partitions) if resume else {}
        )
        #: Every window ending at or before this (ms) has been emitted.
        self._closed_until = resume.closed_until if resume else None
        self._last_arrival = resume.last_arrival if resume else None

    def on_batch(self, values: list[Records]) -> tuple[Iterable[Dispatched], bool]:
        now = self._now()
        self._last_arrival = now
        out: list[Dispatched] = []
        for batch in values:
            self._heard(batch, now)
            records, late = self._split_late(batch)
            if late:
                out.append(Dispatched(late=late))
            if records is not None:
                self._pending.append(records)
        out.extend(self._close(self._watermark(now)))
        return out, StatefulBatchLogic.RETAIN

    def _heard(self, records: Records, now: datetime) -> None:
        parts = (records.ids >> np.uint64(48)).astype(np.int64)
        for part in np.unique(parts).tolist():
            newest = int(records.times[parts == part].max())
            before = self._partitions.get(part)
            self._partitions[part] = (max(newest, before[0]) if before else newest, now)

    def _watermark(self, now: datetime) -> int | None:
        live = [t for t, seen in self._partitions.values() if now - seen < self._idle]
        if not live:
            return None
        return min(live) - self._lateness

    def on_notify(self) -> tuple[Iterable[Dispatched], bool]:
        return self._close(None, everything=True), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Dispatched], bool]:
        return self._close(None, everything=True), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self._pending or self._last_arrival is None:
            return None
        return self._last_arrival + self._idle

    def snapshot(self) -> _WindowState:
        return _WindowState(
            pending=list(self._pending),
            partitions=dict(self._partitions),
            closed_until=self._closed_until,
            last_arrival=self._last_arrival,
        )

    def _split_late(self, records: Records) -> tuple[Records | None, list[DeadLetter]]:
        if self._closed_until is None:
            return records, []
        starts = records.times - records.times % self._size
        late = starts + self._size <= self._closed_until
        if not late.any():
            return records, []
        dead = [_late_letter(records, int(i), self._closed_until) for i in np.flatnonzero(late)]
        on_time = records.take(~late)
        return (on_time if len(on_time) else None), dead

    def _close(self, watermark: int | None, everything: bool = False) -> list[Dispatched]:
        if not self._pending or (watermark is None and not everything):
            return []
        whole = Records.concat(self._pending)
        starts = whole.times - whole.times % self._size
        ends = starts + self._size
        closing = np.ones(len(whole), dtype=bool) if everything else ends <= watermark
        if not closing.any():
            self._pending = [whole]
            return []
        done = whole.take(closing)
        rest = whole.take(~closing)
        self._pending = [rest] if len(rest) else []
        edge = int(ends[closing].max())
        if everything:
            edge = max(edge, int(ends.max()))
        if watermark is not None:
            edge = max(edge, watermark - watermark % self._size)
        self._closed_until = edge if self._closed_until is None else max(self._closed_until, edge)
        return [
            Dispatched(
                records=done,
                window_starts=starts[closing],
                window_size_ms=self._size,
            )
        ]


def _late_letter(records: Records, i: int, closed_until: int) -> DeadLetter:
    topic, partition, offset = _source_of(records.record_ids[i])
    value = orjson.dumps(
        {
            "key": records.keys[i],
            "time": int(records.times[i]),
            **{k: float(v[i]) for k, v in records.columns.items()},
        }
    )
    reason = (
        f"late: event time {int(records.times[i])} ms falls in a window that closed "
        f"(windows up to {closed_until} ms are emitted)"
    )
    return DeadLetter(
        value=value,
        key=records.keys[i].encode(),
        reason=reason,
        topic=topic,
        partition=partition,
        offset=offset,
        stage="dispatch",
    )


def _source_of(record_id: str) -> tuple[str, int, int]:
    topic, partition, offset = record_id.rsplit(":", 2)
    try:
        return topic, int(partition), int(offset)
    except ValueError:
        return record_id, -1, -1
