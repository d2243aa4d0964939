"""Dispatch rules: *when* the model runs, as bytewax stateful logic over batches.

Each rule turns batches of parsed records into :class:`Dispatched` items — the
records one model run sees, each row tagged with the *group* (window) it reduces
into. Rules that count or wait hold bounded state that bytewax snapshots, so a
restart resumes them:

- per record (:func:`per_record`) — stateless; each record is its own group;
- micro-batch — :func:`eager_batches` cuts each consumed batch to ``max_records`` where
  it was read; :class:`MicroBatchLogic` (``eager: false``) collects across polls up to
  ``max_records``, waiting at most ``max_wait``, keyed by source partition;
- event-time windows (tumbling, sliding, session) — :mod:`operators.windows`;
- :class:`CountLogic` — every ``count`` records of a key;
- :class:`CronLogic` — on a cron schedule, over what arrived since the last run;
- :class:`ConditionLogic` — when a field crosses a threshold, with hysteresis and a
  cool-down;
- on request — :mod:`operators.requests`.

Stateful rules are keyed by a stable hash bucket of the record key
(:func:`split_by_bucket`), so one worker owns all of a key's state whichever
partition its records arrive on. Time is injectable (``now``) so tests are
deterministic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import orjson
from bytewax.operators import StatefulBatchLogic
from croniter import croniter

from mlexec.operators.buckets import NO_TIME, Progress, Slice, bucket_of, split_by_bucket
from mlexec.operators.records import DeadLetter, Records

__all__ = [
    "NO_TIME",
    "Clock",
    "Progress",
    "ConditionLogic",
    "CountLogic",
    "CronLogic",
    "Dispatched",
    "MicroBatchLogic",
    "Reply",
    "Request",
    "Slice",
    "bucket_of",
    "eager_batches",
    "gather",
    "late_letter",
    "ms",
    "per_record",
    "split_by_bucket",
    "utc_now",
]

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock every time-based rule uses unless a test gives it another."""
    return datetime.now(UTC)


def ms(value: timedelta) -> int:
    """A duration in whole milliseconds."""
    return int(value / timedelta(milliseconds=1))


@dataclass(frozen=True)
class Request:
    """Where the answer to an on-request dispatch goes."""

    request_id: str
    reply_to: str


@dataclass(frozen=True)
class Reply:
    """An error reply: the request could not be scored, and why."""

    request: Request
    error: str


@dataclass
class Dispatched:
    """What a dispatch emits: records for one model run, late records, error replies.

    ``groups`` says, per row, which reduced record (window) the row belongs to within
    its key — the reduced id is ``<uc>:<key>:<group>`` — and ``group_times`` the event
    time of that reduced record (default: the group itself, a window start).
    Without groups a key's rows reduce to one record (micro-batch); ``per_record``
    makes every row its own.
    """

    records: Records | None = None
    groups: np.ndarray | None = None
    group_times: np.ndarray | None = None
    per_record: bool = False
    #: A window emitted again because a late record arrived for it (same ids).
    correction: bool = False
    request: Request | None = None
    late: list[DeadLetter] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)


def gather(items: list[Dispatched]) -> list[Dispatched]:
    """The windows of every bucket that one activation closed, as one dispatch.

    Keyed state lives in many buckets, so one watermark closes one window batch per
    bucket; gathered, they take one reduction, one inference batch and one publish
    instead of one each (a key is in one bucket: no two share a reduced id). What is
    not a plain closed window — corrections, requests, replies, late records, per-record
    or ungrouped dispatches — goes on as it came.
    """
    plain = [
        d
        for d in items
        if d.records is not None
        and d.groups is not None
        and not (d.correction or d.per_record or d.request or d.late or d.replies)
    ]
    if len(plain) < 2:
        return items
    times = None
    if any(d.group_times is not None for d in plain):
        times = np.concatenate(
            [d.groups if d.group_times is None else d.group_times for d in plain]
        )
    merged = Dispatched(
        records=Records.concat([d.records for d in plain]),  # type: ignore[misc]
        groups=np.concatenate([d.groups for d in plain]),  # type: ignore[misc]
        group_times=times,
    )
    taken = {id(d) for d in plain}
    return [*(d for d in items if id(d) not in taken), merged]


def per_record(records: Records) -> Dispatched:
    """The per-record rule: every record is a dispatch of its own (inference stays batched)."""
    return Dispatched(records=records, per_record=True)


# ---------------------------------------------------------------- micro-batch


@dataclass
class _BatchState:
    pending: list[Records]
    since: datetime | None


def eager_batches(records: Records, max_records: int) -> list[Dispatched]:
    """The eager micro-batch: each consumed batch at once, cut to ``max_records``.

    No wait and no state — a batch goes where it was read, with no exchange between
    workers; a backlog still makes full batches because each poll takes up to the
    source's batch size.
    """
    return [Dispatched(records=part) for part in records.slices(max_records)]


