"""Event-time windows: tumbling, sliding (hop) and session, with a watermark.

As in Flink, each source partition has a watermark — its newest event time minus the
allowed ``lateness`` — and a window closes once the *minimum* over all partitions has
passed its end, so one partition read ahead of another does not make the other's
records late. A partition silent for ``idle_close`` stops holding the others back, and
a whole source silent for that long closes every open window.

Whether a record is late is decided against its *own partition's* progress when it
arrived (``Slice.before``): a tumbling or sliding window is late for a record when its
end is at or behind that watermark, a session when the record's time is. That makes
the result independent of how partitions interleave — one worker or two give the same
windows — and a window never closes before all its on-time records are in.

Late records go, by policy, to the dead-letter topic with the reason, or re-emit their
window as a *correction* (same ids, ``correction=True``) while the window is younger
than ``correct_for`` (tumbling and sliding windows: a late record can merge or split
sessions already emitted, so sessions dead-letter late records).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
from bytewax.operators import StatefulBatchLogic

from mlexec.operators.dispatch import (
    NO_TIME,
    Clock,
    Dispatched,
    Progress,
    Slice,
    late_letter,
    ms,
    utc_now,
)
from mlexec.operators.records import Records

__all__ = ["WindowLogic", "WindowShape"]


@dataclass(frozen=True)
class WindowShape:
    """Which windows: ``tumbling`` (size), ``sliding`` (size, hop) or ``session`` (gap)."""

    kind: Literal["tumbling", "sliding", "session"]
    size_ms: int = 0
    hop_ms: int = 0
    gap_ms: int = 0

    @classmethod
    def tumbling(cls, size: timedelta) -> WindowShape:
        return cls("tumbling", size_ms=ms(size), hop_ms=ms(size))

    @classmethod
    def sliding(cls, size: timedelta, hop: timedelta) -> WindowShape:
        return cls("sliding", size_ms=ms(size), hop_ms=ms(hop))

    @classmethod
    def session(cls, gap: timedelta) -> WindowShape:
        return cls("session", gap_ms=ms(gap))

    def fixed(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tumbling / sliding: (row index, window start) of every window of every row."""
        per = self.size_ms // self.hop_ms
        base = times - times % self.hop_ms
        rows = np.repeat(np.arange(len(times)), per)
        starts = np.repeat(base, per) - np.tile(np.arange(per) * self.hop_ms, len(times))
        return rows, starts


@dataclass
class _Closed:
    """A closed window kept for corrections: its rows, start and end."""

    records: Records
    start: int
    end: int


@dataclass
class _WindowState:
    pending: Records | None
    #: Per pending row: windows ending at or before this (ms) are not its to join.
    floors: np.ndarray | None
    progress: dict[int, int]
    closed_until: int | None
    #: Per key, the end of its last closed session (sessions only).
    session_edges: dict[str, int]
    closed: dict[tuple[str, int], _Closed] = field(default_factory=dict)
    last_arrival: datetime | None = None


