"""The sample store on the real ClickHouse engine: TTL retention, de-duplication, batching.

The same tests run against a ClickHouse server when ``MLEXEC_CLICKHOUSE_URL`` names one
(e.g. ``clickhouse://default:@127.0.0.1:8123/mlexec_test``).
"""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pytest

from mlexec.connectors.samplesink import rows_to_arrow
from mlexec.connectors.samplestore import SamplesTable, SampleStoreError, open_store

DAY_MS = 86_400_000


def _rows(ids: list[str], ages_days: list[float]) -> list[dict]:
    now = int(time.time() * 1000)
    return [
        {
            "record_id": rid,
            "key": "k",
            "event_time": now - int(age * DAY_MS),
            "model": "m",
            "model_version": "1",
            "variant": "production",
            "sample_reason": "rate",
            "inference_ms": 0.1,
            "sampled_at": now,
            "x": float(i),
            "probs": [0.25, 0.75],
        }
        for i, (rid, age) in enumerate(zip(ids, ages_days, strict=True))
    ]


@pytest.fixture(params=["chdb", "server"])
def store(request, tmp_path, uid):
    if request.param == "chdb":
        url = f"chdb://{tmp_path}/chdb"
    else:
        url = os.environ.get("MLEXEC_CLICKHOUSE_URL")
        if not url:
            pytest.skip(
                "MLEXEC_CLICKHOUSE_URL is not set: no ClickHouse server to test the server path against"
            )
    with open_store(url) as opened:
        yield opened


def test_ttl_removes_samples_older_than_the_retention_and_keeps_younger(store, uid):
    table = SamplesTable(
        f"samples_{uid}",
        (("x", "Float64"), ("probs", "Array(Float64)")),
        retention_seconds=7 * 86400,
    )
    store.ensure_table(table)
    ages = [0.0, 1.0, 6.5, 7.5, 30.0, 400.0]
    ids = [f"r{i}" for i in range(len(ages))]
    store.insert(table, rows_to_arrow(table, _rows(ids, ages)))
    store.command(f"OPTIMIZE TABLE {store.database}.{table.name} FINAL")
    left = store.query(
        f"SELECT record_id, probs FROM {store.database}.{table.name} ORDER BY record_id"
    )
    assert left["record_id"].to_list() == ["r0", "r1", "r2"]
    assert left["probs"].to_list()[0] == [0.25, 0.75]


def test_a_shorter_retention_applies_to_an_existing_table(store, uid):
    long = SamplesTable(
        f"samples_{uid}",
        (("x", "Float64"), ("probs", "Array(Float64)")),
        retention_seconds=30 * 86400,
    )
    store.ensure_table(long)
    store.insert(long, rows_to_arrow(long, _rows(["young", "old"], [0.5, 3.0])))
    short = SamplesTable(long.name, long.columns, retention_seconds=2 * 86400)
    store.ensure_table(short)
    store.command(f"OPTIMIZE TABLE {store.database}.{long.name} FINAL")
    left = store.query(f"SELECT record_id FROM {store.database}.{long.name}")
    assert left["record_id"].to_list() == ["young"]


def test_the_same_record_twice_is_one_sample_after_deduplication(store, uid):
    table = SamplesTable(
        f"samples_{uid}", (("x", "Float64"), ("probs", "Array(Float64)")), retention_seconds=86400
    )
    store.ensure_table(table)
    rows = rows_to_arrow(table, _rows(["a", "b", "c"], [0, 0, 0]))
    store.insert(table, rows)
    store.insert(table, rows.slice(1, 2))
    name = f"{store.database}.{table.name}"
    assert store.query(f"SELECT count() AS n FROM {name} FINAL")["n"][0] == 3
    store.command(f"OPTIMIZE TABLE {name} FINAL")
    assert store.query(f"SELECT count() AS n FROM {name}")["n"][0] == 3


def test_bad_sql_is_a_clear_error(store):
    with pytest.raises(SampleStoreError, match="(?i)syntax|unknown"):
        store.query("SELEC nothing")


def test_unknown_url_scheme_is_refused():
    with pytest.raises(SampleStoreError, match="chdb:///dir"):
        open_store("sqlite:///x.db")


def test_arrow_rows_follow_the_table_schema():
    table = SamplesTable("t", (("x", "Float64"),), 60)
    arrow = rows_to_arrow(
        table, [{k: v for k, v in r.items() if k != "probs"} for r in _rows(["a"], [0])]
    )
    assert arrow.schema.field("event_time").type == pa.timestamp("ms", tz="UTC")
    assert arrow.num_rows == 1


def test_unqualified_names_mean_the_store_database(store, uid):
    table = SamplesTable(f"samples_{uid}", (("x", "Float64"), ("probs", "Array(Float64)")), 86400)
    store.ensure_table(table)
    store.insert(table, rows_to_arrow(table, _rows(["a"], [0])))
    assert store.query(f"SELECT record_id FROM {table.name}")["record_id"].to_list() == ["a"]


def test_a_table_made_before_sites_gains_the_site_column_and_keeps_its_rows(store, uid):
    table = SamplesTable(f"samples_{uid}", (("x", "Float64"),), retention_seconds=86400)
    name = f"{store.database}.{table.name}"
    old_ddl = table.ddl(store.database).replace(
        "ORDER BY (record_id, variant, site)", "ORDER BY (record_id, variant)"
    )
    store.command(f"CREATE DATABASE IF NOT EXISTS {store.database}")
    store.command(old_ddl.replace(",\n  `site` LowCardinality(String)", ""))
    store.command(
        f"INSERT INTO {name} (record_id, key, event_time, model, model_version, variant, "
        "sample_reason, inference_ms, sampled_at, x) VALUES "
        "('old', 'k', now64(3), 'm', '1', 'production', 'rate', 0.1, now64(3), 1.0)"
    )
    store.ensure_table(table)  # as the store does at every start
    key = store.query(
        f"SELECT sorting_key FROM system.tables WHERE database = '{store.database}' AND name = '{table.name}'"
    )
    assert key["sorting_key"][0] == "record_id, variant, site"
    rows = [
        {**r, "site": site}
        for r, site in zip(_rows(["old", "old"], [0, 0]), ["plant-1", "plant-2"], strict=True)
    ]
    store.insert(
        table, rows_to_arrow(table, [{k: v for k, v in r.items() if k != "probs"} for r in rows])
    )
    got = store.query(f"SELECT site, record_id FROM {name} FINAL ORDER BY site")
    assert got["site"].to_list() == ["", "plant-1", "plant-2"]  # the old row, then one per site
    store.ensure_table(table)  # once migrated, a start changes nothing
