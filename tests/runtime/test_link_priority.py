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