class WindowLogic(StatefulBatchLogic[Slice, Dispatched, _WindowState]):
    """Event-time windows of ``shape`` per record key over ``partitions`` source partitions."""

    def __init__(
        self,
        shape: WindowShape,
        *,
        partitions: int,
        lateness: timedelta = timedelta(0),
        late: Literal["deadletter", "correction"] = "deadletter",
        correct_for: timedelta = timedelta(hours=1),
        idle_close: timedelta = timedelta(seconds=5),
        resume: _WindowState | None = None,
        now: Clock = utc_now,
    ) -> None:
        if shape.kind == "session" and late == "correction":
            msg = (
                "session windows take late: deadletter — a late record can merge or split "
                "sessions already emitted, which a correction of one window cannot express"
            )
            raise ValueError(msg)
        self._shape = shape
        self._lateness = ms(lateness)
        self._correct = late == "correction"
        self._correct_for = ms(correct_for)
        self._idle = idle_close
        self._now = now
        started = now()
        #: Rows waiting for their windows to close, in chunks (joined only to close).
        self._chunks: list[tuple[Records, np.ndarray]] = []
        if resume and resume.pending is not None and resume.floors is not None:
            self._chunks.append((resume.pending, resume.floors))
        #: No pending window ends before this: a lower watermark closes nothing.
        self._min_end = self._earliest_end(resume.pending) if resume and resume.pending else None
        self._progress = Progress(
            partitions, idle_close, started, resume.progress if resume else None
        )
        self._closed_until = resume.closed_until if resume else None
        self._edges: dict[str, int] = dict(resume.session_edges) if resume else {}
        self._closed: dict[tuple[str, int], _Closed] = dict(resume.closed) if resume else {}
        # A restart's own silence is not the source's: the idle close of the windows
        # resumed open counts from now, not from the last record before the restart.
        self._last_arrival = started if self._chunks else None

    # ------------------------------------------------------------ bytewax

    def on_batch(self, values: list[Slice]) -> tuple[Iterable[Dispatched], bool]:
        now = self._now()
        out: list[Dispatched] = []
        fresh: list[tuple[Records, np.ndarray]] = []
        for piece in values:
            if piece.records is not None and piece.before is not None:
                self._last_arrival = now
                admitted = self._admit(piece, out)
                if admitted is not None:
                    fresh.append(admitted)
            self._progress.heard(piece, now)
        for records, floors in fresh:
            self._chunks.append((records, floors))
            earliest = self._earliest_end(records)
            self._min_end = earliest if self._min_end is None else min(self._min_end, earliest)
        out.extend(self._close(self._watermark(now)))
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Dispatched], bool]:
        return self._close(None, everything=True), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Dispatched], bool]:
        return self._close(None, everything=True), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self._chunks or self._last_arrival is None:
            return None
        return self._last_arrival + self._idle

    def snapshot(self) -> _WindowState:
        pending, floors = self._joined()
        return _WindowState(
            pending=pending,
            floors=floors,
            progress=dict(self._progress.newest),
            closed_until=self._closed_until,
            session_edges=dict(self._edges),
            closed=dict(self._closed),
            last_arrival=self._last_arrival,
        )

    # ------------------------------------------------------------ lateness

    def _watermark(self, now: datetime) -> int | None:
        slowest = self._progress.watermark(now)
        return None if slowest is None else slowest - self._lateness

    def _admit(self, piece: Slice, out: list[Dispatched]) -> tuple[Records, np.ndarray] | None:
        """The piece's rows that go on, with their floors; the rest are late.

        A row's *mark* is its own partition's watermark when it arrived. With the
        dead-letter policy a window ending at or before the mark is closed to the row;
        with corrections only one ending ``correct_for`` before it is, and a late row
        for a window that has already been emitted re-emits it.
        """
        records, before = piece.records, piece.before
        assert records is not None and before is not None
        mark = np.maximum(before, self._progress.of(piece.partition))
        mark = np.where(mark == NO_TIME, NO_TIME, mark - self._lateness)
        floor = np.where(
            mark == NO_TIME, NO_TIME, mark - self._correct_for if self._correct else mark
        )
        times = records.times
        if self._shape.kind == "session":
            return self._admit_session(records, mark, floor, out)
        closed_until = self._closed_until if self._closed_until is not None else NO_TIME
        if self._shape.kind == "tumbling":  # one window a row: most batches have no late row
            ends = times - times % self._shape.hop_ms + self._shape.size_ms
            if not bool(((ends <= floor) | (ends <= closed_until)).any()):
                return records, floor
        rows, starts = self._shape.fixed(times)
        ends = starts + self._shape.size_ms
        refused = ends <= floor[rows]
        emitted = (ends <= closed_until) & ~refused
        for i in np.unique(rows[refused]).tolist():
            self._refuse(records, i, starts[refused & (rows == i)], int(mark[i]), out)
        if self._correct:
            for j in np.flatnonzero(emitted).tolist():
                i, start = int(rows[j]), int(starts[j])
                self._correct_window(
                    records, i, records.keys[i], start, start + self._shape.size_ms
                )
                out.append(self._correction(records.keys[i], start))
        joins = np.zeros(len(records), dtype=bool)
        joins[rows[~refused & ~emitted]] = True
        if not self._correct and emitted.any():
            # a window already emitted (idle close, end of input) takes no more rows:
            # they are dead letters with the reason, never silently dropped
            refused_rows = set(np.unique(rows[refused]).tolist())
            for i in np.unique(rows[emitted]).tolist():
                if not joins[i] and i not in refused_rows:
                    self._refuse_emitted(records, i, starts[emitted & (rows == i)], out)
        if not joins.any():
            return None
        return (records, floor) if joins.all() else (records.take(joins), floor[joins])

    def _admit_session(
        self, records: Records, mark: np.ndarray, floor: np.ndarray, out: list[Dispatched]
    ) -> tuple[Records, np.ndarray] | None:
        times = records.times
        edges = np.fromiter(
            (self._edges.get(k, NO_TIME) for k in records.keys), np.int64, len(records)
        )
        refused = times < floor
        behind = (times < edges) & ~refused  # in or before a session already emitted
        for i in np.flatnonzero(refused).tolist():
            t, key = int(times[i]), records.keys[i]
            reason = (
                f"late: event time {t} ms is behind the watermark ({int(mark[i])} ms)"
                + (f" by more than correct_for ({self._correct_for} ms)" if self._correct else "")
                + f"; key {key!r}"
            )
            out.append(Dispatched(late=[late_letter(records, i, reason)]))
        for i in np.flatnonzero(behind).tolist():
            reason = (
                f"late: event time {int(times[i])} ms falls in a session of key "
                f"{records.keys[i]!r} that closed (sessions up to {int(edges[i])} ms are emitted)"
            )
            out.append(Dispatched(late=[late_letter(records, i, reason)]))
        joins = ~refused & ~behind
        if not joins.any():
            return None
        return (records, floor) if joins.all() else (records.take(joins), floor[joins])

    def _refuse(
        self, records: Records, i: int, starts: np.ndarray, mark: int, out: list[Dispatched]
    ) -> None:
        size = self._shape.size_ms
        spans = ", ".join(f"[{s}, {s + size})" for s in starts.tolist())
        reason = (
            f"late: event time {int(records.times[i])} ms is behind the watermark ({mark} ms)"
            + (f" by more than correct_for ({self._correct_for} ms)" if self._correct else "")
            + f"; its window(s) {spans} closed"
        )
        out.append(Dispatched(late=[late_letter(records, i, reason)]))

    def _refuse_emitted(
        self, records: Records, i: int, starts: np.ndarray, out: list[Dispatched]
    ) -> None:
        size = self._shape.size_ms
        spans = ", ".join(f"[{s}, {s + size})" for s in starts.tolist())
        reason = (
            f"late: event time {int(records.times[i])} ms falls in window(s) {spans} of key "
            f"{records.keys[i]!r} that were already emitted (windows up to "
            f"{self._closed_until} ms are closed: idle_close or the end of the input closed "
            "them); late: correction re-emits such a window instead"
        )
        out.append(Dispatched(late=[late_letter(records, i, reason)]))

    def _correct_window(self, records: Records, i: int, key: str, group: int, end: int) -> None:
        row = records.take(np.asarray([i]))
        kept = self._closed.get((key, group))
        whole = row if kept is None else Records.concat([kept.records, row])
        start = group if kept is None else kept.start
        self._closed[(key, group)] = _Closed(whole, start, max(end, kept.end if kept else end))

    def _correction(self, key: str, group: int) -> Dispatched:
        whole = self._closed[(key, group)].records
        return Dispatched(
            records=whole, groups=np.full(len(whole), group, dtype=np.int64), correction=True
        )

    # ------------------------------------------------------------ closing

    def _earliest_end(self, records: Records) -> int:
        """A lower bound of the end of any window a row of ``records`` can be in."""
        times = records.times
        if self._shape.kind == "session":
            return int(times.min()) + self._shape.gap_ms
        hop = self._shape.hop_ms
        return int((times - times % hop).min()) + hop

    def _joined(self) -> tuple[Records | None, np.ndarray | None]:
        if not self._chunks:
            return None, None
        if len(self._chunks) > 1:
            records = Records.concat([r for r, _ in self._chunks])
            self._chunks = [(records, np.concatenate([f for _, f in self._chunks]))]
        return self._chunks[0]

    def _close(self, watermark: int | None, everything: bool = False) -> list[Dispatched]:
        if watermark is not None and self._correct:
            self._forget(watermark)
        if not self._chunks or (watermark is None and not everything):
            return []
        if not everything:
            assert watermark is not None
            if self._min_end is None or watermark < self._min_end:
                if self._shape.kind != "session":
                    # nothing pending ends by the watermark: windows up to it are closed
                    before = self._closed_until
                    self._closed_until = watermark if before is None else max(before, watermark)
                return []
        whole, floors = self._joined()
        assert whole is not None and floors is not None
        if self._shape.kind == "session":
            rows, groups, ends = self._sessions(whole)
        else:
            rows, groups = self._shape.fixed(whole.times)
            ends = groups + self._shape.size_ms
            # not the row's (refused when it came) or emitted already (sliding rows wait on)
            done = ends <= floors[rows]
            if self._closed_until is not None:
                done |= ends <= self._closed_until
            rows, groups, ends = rows[~done], groups[~done], ends[~done]
        closing = np.ones(len(rows), dtype=bool) if everything else ends <= watermark
        if everything and len(ends):
            edge = int(ends.max())
        elif watermark is not None:
            edge = watermark
        else:
            edge = None
        if edge is not None and self._shape.kind != "session":
            self._closed_until = (
                edge if self._closed_until is None else max(self._closed_until, edge)
            )
        self._min_end = int(ends[~closing].min()) if (~closing).any() else None
        if not closing.any():
            return []
        open_rows = np.zeros(len(whole), dtype=bool)
        open_rows[rows[~closing]] = True
        self._chunks = [(whole.take(open_rows), floors[open_rows])] if open_rows.any() else []
        done_rows, done_groups, done_ends = rows[closing], groups[closing], ends[closing]
        records = whole.take(done_rows)
        if self._shape.kind == "session":
            for key, end in zip(records.keys, done_ends.tolist(), strict=True):
                self._edges[key] = max(self._edges.get(key, NO_TIME), end)
        if self._correct:
            self._keep(records, done_groups, done_ends)
        return [Dispatched(records=records, groups=done_groups)]

    def _sessions(self, whole: Records) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row (sorted by key, time): its session start and end (last time + gap)."""
        codes = np.unique(np.asarray(whole.keys, dtype=object), return_inverse=True)[1]
        order = np.lexsort((whole.times, codes))
        times, keys = whole.times[order], codes[order]
        fresh = np.ones(len(order), dtype=bool)
        fresh[1:] = (keys[1:] != keys[:-1]) | (np.diff(times) >= self._shape.gap_ms)
        session = np.cumsum(fresh) - 1
        starts = times[fresh][session]
        last = np.maximum.reduceat(times, np.flatnonzero(fresh))[session]
        return order, starts, last + self._shape.gap_ms

    def _keep(self, records: Records, groups: np.ndarray, ends: np.ndarray) -> None:
        by_window: dict[tuple[str, int], list[int]] = {}
        for i, (key, group) in enumerate(zip(records.keys, groups.tolist(), strict=True)):
            by_window.setdefault((key, group), []).append(i)
        for (key, group), rows in by_window.items():
            end = int(ends[rows[0]])
            self._closed[(key, group)] = _Closed(records.take(np.asarray(rows)), group, end)

    def _forget(self, watermark: int) -> None:
        stale = [w for w, c in self._closed.items() if c.end + self._correct_for <= watermark]
        for w in stale:
            del self._closed[w]
