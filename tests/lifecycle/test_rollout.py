"""Rollouts in waves: who is in which wave, members' own routings, and what halts a wave.

The waves and the registry messages are pure logic; the alert that rolls a wave back
is a real one — raised on a member, mirrored up as ``<member>.mlexec.alerts`` onto the
cloud's broker and filed in the cloud's chDB store by its monitor.
"""

from __future__ import annotations

import time
from datetime import timedelta

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.cli.rollout import parse_wave
from mlexec.connectors.broker import LocalBroker
from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.connectors.samplestore import open_store
from mlexec.errors import RegistryError, TopologyError
from mlexec.lifecycle.protocol import Assembler, Routing, follow_message, routing_message
from mlexec.lifecycle.registry import current_routing, publish_model, read_registry
from mlexec.lifecycle.rollout import pin, plan_waves, rollout_of, start_rollout, step_rollout
from mlexec.monitoring.columns import now_utc
from mlexec.monitoring.monitor import Monitor
from mlexec.topologies import load_topology, plan_topology
from mlexec.topologies.plan import TopicSpec, remote_name
from mlexec.topologies.schema.fleets import Fleet, FleetMember, Wave
from tests.topologies.test_fleets import fleet_doc


def _fleet(n: int) -> Fleet:
    members = [
        FleetMember(name=f"m-{i:03d}", labels={"ring": "canary"} if i % 10 == 3 else {})
        for i in range(n)
    ]
    return Fleet(site={"kafka": {"bootstrap": "x:1"}}, members=members)


def test_waves_take_members_by_stable_hash_or_label_and_the_rest_come_last():
    fleet = _fleet(200)
    waves = plan_waves(fleet, [Wave(labels={"ring": "canary"}), Wave(share=0.25)])
    canary, quarter, rest = waves
    assert canary == tuple(f"m-{i:03d}" for i in range(200) if i % 10 == 3)
    assert 30 <= len(quarter) <= 70  # a quarter of the 180 others, by their names' hash
    assert sorted(canary + quarter + rest) == sorted(fleet.names)  # each member once
    # the same member is in the same wave for every rollout, and for a bigger fleet too
    first = plan_waves(fleet, [Wave(share=0.25)])[0]
    bigger = plan_waves(_fleet(400), [Wave(share=0.25)])[0]
    assert first == tuple(m for m in bigger if m in fleet.names)
    # pinned members are in no wave; a wave that takes nobody is left out
    pinned = set(canary)
    assert plan_waves(fleet, [Wave(labels={"ring": "canary"}), Wave(share=1.0)], pinned) == (
        tuple(m for m in fleet.names if m not in pinned),
    )
    assert plan_waves(fleet, [Wave(labels={"ring": "none"})]) == (fleet.names,)


def test_a_members_own_routing_wins_until_it_follows_the_fleet_again():
    registry = Assembler()
    fleet_wide = Routing("uc", production="1")
    mine = Routing("uc", production="2", history=("1",), member="m-1", pinned=True)
    for key, value in (routing_message(fleet_wide), routing_message(mine)):
        registry.add(key, value)
    assert registry.routing_for("uc", "m-1") == mine
    assert registry.routing_for("uc", "m-2") == fleet_wide
    assert registry.add(*follow_message("uc", "m-1")) == ("routing", "uc")
    assert registry.routing_for("uc", "m-1") == fleet_wide
    # a message whose key names another member than its value is refused, not applied
    key, value = routing_message(mine)
    with pytest.raises(RegistryError, match="holds the routing of uc@m-1"):
        registry.add(b"routing:uc@m-2", value)
    assert "uc@m-2" not in registry.routings


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.25", Wave(share=0.25)), ("10%", Wave(share=0.1)), ("ring=canary, region=eu",
      Wave(labels={"ring": "canary", "region": "eu"}))],
)  # fmt: skip
def test_a_wave_on_the_command_line_is_a_share_or_labels(text, expected):
    assert parse_wave(text) == expected


@pytest.mark.parametrize("text", ["0", "150%", "ring=", "soon"])
def test_a_wave_that_is_neither_is_refused(text):
    with pytest.raises(TopologyError, match="--wave"):
        parse_wave(text)


def test_a_wave_with_both_a_share_and_labels_is_refused_at_its_yaml_path(tmp_path):
    doc = fleet_doc(tmp_path, inventory=None, members=[{"name": "p", "vars": {"bootstrap": "h:1"}}])
    doc["fleets"]["plants"]["rollout"] = {"waves": [{"share": 0.5, "labels": {"a": "b"}}]}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(TopologyError, match=r"fleets.plants.rollout.waves.0.*either a share"):
        load_topology(path)


