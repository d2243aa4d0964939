"""On-request dispatch: score a payload, or a key over a time range, and reply.

A request on ``<uc>.requests`` is a JSON object::

    {"request_id": "r-17", "reply_to": "pumps.replies", "payload": {...record...}}
    {"request_id": "r-18", "key": "pump-3", "from": 1700000000000, "to": 1700000060000}

``payload`` is one record or a list of records in the use case's schema, scored as they
are. ``key`` / ``from`` / ``to`` (half-open, in the input's time unit or ISO 8601)
score the key's records in that range from a bounded per-key history: the request
waits until every partition has passed ``to`` (so the range is complete), at most
``timeout``. Every request gets a reply keyed by its ``request_id`` — the predictions,
or an error (bad request, unknown key, nothing in range, history no longer kept,
timeout), never silence.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
from bytewax.operators import StatefulBatchLogic

from mlexec.operators.dispatch import (
    Clock,
    Dispatched,
    Progress,
    Reply,
    Request,
    Slice,
    ms,
    utc_now,
)
from mlexec.operators.parse import ParseResult, RecordParser, parse_time
from mlexec.operators.records import DeadLetter, Records

__all__ = ["RangeRequest", "RequestLogic", "RequestReader"]


@dataclass(frozen=True)
class RangeRequest:
    """Score ``key``'s records with event times in ``[start, end)`` ms."""

    request: Request
    key: str
    start: int
    end: int


@dataclass
class _Raw:
    """Just enough of a raw batch for :class:`RecordParser` (a payload's records)."""

    topic: str
    partition: int
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]


class RequestReader:
    """Read a batch of request messages: payload dispatches, range requests, error replies."""

    def __init__(self, parser: RecordParser, default_reply_to: str) -> None:
        self._parser = parser
        self._reply_to = default_reply_to

    def __call__(self, batch: Any) -> tuple[list[Dispatched], list[RangeRequest]]:
        dispatched: list[Dispatched] = []
        ranges: list[RangeRequest] = []
        for offset, key, value in zip(batch.offsets, batch.keys, batch.values, strict=True):
            try:
                doc = orjson.loads(value or b"")
            except orjson.JSONDecodeError as exc:
                doc, problem = None, f"not JSON: {exc}"
            else:
                problem = "" if isinstance(doc, dict) else "not a JSON object"
            rid = doc.get("request_id") if isinstance(doc, dict) else None
            if not isinstance(rid, str) or not rid:
                why = problem or "no request_id (a non-empty string)"
                dispatched.append(_dead_request(batch, offset, key, value, why))
                continue
            assert isinstance(doc, dict)
            reply_to = doc.get("reply_to") or self._reply_to
            request = Request(rid, str(reply_to))
            try:
                if "payload" in doc:
                    dispatched.append(self._payload(batch, offset, request, doc["payload"]))
                else:
                    ranges.append(self._range(request, doc))
            except ValueError as exc:
                dispatched.append(Dispatched(replies=[Reply(request, f"bad request: {exc}")]))
        return dispatched, ranges

    def _payload(self, batch: Any, offset: int, request: Request, payload: Any) -> Dispatched:
        rows = payload if isinstance(payload, list) else [payload]
        if not rows:
            msg = "payload holds no record"
            raise ValueError(msg)
        raw = _Raw(
            topic=batch.topic,
            partition=batch.partition,
            offsets=[offset] * len(rows),
            keys=[None] * len(rows),
            values=[orjson.dumps(r) for r in rows],
        )
        parsed: ParseResult = self._parser(raw)
        if parsed.dead:
            reasons = "; ".join(d.reason for d in parsed.dead)
            msg = f"payload does not fit the schema: {reasons}"
            raise ValueError(msg)
        assert parsed.records is not None
        records = parsed.records
        records.record_ids = [f"{request.request_id}:{i}" for i in range(len(records))]
        return Dispatched(records=records, per_record=True, request=request)

    def _range(self, request: Request, doc: dict[str, Any]) -> RangeRequest:
        key = doc.get("key")
        if not isinstance(key, str) or not key:
            msg = "either 'payload' or 'key' with 'from' and 'to'"
            raise ValueError(msg)
        try:
            start = parse_time(doc.get("from"), self._parser)
            end = parse_time(doc.get("to"), self._parser)
        except (TypeError, ValueError) as exc:
            msg = f"'from' and 'to' must be event times: {exc}"
            raise ValueError(msg) from None
        if end <= start:
            msg = f"'to' ({end} ms) must be after 'from' ({start} ms)"
            raise ValueError(msg)
        return RangeRequest(request, key, start, end)


def _dead_request(
    batch: Any, offset: int, key: bytes | None, value: bytes | None, why: str
) -> Dispatched:
    reason = f"request without a request_id to reply to: {why}"
    return Dispatched(late=[DeadLetter.of_message(batch, offset, key, value, reason, "dispatch")])


@dataclass
class _Waiting:
    range: RangeRequest
    deadline: datetime


@dataclass
class _RequestState:
    history: dict[str, Records]
    progress: dict[int, int]
    waiting: list[_Waiting]


