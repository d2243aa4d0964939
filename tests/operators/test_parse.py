"""Parsing validates against the schema; every bad record becomes a dead letter with a reason."""

from __future__ import annotations

import json

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from mlexec.connectors.batchsource import RawBatch
from mlexec.operators.parse import RecordParser

SCHEMA = {"id": "str", "ts": "timestamp", "a": "float", "n": "int", "on": "bool"}
PARSER = RecordParser(SCHEMA, key="id", time="ts")


def _batch(values: list[bytes | None]) -> RawBatch:
    return RawBatch("raw", 1, list(range(10, 10 + len(values))), [b"k"] * len(values), values)


def _good(i: int) -> dict:
    return {"id": f"k{i}", "ts": 1_000 + i, "a": i * 0.5, "n": i, "on": i % 2 == 0}


def test_a_clean_batch_becomes_columns():
    result = PARSER(_batch([orjson.dumps(_good(i)) for i in range(5)]))
    assert result.dead == []
    recs = result.records
    assert recs.record_ids == [f"raw:1:{o}" for o in range(10, 15)]
    assert recs.keys == [f"k{i}" for i in range(5)]
    assert recs.times.tolist() == [1000, 1001, 1002, 1003, 1004]
    assert recs.columns["a"].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert recs.columns["on"].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert set(recs.columns) == {"a", "n", "on"}
    assert (recs.ids >> 48).tolist() == [1] * 5


def test_iso_timestamps_are_read_as_utc_milliseconds():
    rec = _good(0) | {"ts": "2026-01-01T00:00:01.5Z"}
    naive = _good(1) | {"ts": "2026-01-01T00:00:02"}
    result = PARSER(_batch([orjson.dumps(rec), orjson.dumps(naive)]))
    assert result.records.times.tolist() == [1_767_225_601_500, 1_767_225_602_000]


BAD = {
    b"{not json": "not valid JSON",
    b"\xff\xfe\x00": "not valid JSON",
    b"[1, 2]": "expected a JSON object, found list",
    b'"text"': "expected a JSON object, found str",
    orjson.dumps(_good(1) | {"a": "1.5"}): "field 'a': expected float, found str",
    orjson.dumps(_good(1) | {"a": True}): "field 'a': expected float, found bool",
    orjson.dumps(_good(1) | {"n": 1.5}): "field 'n': expected int, found float",
    orjson.dumps(_good(1) | {"a": None}): "field 'a': expected float, found nothing",
    orjson.dumps(
        {k: v for k, v in _good(1).items() if k != "on"}
    ): "field 'on': expected bool, found nothing",
    orjson.dumps(_good(1) | {"a": 1e39}): "field 'a': expected a finite float within float32 range",
    orjson.dumps(_good(1) | {"ts": "yesterday"}): "field 'ts': expected an ISO 8601 timestamp",
    orjson.dumps(_good(1) | {"id": 7}): "field 'id': expected str, found int",
}


def test_each_bad_record_is_dead_lettered_with_its_bytes_and_reason_and_the_rest_go_on():
    values: list[bytes | None] = []
    for bad in BAD:
        values += [orjson.dumps(_good(len(values))), bad]
    values.append(None)
    result = PARSER(_batch(values))
    assert len(result.records) == len(BAD)
    assert len(result.dead) == len(BAD) + 1
    for dead, (value, reason) in zip(
        result.dead, [*BAD.items(), (None, "empty message")], strict=True
    ):
        assert dead.value == value
        assert reason in dead.reason, (reason, dead.reason)
        assert dead.topic == "raw" and dead.partition == 1
        assert values[dead.offset - 10] == value
    good_offsets = [int(r.rsplit(":", 1)[1]) for r in result.records.record_ids]
    assert good_offsets == list(range(10, 10 + 2 * len(BAD), 2))


def test_two_json_values_in_one_message_do_not_shift_the_batch():
    values = [
        orjson.dumps(_good(0)),
        orjson.dumps(_good(1)) + b"," + orjson.dumps(_good(2)),
        orjson.dumps(_good(3)),
    ]
    result = PARSER(_batch(values))
    assert [d.offset for d in result.dead] == [11]
    assert result.records.keys == ["k0", "k3"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.builds(
                lambda d: json.dumps(d).encode(),
                st.dictionaries(
                    st.sampled_from(list(SCHEMA)),
                    st.one_of(
                        st.none(),
                        st.booleans(),
                        st.integers(),
                        st.floats(allow_nan=False),
                        st.text(max_size=5),
                    ),
                ),
            ),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_any_bytes_are_either_a_record_or_a_dead_letter(values):
    result = PARSER(_batch(values))
    n_ok = len(result.records) if result.records is not None else 0
    assert n_ok + len(result.dead) == len(values)
    assert all(d.reason for d in result.dead)


def test_numeric_event_times_follow_the_declared_unit():
    parser = RecordParser(SCHEMA, key="id", time="ts", time_unit="s")
    result = parser(_batch([orjson.dumps(_good(0) | {"ts": 1_767_225_601.25})]))
    assert result.records.times.tolist() == [1_767_225_601_250]