class MicroBatchLogic(StatefulBatchLogic[Records, Dispatched, _BatchState]):
    """Collect records until ``max_records`` or until the oldest waited ``max_wait``."""

    def __init__(
        self,
        max_records: int,
        max_wait: timedelta,
        resume: _BatchState | None = None,
        now: Clock = utc_now,
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


# ------------------------------------------------------------------ buckets


def _plain(value: object) -> object:
    """A column's value as JSON can carry it: text as it is, numbers as floats."""
    if value is None or isinstance(value, str | list):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    return float(value)  # type: ignore[arg-type]


def late_letter(records: Records, i: int, reason: str) -> DeadLetter:
    """Row ``i`` of ``records`` as a dead letter of the dispatch stage.

    With the original bytes where the parser kept them (rules that hold records), so the
    dead letter can be replayed; otherwise the row as JSON (``key``, ``time``, fields).
    """
    topic, partition, offset = _source_of(records.record_ids[i])
    if records.raw is not None:
        value = records.raw[i]
    else:
        value = orjson.dumps(
            {
                "key": records.keys[i],
                "time": int(records.times[i]),
                **{k: _plain(v[i]) for k, v in records.columns.items()},
            }
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


def _concat(parts: list[Records]) -> Records | None:
    parts = [p for p in parts if len(p)]
    return Records.concat(parts) if parts else None


def _key_runs(keys: list[str]) -> dict[str, np.ndarray]:
    """Per key, the positions of its rows in arrival order."""
    positions: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        positions.setdefault(k, []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in positions.items()}


# -------------------------------------------------------------------- count


@dataclass
class _CountState:
    pending: Records | None
    #: Per key, how many windows it has completed (the next window's number).
    windows: dict[str, int]


class CountLogic(StatefulBatchLogic[Records, Dispatched, _CountState]):
    """Per key, every ``count`` records in arrival order form window number 0, 1, 2, ….

    A window's event time is its first record's. An unfinished window waits (across
    restarts) for its remaining records.
    """

    def __init__(self, count: int, resume: _CountState | None = None) -> None:
        self._count = count
        self._pending = resume.pending if resume else None
        self._windows: dict[str, int] = dict(resume.windows) if resume else {}

    def on_batch(self, values: list[Records]) -> tuple[Iterable[Dispatched], bool]:
        whole = _concat(([self._pending] if self._pending is not None else []) + values)
        if whole is None:
            return [], StatefulBatchLogic.RETAIN
        take: list[np.ndarray] = []
        groups: list[np.ndarray] = []
        firsts: list[np.ndarray] = []
        keep: list[np.ndarray] = []
        for key, rows in _key_runs(whole.keys).items():
            full = len(rows) // self._count * self._count
            if full:
                first = self._windows.get(key, 0)
                number = first + np.arange(full) // self._count
                starts = whole.times[rows[: full : self._count]]
                take.append(rows[:full])
                groups.append(number)
                firsts.append(np.repeat(starts, self._count))
                self._windows[key] = first + full // self._count
            keep.append(rows[full:])
        rest = np.sort(np.concatenate(keep)) if keep else np.empty(0, np.int64)
        self._pending = whole.take(rest) if len(rest) else None
        if not take:
            return [], StatefulBatchLogic.RETAIN
        index = np.concatenate(take)
        out = Dispatched(
            records=whole.take(index),
            groups=np.concatenate(groups),
            group_times=np.concatenate(firsts),
        )
        return [out], StatefulBatchLogic.RETAIN

    def snapshot(self) -> _CountState:
        return _CountState(pending=self._pending, windows=dict(self._windows))


# --------------------------------------------------------------------- cron


@dataclass
class _CronState:
    pending: list[Records]
    #: The last tick run (the next one is computed from it, so none is skipped).
    last_tick: datetime


class CronLogic(StatefulBatchLogic[Records, Dispatched, _CronState]):
    """On each tick of ``schedule`` run over the records that arrived since the last tick.

    The group of every record is the tick's time (ms), so a key reduces to one record
    per tick. After a restart, ticks that fell due while stopped run at once, one by
    one, in order. When the input ends (a run to the end), what is pending runs as the
    next tick.
    """

    def __init__(
        self,
        schedule: str,
        timezone: str = "UTC",
        resume: _CronState | None = None,
        now: Clock = utc_now,
    ) -> None:
        self._schedule = schedule
        self._zone = ZoneInfo(timezone)
        self._now = now
        self._pending: list[Records] = list(resume.pending) if resume else []
        self._last = resume.last_tick if resume else now()

    def _next(self) -> datetime:
        after = self._last.astimezone(self._zone)
        tick: datetime = croniter(self._schedule, after).get_next(datetime)
        return tick.astimezone(UTC)

    def on_batch(self, values: list[Records]) -> tuple[Iterable[Dispatched], bool]:
        self._pending.extend(v for v in values if len(v))
        return self._due(), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Dispatched], bool]:
        return self._due(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Dispatched], bool]:
        return self._run(self._next()), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return self._next()

    def _due(self) -> list[Dispatched]:
        tick = self._next()
        if tick > self._now():
            return []
        out = self._run(tick)
        self._last = tick
        return out

    def _run(self, tick: datetime) -> list[Dispatched]:
        whole = _concat(self._pending)
        self._pending = []
        if whole is None:
            return []
        at = int(tick.timestamp() * 1000)
        return [Dispatched(records=whole, groups=np.full(len(whole), at, dtype=np.int64))]

    def snapshot(self) -> _CronState:
        return _CronState(pending=list(self._pending), last_tick=self._last)


