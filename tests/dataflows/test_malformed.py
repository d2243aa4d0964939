"""10,000 generated malformed records: the dataflow never crashes, every one is dead-lettered."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.topologies import load_topology, plan_topology
from tests.dataflows.spine import FIELDS, T0, run_to_end, spine_topology

pytestmark = pytest.mark.integration

_INT64 = st.integers(-(2**63), 2**63 - 1)
_WRONG = st.one_of(
    st.text(max_size=8),
    st.none(),
    st.booleans(),
    st.lists(_INT64, max_size=3),
    st.dictionaries(st.text(max_size=3), _INT64, max_size=2),
    st.floats(min_value=1e39, max_value=1e300),
)


def _good(draw: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "sensor": draw(st.sampled_from(["s0", "s1", "s2"])),
        "ts": T0 + draw(st.integers(0, 10**6)),
    }
    for f in FIELDS:
        record[f] = draw(st.floats(-1e3, 1e3, allow_nan=False))
    return record


@st.composite
def malformed(draw: Any) -> bytes:
    """One record that must not pass: broken bytes, wrong types, missing fields, NaN..."""
    kind = draw(st.integers(0, 6))
    record = _good(draw)
    field = draw(st.sampled_from(["sensor", "ts", *FIELDS]))
    if kind == 0:  # not JSON at all, or cut short
        raw = orjson.dumps(record)
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == 1:  # not UTF-8
        raw = orjson.dumps(record)
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + raw[at:]
    if kind == 2:  # a field of the wrong type
        wrong = draw(_WRONG)
        if field == "sensor" and isinstance(wrong, str):
            wrong = draw(_INT64)
        if field == "ts" and (isinstance(wrong, str | float | int) and not isinstance(wrong, bool)):
            wrong = [wrong]  # a string or number may be a fine timestamp
        record[field] = wrong
        return orjson.dumps(record)
    if kind == 3:  # a field missing
        del record[field]
        return orjson.dumps(record)
    if kind == 4:  # NaN, Infinity, numbers beyond float64 or int64, written into the JSON
        token = draw(
            st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1" + b"0" * 40])
        )
        return orjson.dumps(record).replace(orjson.dumps(record[FIELDS[0]]), token, 1)
    if kind == 5:  # JSON, but not an object
        return orjson.dumps(draw(st.one_of(st.lists(_INT64, max_size=3), st.text(max_size=5))))
    return draw(st.binary(max_size=40)).replace(b"{", b"")  # noise


def test_ten_thousand_malformed_records_are_all_dead_lettered_with_a_reason(broker, tmp_path, uid):
    records: list[bytes] = []

    @settings(
        max_examples=400,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(malformed(), min_size=25, max_size=25))
    def collect(batch: list[bytes]) -> None:
        records.extend(batch)

    collect()
    records = records[:10_000]
    assert len(records) == 10_000

    path = spine_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        dispatch="{kind: microbatch, max_records: 256, max_wait: 20ms}",
        reduction="{kind: identity}",
        sampling="{rate: 0.1}",
    )
    plan = plan_topology(load_topology(path))
    (uc,) = plan.usecases.values()
    conf = client_config(plan.topology.sites["here"].kafka)
    ensure_topics(conf, plan.topics_at("here"))
    produce_records(conf, uc.raw_topic, [(b"k", r) for r in records])
    run_to_end(path)  # no crash

    dead = read_topic(conf, uc.deadletter_topic, timeout=60)
    assert len(dead) == 10_000
    assert sorted(v for _, v, _, _, _ in dead) == sorted(records)
    reasons = [dict(h)["mlexec.reason"].decode() for _, _, h, _, _ in dead]
    assert all(reasons)
    assert len({r.split(":")[0] for r in reasons}) >= 5  # the kinds of mistake are told apart
    assert read_topic(conf, uc.predictions_topic) == []
