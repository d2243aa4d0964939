"""Poison records among good ones on the real broker: the flow goes on, each is a dead
letter with its reason, and no later record is treated differently."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest

from mlexec.connectors.kafka import produce_records
from mlexec.connectors.reading import read_topic
from mlexec.connectors.samplestore import open_store
from tests.dataflows.spine import T0, good_record, prepared, run_to_end, spine_topology

pytestmark = pytest.mark.integration


def test_poison_records_in_a_window_stream_are_dead_letters_and_change_nothing_after(
    broker, tmp_path, uid
):
    path = spine_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        dispatch="{kind: tumbling, size: 1s}",
        reduction="{kind: aggregate, fields: {f0: [count]}}",
        sampling="{rate: 1.0}",
    )
    topology, plan, uc, conf = prepared(path)
    rng = random.Random(3)
    good = [good_record(i, rng, step_ms=10) for i in range(3_000)]
    iso = dict(good[0], ts="2030-03-17T17:46:40.005Z")  # valid: an ISO time among epoch ones
    poison = {
        "year 9999": orjson.dumps(dict(good[0], ts="9999-12-31T23:59:59Z")),
        "1e20": orjson.dumps(dict(good[0], ts=1e20)),
        "10 MB, not JSON": b"\x00not json" * (10 * 1024 * 1024 // 9),
        "before 1970": orjson.dumps(dict(good[0], ts=-1)),
    }
    values = [orjson.dumps(r) for r in good]
    values.insert(5, orjson.dumps(iso))
    at = {}
    for n, (kind, value) in enumerate(poison.items()):
        at[kind] = 200 + n * 700  # early in the stream: everything after must go on as usual
        values.insert(at[kind], value)
    big_conf = {**conf, "message.max.bytes": 16 * 1024 * 1024}
    positions = produce_records(big_conf, uc.raw_topic, [(b"s0", v) for v in values])
    run_to_end(path)

    dead = read_topic(conf, uc.deadletter_topic)
    by_offset = {
        (int(dict(h)["mlexec.partition"]), int(dict(h)["mlexec.offset"])): (v, dict(h))
        for _k, v, h, *_ in dead
    }
    assert len(by_offset) == len(poison)  # only the poison records, none of the good ones
    for kind, value in poison.items():
        i = values.index(value)
        got, headers = by_offset[positions[i]]
        assert headers["mlexec.reason"]
        if kind.startswith("10 MB"):
            assert headers["mlexec.truncated"] == b"true"
            assert int(headers["mlexec.original_size"]) == len(value)
            assert got == value[: len(got)]
        else:
            assert got == value and b"plausible range" in headers["mlexec.reason"]
    # every good record counted in its window: the poison moved no watermark
    times = [(r["sensor"], r["ts"]) for r in good] + [(iso["sensor"], T0 + 5)]
    want = Counter(f"{uc.name}:{key}:{t - t % 1000}" for key, t in times)
    with open_store(topology.sites["here"].sample_store) as store:
        rows = store.query(f"SELECT record_id, f0_count FROM mlexec.{uc.table} FINAL")
    got_counts = dict(zip(rows["record_id"].to_list(), rows["f0_count"].to_list(), strict=True))
    assert got_counts == dict(want)
