"""Mergeable profiles: what a site sends about its watched columns instead of sample rows.

A *column profile* of a window holds, for one watched column, every value the site
predicted on (not a sample of them):

- ``rows`` (values seen), ``n`` (present), ``nulls`` (NaN), ``sum`` and ``sumsq`` of
  the present values, their ``min`` and ``max`` — exact;
- a log-bucket histogram (DDSketch's mapping): a value ``x`` with ``|x| ≥ 1e-9`` falls
  in bucket ``i = ceil(log_γ |x|)``, ``γ = (1 + α) / (1 − α)``, stored as key
  ``±(i + OFFSET)`` (the sign of ``x``), smaller magnitudes in key 0. Keys sort as the
  values do; the bucket's *representative* ``2 γ^i / (γ + 1)`` is within a relative
  ``α`` of every value in it. ``keys`` and ``counts`` list the non-empty buckets (in a
  message, ``keys`` holds the first key and then each one's difference from the last).

Every part merges by addition (``min``/``max`` by min/max), so the profiles of many
windows and sites merge — in ClickHouse with ``sum`` and ``sumMap`` — into the profile
of their union, exactly as if it had been taken at once. Quantiles and bin counts read
off a merged profile are those of the representatives: each value is off by at most
``α`` relative (0.5 % by default), which is the profile's only approximation. A
column of at most :data:`EXACT_MAX` distinct values in a window (a flag, a class, a
count) keeps them exactly instead (``values``, ``value_counts``): ties at a bin edge
then count as the rows do. Merged with bucketed profiles, they are bucketed too.

:class:`ProfileLogic` folds per-batch profiles into event-time tumbling windows per use
case and emits a window when its end is ``lateness`` behind the newest event time, when
the input has been idle for ``idle_close``, or at the end of the input. A batch for a
window already emitted is emitted on its own (``part`` ``late:<its first record id>``):
it merges into the window like any other profile, so nothing is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np
import orjson
from bytewax.operators import StatefulBatchLogic

from mlexec.operators.dispatch import Clock, utc_now

__all__ = [
    "EXACT_MAX",
    "MIN_MAGNITUDE",
    "OFFSET",
    "ColumnProfile",
    "Partial",
    "ProfileLogic",
    "WindowProfile",
    "bucket_keys",
    "bucket_values",
    "partials",
]

#: A window's column of at most this many distinct values is profiled exactly.
EXACT_MAX = 64
#: Magnitudes below this fall in the zero bucket (key 0).
MIN_MAGNITUDE = 1e-9
#: Added to a bucket's index so that every key of a non-zero value is ≥ 1 in magnitude.
OFFSET = 1 << 20
_LARGEST = float(np.finfo(np.float64).max)


def _gamma(alpha: float) -> float:
    return (1.0 + alpha) / (1.0 - alpha)


def bucket_keys(values: np.ndarray, alpha: float) -> np.ndarray:
    """The bucket key of each (present) value, as int64."""
    x = np.asarray(values, dtype=np.float64)
    magnitude = np.minimum(np.abs(x), _LARGEST)  # ±inf: the largest float's bucket
    keys = np.zeros(len(x), dtype=np.int64)
    big = magnitude >= MIN_MAGNITUDE
    index = np.ceil(np.log(magnitude[big]) / math.log(_gamma(alpha))).astype(np.int64)
    keys[big] = np.where(x[big] < 0, -(index + OFFSET), index + OFFSET)
    return keys


def bucket_values(keys: np.ndarray, alpha: float) -> np.ndarray:
    """Each bucket's representative value (0 for the zero bucket)."""
    k = np.asarray(keys, dtype=np.int64)
    gamma = _gamma(alpha)
    index = (np.abs(k) - OFFSET).astype(np.float64)
    with np.errstate(over="ignore"):  # the largest floats' bucket: capped at the largest
        power = np.exp(index * math.log(gamma) + math.log(2.0 / (gamma + 1.0)))
    value = np.where(k == 0, 0.0, np.minimum(power, _LARGEST))
    return np.where(k < 0, -value, value)


