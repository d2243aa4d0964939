"""A fleet on loopback: four members and a cloud, each on a broker of its own.

Every member scores the same use case from the same kind of input (so their record ids
are equal); each member's samples are mirrored up as ``<member>.vib.samples`` and the
cloud keeps them in one table with a ``site`` column — accounted by (site, record id).
"""

from __future__ import annotations

import contextlib
import time
from datetime import timedelta
from typing import Any

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.connectors.broker import LocalBroker
from mlexec.connectors.kafka import client_config, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.connectors.samplestore import open_store
from mlexec.monitoring.columns import now_utc
from mlexec.monitoring.fleet import fleet_status
from mlexec.monitoring.monitor import Monitor
from mlexec.runtime.mirror import prepare_mirror, run_mirror
from mlexec.runtime.run import prepare_resources, prepare_site, run_pipeline, run_store
from mlexec.topologies import load_topology, plan_topology
from mlexec.topologies.plan import METRICS_TOPIC
from tests.topologies.test_fleets import fleet_doc

pytestmark = pytest.mark.integration


def _feed(conf: dict[str, Any], topic: str, count: int, *, bad_every: int = 0) -> int:
    """``count`` readings (every ``bad_every``-th malformed); how many are good."""
    rows, good = [], 0
    for i in range(count):
        if bad_every and i % bad_every == bad_every - 1:
            rows.append((b"s0", b'{"sensor": "s0", "ts": "not a time"}'))
            continue
        good += 1
        record = {"sensor": f"s{i % 5}", "ts": 1_900_000_000_000 + i, "a": i / 7, "b": i % 11}
        rows.append((record["sensor"].encode(), orjson.dumps(record)))
    produce_records(conf, topic, rows)
    return good


def _member_rows(conf: dict[str, Any], topic: str) -> set[str]:
    return {orjson.loads(v)["record_id"] for _, v, _, _, _ in read_topic(conf, topic)}


def _score(plan: Any, member: str) -> None:
    """What ``mlexec up --site <member>`` does, once through: pipeline, then the mirror."""
    run = prepare_site(plan, member)
    prepare_resources(run)
    run_pipeline(run, until_end=True)
    run_mirror(prepare_mirror(plan, f"{member}:cloud", once=True), once=True)