class RequestLogic(StatefulBatchLogic[Slice | RangeRequest, Dispatched, _RequestState]):
    """Keep recent records per key; answer range requests once their range is complete."""

    def __init__(
        self,
        *,
        partitions: int,
        timeout: timedelta,
        keep: timedelta,
        max_records_per_key: int,
        idle_close: timedelta = timedelta(seconds=5),
        resume: _RequestState | None = None,
        now: Clock = utc_now,
    ) -> None:
        self._timeout = timeout
        self._keep = ms(keep)
        self._max = max_records_per_key
        self._now = now
        started = now()
        #: Per key, recent records in arrival chunks; least recently fed keys first.
        self._history: OrderedDict[str, list[Records]] = OrderedDict(
            (k, [v]) for k, v in (resume.history if resume else {}).items()
        )
        self._progress = Progress(
            partitions, idle_close, started, resume.progress if resume else None
        )
        self._waiting: list[_Waiting] = list(resume.waiting) if resume else []

    def on_batch(self, values: list[Slice | RangeRequest]) -> tuple[Iterable[Dispatched], bool]:
        now = self._now()
        for item in values:
            if isinstance(item, RangeRequest):
                self._waiting.append(_Waiting(item, now + self._timeout))
                continue
            self._progress.heard(item, now)
            if item.records is not None:
                self._remember(item.records)
        return self._answer(now, self._watermark(now)), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Dispatched], bool]:
        now = self._now()
        return self._answer(now, self._watermark(now)), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Dispatched], bool]:
        # the input is complete: every range that will ever have data has it now
        return self._answer(self._now(), np.iinfo(np.int64).max), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return min((w.deadline for w in self._waiting), default=None)

    def snapshot(self) -> _RequestState:
        return _RequestState(
            history={k: self._kept(k) for k in list(self._history)},
            progress=dict(self._progress.newest),
            waiting=list(self._waiting),
        )

    def _watermark(self, now: datetime) -> int | None:
        # every partition silent: the input is caught up, what arrived is all there is
        return self._progress.watermark(now, caught_up_when_idle=True)

    def _newest(self) -> int:
        return self._progress.newest_overall()

    def _remember(self, records: Records) -> None:
        """Add records to their keys' history; forget keys silent for longer than ``keep``."""
        positions: dict[str, list[int]] = {}
        for i, k in enumerate(records.keys):
            positions.setdefault(k, []).append(i)
        for key, rows in positions.items():
            chunks = self._history.pop(key, [])
            chunks.append(records.take(np.asarray(rows)))
            self._history[key] = chunks
            if len(chunks) > 16 or sum(len(c) for c in chunks) > 2 * self._max:
                self._kept(key)
        horizon = self._newest() - self._keep
        while self._history:
            key, chunks = next(iter(self._history.items()))
            if max(int(c.times.max()) for c in chunks) >= horizon:
                break
            del self._history[key]

    def _kept(self, key: str) -> Records:
        """The key's history as one batch, trimmed to ``keep`` and ``max_records_per_key``."""
        chunks = self._history[key]
        whole = chunks[0] if len(chunks) == 1 else Records.concat(chunks)
        fresh = whole.times >= self._newest() - self._keep
        if not fresh.all() or len(whole) > self._max:
            whole = whole.take(np.flatnonzero(fresh)[-self._max :])
        if len(whole):
            self._history[key] = [whole]
        else:
            del self._history[key]
        return whole

    def _answer(self, now: datetime, watermark: int | None) -> list[Dispatched]:
        out: list[Dispatched] = []
        still: list[_Waiting] = []
        horizon = self._newest() - self._keep
        for w in self._waiting:
            r = w.range
            complete = watermark is not None and watermark >= r.end
            if not complete and now < w.deadline:
                still.append(w)
                continue
            if not complete:
                error = (
                    f"timeout: data up to {r.end} ms had not arrived after "
                    f"{self._timeout.total_seconds():g}s (complete up to "
                    f"{watermark if watermark is not None else 'nothing yet'})"
                )
                out.append(Dispatched(replies=[Reply(r.request, error)]))
                continue
            out.append(self._score(r, horizon))
        self._waiting = still
        return out

    def _score(self, r: RangeRequest, horizon: int) -> Dispatched:
        kept = self._kept(r.key) if r.key in self._history else None
        if kept is None or not len(kept):
            return Dispatched(replies=[Reply(r.request, f"unknown key {r.key!r}")])
        if r.start < horizon and r.start < int(kept.times.min()):
            error = (
                f"range starts at {r.start} ms, before the kept history of key {r.key!r} "
                f"(from {int(kept.times.min())} ms; keep is {self._keep} ms)"
            )
            return Dispatched(replies=[Reply(r.request, error)])
        inside = (kept.times >= r.start) & (kept.times < r.end)
        if not inside.any():
            error = f"no records of key {r.key!r} in [{r.start}, {r.end}) ms"
            return Dispatched(replies=[Reply(r.request, error)])
        records = kept.take(inside)
        return Dispatched(
            records=records,
            groups=np.full(len(records), r.start, dtype=np.int64),
            request=r.request,
        )