@dataclass
class ColumnProfile:
    """One column's profile of some values (see the module's description)."""

    rows: int
    n: int
    nulls: int
    total: float
    squares: float
    low: float
    high: float
    keys: np.ndarray
    counts: np.ndarray

    #: A column of at most :data:`EXACT_MAX` distinct values keeps them exactly (no keys).
    exact: np.ndarray = field(default_factory=lambda: np.zeros(0))
    exact_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def of(cls, values: np.ndarray, alpha: float) -> ColumnProfile:
        x = np.asarray(values, dtype=np.float64).reshape(len(values), -1)[:, 0]
        present = np.clip(x[~np.isnan(x)], -_LARGEST, _LARGEST)  # ±inf: the largest floats
        empty = not len(present)
        profile = cls(
            rows=len(x),
            n=len(present),
            nulls=len(x) - len(present),
            total=float(present.sum()),
            squares=float(np.square(present).sum()),
            low=float("nan") if empty else float(present.min()),
            high=float("nan") if empty else float(present.max()),
            keys=np.zeros(0, dtype=np.int64),
            counts=np.zeros(0, dtype=np.int64),
        )
        if len(present) > EXACT_MAX:
            keys, counts = np.unique(bucket_keys(present, alpha), return_counts=True)
            if len(keys) > EXACT_MAX:  # more buckets, so more distinct values: bucketed
                return replace(profile, keys=keys, counts=counts.astype(np.int64))
        distinct, times = np.unique(present, return_counts=True)
        exact = replace(profile, exact=distinct, exact_counts=times.astype(np.int64))
        return exact if len(distinct) <= EXACT_MAX else exact.bucketed(alpha)

    def bucketed(self, alpha: float) -> ColumnProfile:
        """The same profile with its exact values moved into their buckets."""
        if not len(self.exact):
            return self
        keys, counts = _added(
            [self.keys, bucket_keys(self.exact, alpha)], [self.counts, self.exact_counts]
        )
        return replace(self, keys=keys, counts=counts, exact=np.zeros(0), exact_counts=counts[:0])

    def merge(self, other: ColumnProfile, alpha: float) -> ColumnProfile:
        return ColumnProfile.merged([self, other], alpha)

    @classmethod
    def merged(cls, profiles: list[ColumnProfile], alpha: float) -> ColumnProfile:
        """The profile of all of ``profiles``' values (one sort for all of them)."""
        if len(profiles) == 1:
            return profiles[0]
        exact, exact_counts = _added(
            [p.exact for p in profiles], [p.exact_counts for p in profiles]
        )
        merged = cls(
            rows=sum(p.rows for p in profiles),
            n=sum(p.n for p in profiles),
            nulls=sum(p.nulls for p in profiles),
            total=sum(p.total for p in profiles),
            squares=sum(p.squares for p in profiles),
            low=float(np.nanmin([p.low for p in profiles] + [np.inf])),
            high=float(np.nanmax([p.high for p in profiles] + [-np.inf])),
            keys=np.zeros(0, dtype=np.int64),
            counts=np.zeros(0, dtype=np.int64),
            exact=exact,
            exact_counts=exact_counts,
        )
        if merged.n == 0:
            merged = replace(merged, low=float("nan"), high=float("nan"))
        if not any(len(p.keys) for p in profiles) and len(exact) <= EXACT_MAX:
            return merged
        keys, counts = _added([p.keys for p in profiles], [p.counts for p in profiles])
        return replace(merged, keys=keys, counts=counts).bucketed(alpha)


def _added(values: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted value, count) maps added."""
    found, inverse = np.unique(np.concatenate(values), return_inverse=True)
    weights = np.concatenate(counts).astype(np.float64)
    added = np.bincount(inverse, weights=weights, minlength=len(found))
    return found, np.rint(added).astype(np.int64)


@dataclass(frozen=True)
class Partial:
    """One batch's profiles of one window (from :func:`partials`)."""

    window_start: int
    newest: int
    first_id: str
    columns: dict[str, ColumnProfile]


@dataclass(frozen=True)
class WindowProfile:
    """Profiles of one window of one use case, as emitted; one Kafka message per column."""

    usecase: str
    site: str
    window_start: int
    window_end: int
    #: ``window`` for the window's own profile, ``late:<record id>`` for a late batch's.
    part: str
    alpha: float
    columns: dict[str, ColumnProfile]

    def messages(self) -> list[bytes]:
        """The JSON messages, one per column (a column's keys stay well under 1 MB)."""
        out = []
        for name, c in self.columns.items():
            message = {
                "usecase": self.usecase,
                "site": self.site,
                "column": name,
                "window_start": self.window_start,
                "window_end": self.window_end,
                "part": self.part,
                "alpha": self.alpha,
                "rows": c.rows,
                "n": c.n,
                "nulls": c.nulls,
                "sum": c.total,
                "sumsq": c.squares,
                "min": c.low,
                "max": c.high,
                "keys": np.diff(c.keys, prepend=0),  # sorted: sent as differences
                "counts": c.counts,
                "values": c.exact,
                "value_counts": c.exact_counts,
            }
            out.append(orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY))
        return out


