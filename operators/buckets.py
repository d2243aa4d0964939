"""Stateful rules keyed by buckets of the record key, and how far each partition has got.

A keyed rule's state (windows, counts, conditions) lives in a fixed number of stable
buckets of the record key (crc32), so the state is valid at any worker count and a
cluster can rescale from recovery. Each source batch is split into per-bucket slices
with one stable sort (each bucket's rows are then a run, sliced, not searched); with
``progress`` every bucket gets a slice of every batch, empty or not, carrying the
partition's progress in event time — the watermark of windows and requests.
"""

from __future__ import annotations

import functools
import itertools
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from mlexec.operators.records import Records

__all__ = ["NO_TIME", "Progress", "Slice", "bucket_of", "split_by_bucket"]

#: "No event time seen yet" for a partition (below any real epoch millisecond).
NO_TIME = np.iinfo(np.int64).min


def bucket_of(key: str, buckets: int) -> int:
    """The stable bucket of a record key (crc32, the same in every process)."""
    return zlib.crc32(key.encode()) % buckets


@dataclass
class Slice:
    """One bucket's share of a source batch, with the source partition's progress.

    Every bucket receives a slice of every batch — empty when none of its keys are in
    it — so each knows how far every partition has got in event time. ``before`` is,
    per row, the newest event time of the partition's records *ahead of it in this
    batch* (``NO_TIME`` when none): with the progress from earlier batches it says,
    deterministically, how far the partition was when the row arrived.
    """

    partition: int
    newest: int
    records: Records | None = None
    before: np.ndarray | None = None


@functools.lru_cache(maxsize=1 << 16)
def _cached_bucket(key: str, buckets: int) -> int:
    return bucket_of(key, buckets)


def _by_bucket(records: Records, buckets: int) -> tuple[Records, np.ndarray, list[int]]:
    """The rows stably sorted by bucket, the order, and where each bucket's run starts."""
    codes = _codes(records.keys, buckets)
    order = np.argsort(codes, kind="stable")
    edges = np.searchsorted(codes[order], np.arange(buckets + 1)).tolist()
    return records.take(order), order, edges


def _codes(keys: list[str], buckets: int) -> np.ndarray:
    """Each key's bucket; a site's keys repeat, so each is hashed once (bounded cache)."""
    return np.fromiter(
        map(_cached_bucket, keys, itertools.repeat(buckets)), dtype=np.int64, count=len(keys)
    )


class Progress:
    """How far each source partition has got in event time, and when it was last heard.

    The watermark is the minimum over the partitions, as in Flink: one partition read
    ahead of another does not run the other late. A partition silent for ``idle`` stops
    holding the others back; one never heard from holds them until it has been silent
    that long (a restart starts every partition's silence anew).
    """

    def __init__(
        self,
        partitions: int,
        idle: timedelta,
        started: datetime,
        newest: dict[int, int] | None = None,
    ) -> None:
        self.partitions = partitions
        self.idle = idle
        self.newest: dict[int, int] = dict(newest or {})
        self._heard = {p: started for p in range(partitions)}

    def heard(self, piece: Slice, now: datetime) -> None:
        """Take a slice's partition progress (after its rows were judged against the old)."""
        self._heard[piece.partition] = now
        if piece.newest != NO_TIME:
            seen = self.newest.get(piece.partition, NO_TIME)
            self.newest[piece.partition] = max(seen, piece.newest)

    def of(self, partition: int) -> int:
        return self.newest.get(partition, NO_TIME)

    def newest_overall(self) -> int:
        return max(self.newest.values(), default=NO_TIME)

    def watermark(self, now: datetime, *, caught_up_when_idle: bool = False) -> int | None:
        """The minimum over live partitions; ``None`` while a live one is unknown.

        With ``caught_up_when_idle``, when every partition is silent the input is taken as
        caught up and the slowest partition's progress is the watermark.
        """
        marks = []
        for p in range(self.partitions):
            if now - self._heard.get(p, now) >= self.idle:
                continue  # silent: no longer holds the others back
            seen = self.newest.get(p)
            if seen is None:
                return None  # a live partition we know nothing of yet
            marks.append(seen)
        marks.extend(t for p, t in self.newest.items() if p >= self.partitions)
        if marks:
            return min(marks)
        if caught_up_when_idle:
            return min(self.newest.values(), default=None)
        return None


def split_by_bucket(
    records: Records, buckets: int, *, progress: bool = False
) -> list[tuple[str, Records]] | list[tuple[str, Slice]]:
    """Split a batch into per-bucket batches keyed ``"b<n>"`` for stateful routing.

    With ``progress``, every bucket gets a :class:`Slice` (see there) instead.
    """
    if not progress:
        if buckets == 1:
            return [("b0", records)]
        grouped, _, edges = _by_bucket(records, buckets)
        pairs = itertools.pairwise(edges)
        return [(f"b{b}", grouped.rows(lo, hi)) for b, (lo, hi) in enumerate(pairs) if hi > lo]
    partition = int(records.ids[0] >> np.uint64(48)) if len(records) else 0
    times = records.times
    before = np.empty(len(times), dtype=np.int64)
    if len(times):
        before[0] = NO_TIME
        np.maximum.accumulate(times[:-1], out=before[1:])
    newest = int(times.max()) if len(times) else NO_TIME
    if buckets == 1:
        return [("b0", Slice(partition, newest, records, before))]
    grouped, order, edges = _by_bucket(records, buckets)
    before = before[order]
    out: list[tuple[str, Slice]] = []
    for b in range(buckets):
        lo, hi = edges[b], edges[b + 1]
        if hi > lo:
            piece = Slice(partition, newest, grouped.rows(lo, hi), before[lo:hi])
        else:
            piece = Slice(partition, newest)
        out.append((f"b{b}", piece))
    return out