@pytest.mark.integration
def test_an_alert_a_member_raised_rolls_its_wave_back(tmp_path):
    with LocalBroker() as cloud:
        members = [{"name": f"plant-{i}", "vars": {"bootstrap": "127.0.0.1:9"}} for i in (1, 2)]
        doc = fleet_doc(tmp_path, inventory=None, members=members)
        doc["sites"]["cloud"]["kafka"]["bootstrap"] = cloud.bootstrap
        path = tmp_path / "fleet.yaml"
        path.write_text(yaml.safe_dump(doc))
        plan = plan_topology(load_topology(path))
        uc = plan.usecases["vib"]
        conf = client_config(plan.topology.sites["cloud"].kafka)
        publish_model(plan, conf, uc, tmp_path / "model.onnx", "2")
        with pytest.raises(RegistryError, match="no published version 7"):
            start_rollout(plan, conf, uc, "7")
        with pytest.raises(RegistryError, match="not a member of the fleet"):
            pin(plan, conf, uc, "cloud", "2")
        started = start_rollout(plan, conf, uc, "2", waves=[Wave(share=1.0)], soak_s=60)
        with pytest.raises(RegistryError, match="the rollout of 2 is at wave 1 of 1"):
            start_rollout(plan, conf, uc, "2")
        reached = started.waves[0]
        assert set(reached) == {"plant-1", "plant-2"}
        registry = read_registry(conf)
        assert [registry.routing_for(uc.name, m).production for m in reached] == ["2", "2"]

        with open_store(plan.topology.sites["cloud"].sample_store) as store:
            monitor = Monitor(plan, "cloud", store)
            monitor.prepare()
            assert step_rollout(plan, store, conf, "cloud", uc, "y", now_utc()) is None
            # plant-2's watcher could not load version 2; its link brings the alert up
            alert = {
                "kind": "model",
                "usecase": "vib",
                "site": "plant-1",  # what it says; the topic says plant-2
                "severity": "critical",
                "message": "vib version 2: the artifact's sha256 is 1f2e…, refused",
                "at": int(time.time() * 1000),
            }
            topic = remote_name("plant-2", "mlexec.alerts")
            ensure_topics(conf, [TopicSpec(topic, 1)])
            produce_records(conf, topic, [(b"vib", orjson.dumps(alert)), (None, b"{not json")])
            assert monitor.ingest()["alerts"] == 1
            why = step_rollout(plan, store, conf, "cloud", uc, "y", now_utc() + timedelta(hours=1))
        assert why is not None and "model alert from plant-2: vib version 2" in why
        registry = read_registry(conf)
        assert rollout_of(registry, uc.name).state == "rolled back"
        assert current_routing(registry, uc).production == "1"
        assert [registry.routing_for(uc.name, m).production for m in reached] == ["1", "1"]
        result = CliRunner().invoke(app, ["model", "rollout", str(path), "-u", "vib", "--halt"])
        assert result.exit_code != 0 and "no rollout in progress (its last one is rolled back)" in (
            result.output
        )


@pytest.mark.integration
def test_a_halted_rollout_waits_for_the_operator_and_resumes_with_a_fresh_soak(tmp_path):
    with LocalBroker() as cloud:
        members = [{"name": f"plant-{i}", "vars": {"bootstrap": "127.0.0.1:9"}} for i in (1, 2)]
        doc = fleet_doc(tmp_path, inventory=None, members=members)
        doc["sites"]["cloud"]["kafka"]["bootstrap"] = cloud.bootstrap
        path = tmp_path / "fleet.yaml"
        path.write_text(yaml.safe_dump(doc))
        plan = plan_topology(load_topology(path))
        uc = plan.usecases["vib"]
        conf = client_config(plan.topology.sites["cloud"].kafka)
        publish_model(plan, conf, uc, tmp_path / "model.onnx", "2")
        start_rollout(plan, conf, uc, "2", waves=[Wave(share=0.5), Wave(share=1.0)], soak_s=60)

        def cli(*flags: str) -> object:
            return CliRunner().invoke(app, ["model", "rollout", str(path), "-u", "vib", *flags])

        refused = cli("--resume")
        assert (
            refused.exit_code != 0
            and "no halted rollout to resume (its last one is soaking)" in (refused.output)
        )
        assert cli("--halt").exit_code == 0
        halted = rollout_of(read_registry(conf), uc.name)
        assert halted is not None and halted.state == "halted"
        with open_store(plan.topology.sites["cloud"].sample_store) as store:
            Monitor(plan, "cloud", store).prepare()
            later = now_utc() + timedelta(days=1)
            assert step_rollout(plan, store, conf, "cloud", uc, "y", later) is None  # it waits
        assert rollout_of(read_registry(conf), uc.name) == halted
        both = cli("--resume", "--halt")
        assert both.exit_code != 0 and "alone" in both.output
        done = cli("--resume")
        assert done.exit_code == 0 and "resumed at wave 1" in done.output, done.output
        resumed = rollout_of(read_registry(conf), uc.name)
        assert resumed is not None and resumed.state == "soaking" and resumed.wave == 0
        assert resumed.wave_started > halted.wave_started
