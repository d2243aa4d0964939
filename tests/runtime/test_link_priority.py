"""A thin link carries what matters first: alerts and health before a backlog of samples."""

from __future__ import annotations

import threading

import orjson
import pytest
import yaml

from mlexec.connectors.broker import LocalBroker
from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.connectors.sources.kafka import priority_of
from mlexec.runtime.mirror import prepare_mirror, run_mirror
from mlexec.topologies import TopologyError, load_topology, plan_topology
from mlexec.topologies.plan import ALERTS_TOPIC, METRICS_TOPIC
from tests.runtime.test_edge_cloud import _doc
from tests.waiting import settled, wait_for

SAMPLES = 6000


def test_topics_go_alerts_and_health_first_then_predictions_then_the_rest():
    assert priority_of(ALERTS_TOPIC) == priority_of(METRICS_TOPIC) == 0
    assert priority_of("vib.predictions") == 1
    assert priority_of("vib.samples") == priority_of("vib.profiles") == 2


def test_a_bandwidth_is_a_rate(tmp_path):
    doc = _doc(tmp_path, "a:1", "b:2")
    doc["links"][0]["bandwidth"] = "2Mbit/s"
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert load_topology(path).links[0].bandwidth == 250_000
    doc["links"][0]["bandwidth"] = "fast"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(TopologyError, match=r"links.0.bandwidth: expected a rate like 256KiB/s"):
        load_topology(path)


@pytest.mark.integration
def test_with_the_uplink_throttled_alerts_and_health_overtake_the_sample_backlog(tmp_path):
    with LocalBroker() as edge, LocalBroker() as cloud:
        doc = _doc(tmp_path, edge.bootstrap, cloud.bootstrap)
        doc["links"][0]["bandwidth"] = "256KiB/s"
        path = tmp_path / "plant.yaml"
        path.write_text(yaml.safe_dump(doc))
        plan = plan_topology(load_topology(path))
        uc = plan.usecases["vib"]
        edge_conf = client_config(plan.topology.sites["edge"].kafka)
        cloud_conf = client_config(plan.topology.sites["cloud"].kafka)
        ensure_topics(edge_conf, plan.topics_at("edge"))
        filler = "x" * 400
        produce_records(  # the backlog a link that was down has to catch up on
            edge_conf,
            uc.samples_topic,
            [(f"s{i % 7}".encode(), orjson.dumps({"i": i, "pad": filler})) for i in range(SAMPLES)],
        )
        stop = threading.Event()
        mirror = threading.Thread(
            target=run_mirror, args=(prepare_mirror(plan, "edge:cloud"), stop), daemon=True
        )
        mirror.start()
        up = f"edge.{uc.samples_topic}"
        wait_for(lambda: len(read_topic(cloud_conf, up, timeout=5)) >= 300, 60, "samples going up")
        alerts = [(b"vib", orjson.dumps({"n": i})) for i in range(40)]
        produce_records(edge_conf, ALERTS_TOPIC, alerts)
        produce_records(edge_conf, METRICS_TOPIC, [(b"edge/pipeline", b'{"rows": []}')] * 10)

        def arrived() -> bool:
            got = len(read_topic(cloud_conf, f"edge.{ALERTS_TOPIC}", timeout=5))
            return (
                got == 40 and len(read_topic(cloud_conf, f"edge.{METRICS_TOPIC}", timeout=5)) == 10
            )

        wait_for(arrived, 60, "the alerts and health to cross")
        behind = SAMPLES - len(read_topic(cloud_conf, up, timeout=5))
        assert behind > 0, "the alerts waited for the whole sample backlog"

        wait_for(lambda: len(read_topic(cloud_conf, up, timeout=5)) >= SAMPLES, 120, "the backlog")
        settled(lambda: len(read_topic(cloud_conf, up, timeout=5)), 10, "the samples to settle")
        stop.set()
        mirror.join(30)
        crossed = [orjson.loads(v)["i"] for _, v, _, _, _ in read_topic(cloud_conf, up)]
        assert sorted(crossed) == list(range(SAMPLES))  # every sample once, paused or not
        ids = [
            orjson.loads(v)["n"] for _, v, _, _, _ in read_topic(cloud_conf, f"edge.{ALERTS_TOPIC}")
        ]
        assert sorted(ids) == list(range(40))


@pytest.mark.integration
def test_past_the_backlog_budget_the_oldest_samples_stay_behind_counted_and_reported(tmp_path):
    with LocalBroker() as edge, LocalBroker() as cloud:
        doc = _doc(tmp_path, edge.bootstrap, cloud.bootstrap)
        doc["links"][0]["backlog"] = 1000
        path = tmp_path / "plant.yaml"
        path.write_text(yaml.safe_dump(doc))
        plan = plan_topology(load_topology(path))
        uc = plan.usecases["vib"]
        edge_conf = client_config(plan.topology.sites["edge"].kafka)
        cloud_conf = client_config(plan.topology.sites["cloud"].kafka)
        ensure_topics(edge_conf, plan.topics_at("edge"))
        # what piled up on the member while its link was down
        produce_records(
            edge_conf,
            uc.samples_topic,
            [(f"s{i % 7}".encode(), orjson.dumps({"i": i})) for i in range(3000)],
        )
        produce_records(
            edge_conf,
            uc.predictions_topic,
            [(f"s{i % 7}".encode(), orjson.dumps({"i": i})) for i in range(400)],
        )
        produce_records(
            edge_conf, ALERTS_TOPIC, [(b"vib", orjson.dumps({"n": i})) for i in range(5)]
        )
        mirror = prepare_mirror(plan, "edge:cloud", once=True)
        run_mirror(mirror, once=True)

        def ids(topic: str, field: str) -> list[int]:
            return sorted(orjson.loads(v)[field] for _, v, _, _, _ in read_topic(cloud_conf, topic))

        sent = ids(f"edge.{uc.samples_topic}", "i")
        assert ids(f"edge.{uc.predictions_topic}", "i") == list(range(400))  # none left out
        up = [orjson.loads(v) for _, v, _, _, _ in read_topic(cloud_conf, f"edge.{ALERTS_TOPIC}")]
        assert sorted(a["n"] for a in up if "n" in a) == list(range(5))
        (report,) = [a for a in up if a.get("kind") == "link"]
        left = sorted(set(range(3000)) - set(sent))
        assert len(sent) == len(set(sent))  # none twice
        # what was not sent is counted, exactly, in the alert that went up first
        assert report["subject"] == uc.samples_topic and report["value"] == len(left) > 0
        assert len(sent) + 400 + 5 == 1000  # the budget: alerts and predictions came first
        # those left behind are each partition's oldest: what was sent is every partition's newest
        by_partition: dict[int, list[int]] = {}
        for _, v, _, partition, _offset in read_topic(edge_conf, uc.samples_topic):
            by_partition.setdefault(partition, []).append(orjson.loads(v)["i"])
        for records in by_partition.values():
            kept = [i for i in records if i in set(sent)]
            assert records[len(records) - len(kept) :] == kept
            # and each gave up its share of the backlog, not the first partition all of it
            assert abs(len(records) - len(kept) - len(records) * len(left) / 3000) <= 1
        (up_runner,) = [r for r in mirror.runners if r.status.connector == "edge->cloud"]
        assert up_runner.checkpoint.load()["state"]["dropped"] == {uc.samples_topic: len(left)}
        # a second pass sends nothing again and drops nothing more
        run_mirror(prepare_mirror(plan, "edge:cloud", once=True), once=True)
        assert ids(f"edge.{uc.samples_topic}", "i") == sent