def test_the_cloud_keeps_every_members_samples_once_in_one_table_by_site(tmp_path):
    counts = {"plant-1": 600, "plant-2": 450, "plant-3": 700, "plant-4": 300}
    with contextlib.ExitStack() as brokers:
        cloud = brokers.enter_context(LocalBroker())
        at = {m: brokers.enter_context(LocalBroker()) for m in [*counts, "plant-5"]}
        doc = fleet_doc(tmp_path)
        doc["sites"]["cloud"]["kafka"]["bootstrap"] = cloud.bootstrap
        csv = "name,labels,bootstrap\n" + "".join(
            f"{m},region={'eu' if m < 'plant-3' else 'us'},{at[m].bootstrap}\n" for m in counts
        )
        (tmp_path / "plants.csv").write_text(csv)
        path = tmp_path / "fleet.yaml"
        path.write_text(yaml.safe_dump(doc))
        plan = plan_topology(load_topology(path))
        uc = plan.usecases["vib"]

        expected: dict[str, set[str]] = {}
        for member, count in counts.items():
            conf = client_config(plan.topology.sites[member].kafka)
            prepare_resources(prepare_site(plan, member))
            good = _feed(conf, uc.raw_topic, count, bad_every=50)
            _score(plan, member)
            if member == "plant-3":  # a member claims to be another: the topic tells
                _, value, _, _, _ = read_topic(conf, uc.samples_topic)[0]
                forged = {**orjson.loads(value), "record_id": "forged", "site": "plant-1"}
                produce_records(conf, uc.samples_topic, [(None, orjson.dumps(forged))])
                _score(plan, member)
                claim = {"usecase": "vib", "name": "records_in_per_s", "value": 1e9}
                health = {
                    "time": int(time.time() * 1000),
                    "site": "plant-1",
                    "part": "pipeline",
                    "rows": [claim],
                }
                produce_records(conf, METRICS_TOPIC, [(None, orjson.dumps(health))])
                run_mirror(prepare_mirror(plan, f"{member}:cloud", once=True), once=True)
            expected[member] = _member_rows(conf, uc.samples_topic) - {"forged"}
            assert len(expected[member]) == good  # sampling rate 1.0: every scored record
            assert len(read_topic(conf, uc.deadletter_topic)) == count - good
        # the members' record ids are the same: only the site tells their rows apart
        assert expected["plant-4"] <= expected["plant-1"]

        cloud_run = prepare_site(plan, "cloud")
        prepare_resources(cloud_run)
        run_store(cloud_run, until_end=True)
        _score(plan, "plant-2")  # nothing new: the mirror re-sends nothing
        run_store(cloud_run, until_end=True)  # resumes: nothing stored twice

        store_url = plan.topology.sites["cloud"].sample_store
        with open_store(store_url) as store:
            rows = store.query(f"SELECT site, record_id FROM mlexec.{uc.table}")
            final = store.query(f"SELECT count() AS n FROM mlexec.{uc.table} FINAL")
        got: dict[str, set[str]] = {}
        for site, rid in zip(rows["site"], rows["record_id"], strict=True):
            got.setdefault(site, set()).add(rid)
        assert len(rows) == int(final["n"][0])  # no row twice, not even before merging
        assert got.pop("plant-1") == expected["plant-1"]  # the forged row is not plant-1's ...
        assert got["plant-3"] == expected["plant-3"] | {"forged"}  # ... it is plant-3's
        got["plant-3"].discard("forged")
        assert got == {m: expected[m] for m in ("plant-2", "plant-3", "plant-4")}
        cloud_conf = client_config(plan.topology.sites["cloud"].kafka)
        assert read_topic(cloud_conf, uc.deadletter_topic) == []

        # the members' health came up with their samples: the cloud knows who is online
        with open_store(store_url) as store:
            monitor = Monitor(plan, "cloud", store)
            monitor.prepare()
            monitor.ingest()
            now = now_utc()
            members = plan.topology.fleets["plants"].names
            seen = fleet_status(store, members, now, timedelta(minutes=5))
            later = fleet_status(store, members, now + timedelta(minutes=6), timedelta(minutes=5))
        assert [(m.member, m.state) for m in seen] == [(m, "online") for m in counts]
        assert all(m.lag == 0 and m.deadletter_rate is not None for m in seen)
        # the heartbeat says what each serves: this topology, the model's version 1
        assert [(m.topology, m.serves()) for m in seen] == [(plan.digest, "vib 1")] * 4
        assert [m.state for m in later] == ["offline"] * 4  # six minutes without a word
        # the snapshot that claims to be plant-1's came on plant-3's topic: it is plant-3's
        assert seen[2].records_per_s == 1e9 and (seen[0].records_per_s or 0) < 1e9
        result = CliRunner().invoke(app, ["fleet", "status", str(path), "--json"])
        assert result.exit_code == 0, result.output
        listed = orjson.loads(result.output)
        assert [(m["member"], m["state"]) for m in listed["members"]] == [
            (m, "online") for m in counts
        ]
        assert all(m["current_topology"] for m in listed["members"])

        # a member added to the inventory: the cloud's next start reads it too
        (tmp_path / "plants.csv").write_text(csv + f"plant-5,region=eu,{at['plant-5'].bootstrap}\n")
        plan = plan_topology(load_topology(path))
        conf5 = client_config(plan.topology.sites["plant-5"].kafka)
        prepare_resources(prepare_site(plan, "plant-5"))
        _feed(conf5, uc.raw_topic, 200)
        _score(plan, "plant-5")
        cloud_run = prepare_site(plan, "cloud")
        prepare_resources(cloud_run)
        run_store(cloud_run, until_end=True)  # resumes from recovery with one more source
        with open_store(store_url) as store:
            Monitor(plan, "cloud", store).ingest()
        result = CliRunner().invoke(app, ["fleet", "status", str(path), "--json"])
        current = {
            m["member"]: m["current_topology"] for m in orjson.loads(result.output)["members"]
        }
        # plant-5 runs the topology that lists it; the others still run the one before
        assert current == {
            "plant-1": False,
            "plant-2": False,
            "plant-3": False,
            "plant-4": False,
            "plant-5": True,
        }
        with open_store(store_url) as store:
            rows = store.query(f"SELECT site, count() AS n FROM mlexec.{uc.table} GROUP BY site")
        stored = dict(zip(rows["site"], rows["n"], strict=True))
        assert stored == {
            **{m: len(expected[m]) for m in counts},
            "plant-3": len(expected["plant-3"]) + 1,
            "plant-5": len(_member_rows(conf5, uc.samples_topic)),
        }

        # a member taken out of the inventory: the cloud resumes past it, keeping its rows
        (tmp_path / "plants.csv").write_text(
            csv.replace(f"plant-2,region=eu,{at['plant-2'].bootstrap}\n", "")
            + f"plant-5,region=eu,{at['plant-5'].bootstrap}\n"
        )
        plan = plan_topology(load_topology(path))
        assert "plant-2" not in plan.topology.sites
        _feed(conf5, uc.raw_topic, 100)  # plant-5 goes on scoring
        _score(plan, "plant-5")
        cloud_run = prepare_site(plan, "cloud")
        run_store(cloud_run, until_end=True)  # resumes with a source the state outlived
        with open_store(store_url) as store:
            rows = store.query(f"SELECT site, count() AS n FROM mlexec.{uc.table} GROUP BY site")
        after = dict(zip(rows["site"], rows["n"], strict=True))
        assert after == {**stored, "plant-5": len(_member_rows(conf5, uc.samples_topic))}