# ---------------------------------------------------------------- condition


@dataclass
class _KeyTrigger:
    armed: bool = True
    last_fired: int | None = None


@dataclass
class _ConditionState:
    buffer: Records | None
    keys: OrderedDict[str, _KeyTrigger]


class ConditionLogic(StatefulBatchLogic[Records, Dispatched, _ConditionState]):
    """Fire when ``field`` crosses a threshold, per key, in arrival order.

    ``above`` fires on a value above it and re-arms once a value falls below ``clear``
    (hysteresis); ``below`` mirrors it. After a firing no new one comes before
    ``cooldown`` of event time. A firing dispatches the key's records of the last
    ``lookback`` up to and including the crossing record; its group is the crossing
    record's event time.
    """

    def __init__(
        self,
        column: str,
        *,
        above: float | None = None,
        below: float | None = None,
        clear: float | None = None,
        cooldown: timedelta = timedelta(0),
        lookback: timedelta = timedelta(0),
        max_keys: int = 100_000,
        resume: _ConditionState | None = None,
    ) -> None:
        if (above is None) == (below is None):
            msg = "exactly one of above / below"
            raise ValueError(msg)
        self._column = column
        self._rising = above is not None
        self._threshold = float(above if above is not None else below)  # type: ignore[arg-type]
        self._clear = float(clear) if clear is not None else self._threshold
        self._cooldown = ms(cooldown)
        self._lookback = ms(lookback)
        self._max_keys = max_keys
        self._buffer = resume.buffer if resume else None
        self._keys: OrderedDict[str, _KeyTrigger] = (
            OrderedDict(resume.keys) if resume else OrderedDict()
        )

    def on_batch(self, values: list[Records]) -> tuple[Iterable[Dispatched], bool]:
        whole = _concat(([self._buffer] if self._buffer is not None else []) + values)
        if whole is None:
            return [], StatefulBatchLogic.RETAIN
        fresh_from = len(self._buffer) if self._buffer is not None else 0
        v = whole.columns[self._column]
        if self._rising:
            fires, clears = v > self._threshold, v < self._clear
        else:
            fires, clears = v < self._threshold, v > self._clear
        take: list[np.ndarray] = []
        groups: list[np.ndarray] = []
        runs = _key_runs(whole.keys)
        for key, rows in runs.items():
            new = rows[rows >= fresh_from]
            if not len(new):
                continue
            state = self._keys.pop(key, None) or _KeyTrigger()
            self._keys[key] = state  # most recently seen last
            for i in new[fires[new] | clears[new]].tolist():
                t = int(whole.times[i])
                if clears[i]:
                    state.armed = True
                    continue
                cooling = state.last_fired is not None and t < state.last_fired + self._cooldown
                if not state.armed or cooling:
                    continue
                state.armed, state.last_fired = False, t
                window = rows[(rows <= i) & (whole.times[rows] >= t - self._lookback)]
                window = window[whole.times[window] <= t]
                take.append(window)
                groups.append(np.full(len(window), t, dtype=np.int64))
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        self._buffer = self._trim(whole, runs)
        if not take:
            return [], StatefulBatchLogic.RETAIN
        out = Dispatched(records=whole.take(np.concatenate(take)), groups=np.concatenate(groups))
        return [out], StatefulBatchLogic.RETAIN

    def _trim(self, whole: Records, runs: dict[str, np.ndarray]) -> Records | None:
        """Keep, per remembered key, only the records a future lookback can reach."""
        keep = []
        for key, rows in runs.items():
            if key not in self._keys:
                continue
            newest = whole.times[rows].max()
            keep.append(rows[whole.times[rows] >= newest - self._lookback])
        if not keep:
            return None
        return whole.take(np.sort(np.concatenate(keep)))

    def snapshot(self) -> _ConditionState:
        return _ConditionState(buffer=self._buffer, keys=OrderedDict(self._keys))