def partials(
    times: np.ndarray,
    record_ids: list[str],
    columns: Mapping[str, np.ndarray],
    window_ms: int,
    alpha: float,
) -> list[Partial]:
    """A batch's profiles, one :class:`Partial` per window its event times fall in."""
    t = np.asarray(times, dtype=np.int64)
    if not len(t):
        return []
    starts = t - t % window_ms
    out = []
    for start in np.unique(starts).tolist():
        rows = np.flatnonzero(starts == start)
        out.append(
            Partial(
                window_start=int(start),
                newest=int(t[rows].max()),
                first_id=record_ids[int(rows[0])],
                columns={
                    n: ColumnProfile.of(np.asarray(v)[rows], alpha) for n, v in columns.items()
                },
            )
        )
    return out


#: Per-batch profiles a window holds before they are merged into one.
_PENDING = 64


@dataclass
class _ProfileState:
    #: window start → column → the profiles not merged yet
    open: dict[int, dict[str, list[ColumnProfile]]]
    closed_until: int
    newest: int | None
    last_arrival: datetime | None = None


class ProfileLogic(StatefulBatchLogic[Partial, WindowProfile, _ProfileState]):
    """Per-batch profiles → one profile per tumbling window of ``window`` (event time)."""

    def __init__(
        self,
        usecase: str,
        site: str,
        window: timedelta,
        lateness: timedelta,
        idle_close: timedelta,
        alpha: float,
        *,
        now: Clock = utc_now,
        resume: _ProfileState | None = None,
    ) -> None:
        self._usecase, self._site, self._alpha = usecase, site, alpha
        self._window = int(window / timedelta(milliseconds=1))
        self._lateness = int(lateness / timedelta(milliseconds=1))
        self._idle = idle_close
        self._now = now
        self._state = resume or _ProfileState(open={}, closed_until=-(2**62), newest=None)
        if self._state.open:  # a restart: the idle time counts from now, not from before it
            self._state.last_arrival = now()

    def _profile(self, start: int, part: str, columns: dict[str, ColumnProfile]) -> WindowProfile:
        return WindowProfile(
            self._usecase, self._site, start, start + self._window, part, self._alpha, columns
        )

    def _close(self, *, everything: bool) -> list[WindowProfile]:
        s = self._state
        until = None if everything or s.newest is None else s.newest - self._lateness
        out = []
        for start in sorted(s.open):
            if until is not None and start + self._window > until:
                break
            held = s.open.pop(start)
            merged = {n: ColumnProfile.merged(ps, self._alpha) for n, ps in held.items()}
            out.append(self._profile(start, "window", merged))
            s.closed_until = max(s.closed_until, start + self._window)
        return out

    def on_batch(self, values: list[Partial]) -> tuple[Iterable[WindowProfile], bool]:
        s = self._state
        out = []
        for piece in values:
            if piece.window_start < s.closed_until:  # its window was emitted: on its own
                out.append(
                    self._profile(piece.window_start, f"late:{piece.first_id}", piece.columns)
                )
                continue
            held = s.open.setdefault(piece.window_start, {})
            for name, column in piece.columns.items():
                pending = held.setdefault(name, [])
                pending.append(column)
                if len(pending) >= _PENDING:  # bounded: merged every so many batches
                    held[name] = [ColumnProfile.merged(pending, self._alpha)]
            s.newest = piece.newest if s.newest is None else max(s.newest, piece.newest)
        s.last_arrival = self._now()
        out.extend(self._close(everything=False))
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[WindowProfile], bool]:
        return self._close(everything=True), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[WindowProfile], bool]:
        return self._close(everything=True), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        s = self._state
        if not s.open or s.last_arrival is None:
            return None
        return s.last_arrival + self._idle

    def snapshot(self) -> _ProfileState:
        s = self._state
        return _ProfileState(
            open={k: {n: list(ps) for n, ps in v.items()} for k, v in s.open.items()},
            closed_until=s.closed_until,
            newest=s.newest,
            last_arrival=s.last_arrival,
        )
