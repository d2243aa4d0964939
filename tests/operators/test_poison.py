"""No single record stops a flow or changes how later records are treated.

Each poison record sits inside a stream of good ones: it becomes a dead letter with its
reason and its original bytes, and every good record around it is read as if it were
not there.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from mlexec.connectors.batchsource import RawBatch
from mlexec.operators.dispatch import split_by_bucket
from mlexec.operators.emit import DEADLETTER_MAX_BYTES, deadletter_headers, deadletter_value
from mlexec.operators.parse import RecordParser
from mlexec.operators.records import DeadLetter
from mlexec.operators.windows import WindowLogic, WindowShape

NOW = datetime(2026, 6, 1, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
SCHEMA = {"id": "str", "ts": "timestamp", "v": "float"}


def _parser(**kw) -> RecordParser:
    return RecordParser(SCHEMA, "id", "ts", now_ms=lambda: NOW_MS, **kw)


def _batch(values: list[bytes]) -> RawBatch:
    return RawBatch("raw", 0, list(range(len(values))), [None] * len(values), values)


def _good(i: int) -> bytes:
    return orjson.dumps({"id": f"k{i % 3}", "ts": NOW_MS - 60_000 + i, "v": float(i)})


POISON = {
    "iso time beside epoch times": orjson.dumps(
        {"id": "k0", "ts": "2026-05-31T23:59:30Z", "v": 1.0}
    ),
    "year 9999": orjson.dumps({"id": "k1", "ts": "9999-12-31T00:00:00Z", "v": 1.0}),
    "1e20": orjson.dumps({"id": "k2", "ts": 1e20, "v": 1.0}),
    "before 1970": orjson.dumps({"id": "k2", "ts": -5_000, "v": 1.0}),
    "two days ahead": orjson.dumps({"id": "k2", "ts": NOW_MS + 2 * 86_400_000, "v": 1.0}),
    "10 MB of not JSON": b"\x00garbage" * (10 * 1024 * 1024 // 8),
    "bad field in a mixed-time batch": orjson.dumps(
        {"id": "k0", "ts": "2026-05-31T23:59:30Z", "v": "x"}
    ),
}


@pytest.mark.parametrize("kind", sorted(POISON))
def test_a_poison_record_among_good_ones_is_dead_lettered_and_the_rest_read(kind):
    values = [_good(i) for i in range(50)]
    values.insert(25, POISON[kind])
    result = _parser()(_batch(values))
    good_offsets = [o for o in range(51) if o != 25]
    if kind == "iso time beside epoch times":  # a valid record: both formats are read
        assert result.dead == []
        assert len(result.records) == 51
        assert int(result.records.times[25]) == NOW_MS - 30_000
        return
    assert [d.offset for d in result.dead] == [25]
    (dead,) = result.dead
    assert dead.value == POISON[kind] and dead.reason
    assert result.records.record_ids == [f"raw:0:{o}" for o in good_offsets]
    # the same good records as a batch without the poison one
    alone = _parser()(_batch([_good(i) for i in range(50)]))
    assert result.records.times.tolist() == alone.records.times.tolist()
    assert result.records.columns["v"].tolist() == alone.records.columns["v"].tolist()


def test_implausible_times_say_why_and_the_range_is_declared():
    out = _parser()(_batch([POISON["year 9999"], POISON["1e20"], POISON["before 1970"]]))
    assert all("outside the plausible range" in d.reason for d in out.dead)
    assert all("input.earliest_time, input.max_ahead" in d.reason for d in out.dead)
    wide = _parser(max_ahead_ms=10 * 365 * 86_400_000)
    assert wide(_batch([POISON["two days ahead"]])).dead == []
    historic = _parser(earliest_ms=int(datetime(2020, 1, 1, tzinfo=UTC).timestamp() * 1000))
    old = orjson.dumps({"id": "a", "ts": "2019-12-31T23:00:00Z", "v": 1.0})
    assert len(historic(_batch([old])).dead) == 1


def test_a_dead_letter_too_large_for_kafka_is_cut_and_says_where_the_original_is():
    big = DeadLetter(b"x" * (10 * 1024 * 1024), None, "not valid JSON", "raw", 3, 77)
    assert len(deadletter_value(big)) == DEADLETTER_MAX_BYTES
    headers = dict(deadletter_headers(big))
    assert headers["mlexec.truncated"] == b"true"
    assert headers["mlexec.original_size"] == str(10 * 1024 * 1024).encode()
    assert (headers["mlexec.topic"], headers["mlexec.partition"], headers["mlexec.offset"]) == (
        b"raw",
        b"3",
        b"77",
    )
    assert b"cut to its first" in headers["mlexec.reason"]
    small = DeadLetter(b"{bad", None, "not valid JSON", "raw", 0, 1)
    assert deadletter_value(small) == b"{bad" and "mlexec.truncated" not in dict(
        deadletter_headers(small)
    )


def test_duplicate_keys_in_a_record_take_the_last_value():
    """A documented rule (docs: data contracts): JSON objects with a repeated key keep the last."""
    value = b'{"id": "a", "ts": 1780000000000, "v": "not a number", "v": 70.5}'
    out = _parser()(_batch([value]))
    assert out.dead == [] and out.records.columns["v"].tolist() == [70.5]


class _Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def test_a_year_9999_record_never_moves_a_window_watermark():
    """The poison record is refused by the parser, so the windows after it close as usual."""
    clock = _Clock()
    parser = _parser(keep_raw=True)
    logic = WindowLogic(WindowShape.tumbling(timedelta(seconds=10)), partitions=1, now=clock)
    values = [_good(i * 1000) for i in range(5)]
    values.insert(2, POISON["year 9999"])
    parsed = parser(_batch(values))
    assert [d.offset for d in parsed.dead] == [2]
    ((_, piece),) = split_by_bucket(parsed.records, 1, progress=True)
    out, _ = logic.on_batch([piece])
    later = parser(RawBatch("raw", 0, [10], [None], [_good(4_500)]))
    ((_, piece),) = split_by_bucket(later.records, 1, progress=True)
    out2, _ = logic.on_batch([piece])
    assert not [dl for d in [*out, *out2] for dl in d.late]  # nothing later is late
