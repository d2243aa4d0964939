"""Edge and cloud on two local brokers: the link's plan, MirrorMaker 2 properties, the mirror."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.connectors.broker import LocalBroker, free_port
from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.connectors.samplestore import open_store
from mlexec.operators.testing import make_mlp
from mlexec.runtime.mirror import prepare_mirror, run_mirror
from mlexec.runtime.run import prepare_resources, prepare_site, run_pipeline, run_store
from mlexec.topologies import TopologyError, load_topology, parse_topology, plan_topology
from mlexec.topologies.plan import MODELS_TOPIC
from mlexec.topologies.render import render_mm2
from tests.dataflows.spine import FIELDS, T0
from tests.waiting import settled, wait_for


def _doc(tmp: Path, edge: str, cloud: str, *, secure: bool = False, **placement: str) -> dict:
    make_mlp(tmp / "model.onnx", inputs=len(FIELDS), hidden=(16,), seed=5)
    site = {"sample_store": f"chdb://{tmp}/chdb-{{}}", "state_dir": f"{tmp}/state-{{}}"}
    return {
        "name": "plant",
        "sites": {
            name: {
                "kafka": {"bootstrap": bootstrap},
                "sample_store": site["sample_store"].format(name),
                "state_dir": site["state_dir"].format(name),
            }
            for name, bootstrap in (("edge", edge), ("cloud", cloud))
        },
        "links": [{"source": "edge", "target": "cloud", "secure": secure}],
        "usecases": {
            "vib": {
                "input": {
                    "partitions": 2,
                    "key": "sensor",
                    "time": "ts",
                    "max_ahead": "3650d",  # the test's event times are in 2030
                    "schema": {"sensor": "str", "ts": "timestamp", **{f: "float" for f in FIELDS}},
                },
                "placement": {
                    "connectors": "edge",
                    "dispatch": "edge",
                    "infer": "edge",
                    "store": "cloud",
                    "act": "cloud",
                    **placement,
                },
                "dispatch": {"kind": "microbatch", "max_records": 64, "max_wait": "20ms"},
                "model": {"name": "mlp", "version": "1", "path": str(tmp / "model.onnx")},
                "sampling": {"rate": 0.25},
                "outputs": [{"kind": "file", "path": str(tmp / "alarms")}],
            }
        },
    }


def _properties(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _names(allowlist: str) -> set[str]:
    return {re.sub(r"\\(.)", r"\1", t.strip().replace("\\\\", "\\")) for t in allowlist.split(",")}


# ------------------------------------------------------------------------ render


def test_mm2_properties_carry_exactly_what_the_placement_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_PW", "edge-s3cret")
    doc = _doc(tmp_path, "edge-kafka:9093", "cloud-kafka:9093", secure=True)
    for name in ("edge", "cloud"):
        doc["sites"][name]["kafka"]["security"] = {
            "protocol": "sasl_ssl",
            "ca": "/etc/mlexec/ca.pem",
            "sasl": {"mechanism": "SCRAM-SHA-512", "username": name, "password": "${EDGE_PW}"},
        }
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(doc))
    plan = plan_topology(load_topology(path))
    props = _properties(render_mm2(plan, plan.topology.links[0]))
    assert props["clusters"] == "edge, cloud"
    assert _names(props["edge->cloud.topics"]) == {
        "vib.samples",
        "vib.predictions",
        "mlexec.alerts",
        "mlexec.metrics",
    }
    assert _names(props["cloud->edge.topics"]) == {MODELS_TOPIC}
    assert props["exactly.once.source.support"] == "enabled"
    for alias in ("edge", "cloud"):
        assert props[f"{alias}.security.protocol"] == "SASL_SSL"
        assert props[f"{alias}.sasl.mechanism"] == "SCRAM-SHA-512"
        assert f'username="{alias}" password="edge-s3cret"' in props[f"{alias}.sasl.jaas.config"]
        assert props[f"{alias}.ssl.truststore.location"] == "/etc/mlexec/ca.pem"
    # the store back on the edge: samples stay there, nothing else crosses
    doc["usecases"]["vib"]["placement"]["store"] = "edge"
    path.write_text(yaml.safe_dump(doc))
    plan = plan_topology(load_topology(path))
    props = _properties(render_mm2(plan, plan.topology.links[0]))
    assert _names(props["edge->cloud.topics"]) == {
        "vib.predictions",
        "mlexec.alerts",
        "mlexec.metrics",
    }

    # the command writes private files and prints no secret; validate neither
    out = tmp_path / "deploy"
    result = CliRunner().invoke(app, ["render", str(path), "mm2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = out / "mm2-edge-cloud.properties"
    assert written.stat().st_mode & 0o777 == 0o600
    assert "edge-s3cret" in written.read_text() and "edge-s3cret" not in result.output
    checked = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "200"})
    assert checked.exit_code == 0, checked.output
    assert "edge-s3cret" not in checked.output


def test_a_placement_across_sites_needs_a_link_and_a_secure_link_needs_security(tmp_path):
    doc = _doc(tmp_path, "a:1", "b:2")
    doc["links"] = []
    with pytest.raises(TopologyError, match=r"links: .*'edge'.*'cloud'.*no link connects them"):
        plan_topology(parse_topology(yaml.safe_dump(doc), base_dir=tmp_path))
    doc["links"] = [{"source": "edge", "target": "cloud"}]  # secure by default
    with pytest.raises(TopologyError, match=r"links\.0\.secure: .*'plaintext'"):
        parse_topology(yaml.safe_dump(doc), base_dir=tmp_path)
    sasl = {"mechanism": "PLAIN", "username": "u", "password": "p"}
    doc["sites"]["edge"]["kafka"]["security"] = {"protocol": "sasl_plaintext", "sasl": sasl}
    with pytest.raises(TopologyError, match=r"links\.0\.secure: .*'sasl_plaintext'"):
        parse_topology(yaml.safe_dump(doc), base_dir=tmp_path)  # credentials in clear: no


# ------------------------------------------------------------------------- mirror


class _Proxy:
    """A TCP proxy on 127.0.0.1 that can be cut and restored: the link to the cloud.

    It counts what it sees, so a test waits on the link's state instead of sleeping:
    ``refused`` connections while cut, ``sent`` bytes towards the cloud.
    """

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.cut = False
        self.refused = 0
        self.sent = 0

    def up(self) -> None:
        self.cut = False
        if self._server is None:
            server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._server = server
            threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        """Cut the link: open connections drop, new ones are closed at once."""
        self.cut = True
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._conns = []

    def close(self) -> None:
        self.down()
        if self._server is not None:
            self._server.close()
            self._server = None

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            if self.cut:
                self.refused += 1
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._conns += [client, upstream]
            for a, b, count in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, count), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, count: bool) -> None:
        try:
            while data := a.recv(65536):
                if count:
                    self.sent += len(data)
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _feed(conf: dict[str, Any], topic: str, first: int, count: int) -> None:
    rows = []
    for i in range(first, first + count):
        record = {
            "sensor": f"s{i % 7}",
            "ts": T0 + i,
            **{f: (i * 31 + j) % 97 / 97 for j, f in enumerate(FIELDS)},
        }
        rows.append((record["sensor"].encode(), orjson.dumps(record)))
    produce_records(conf, topic, rows)


def _wait_for_count(conf: dict[str, Any], topic: str, count: int, timeout: float = 90) -> None:
    """Until ``topic`` holds ``count`` records and no more arrive (a double would show)."""
    wait_for(
        lambda: len(read_topic(conf, topic, timeout=5)) >= count, timeout, f"{count} in {topic}"
    )
    settled(lambda: len(read_topic(conf, topic, timeout=5)), 30, f"{topic} to settle")


def _ids(conf: dict[str, Any], topic: str, field: str = "id") -> list[str]:
    return [orjson.loads(v)[field] for _, v, _, _, _ in read_topic(conf, topic)]


@pytest.mark.integration
def test_the_mirror_carries_predictions_and_samples_up_and_models_down_through_an_outage(tmp_path):
    proxy_target = free_port()
    proxy = _Proxy(proxy_target)
    with (
        LocalBroker() as edge,
        LocalBroker(port=proxy_target, advertised_port=proxy.port) as cloud,
    ):
        proxy.up()
        cloud_at = f"127.0.0.1:{proxy.port}"  # every cloud client goes through the link
        path = tmp_path / "plant.yaml"
        path.write_text(yaml.safe_dump(_doc(tmp_path, edge.bootstrap, cloud_at)))
        plan = plan_topology(load_topology(path))
        uc = plan.usecases["vib"]
        edge_conf = client_config(plan.topology.sites["edge"].kafka)
        cloud_conf = {"bootstrap.servers": cloud_at}
        edge_run = prepare_site(plan, "edge")
        prepare_resources(edge_run)
        ensure_topics(cloud_conf, [plan.topic_spec(MODELS_TOPIC)])
        produce_records(cloud_conf, MODELS_TOPIC, [(b"vib/mlp/2", b'{"manifest": "v2"}')])

        _feed(edge_conf, uc.raw_topic, 0, 3000)
        run_pipeline(edge_run, until_end=True)  # resumes from its recovery state
        mirror = prepare_mirror(plan, "edge:cloud")
        stop = threading.Event()
        worker = threading.Thread(target=run_mirror, args=(mirror, stop), daemon=True)
        worker.start()
        up = f"edge.{uc.predictions_topic}"
        _wait_for_count(cloud_conf, up, 3000)

        proxy.down()  # the link goes away; the edge goes on predicting
        _feed(edge_conf, uc.raw_topic, 3000, 2000)
        run_pipeline(edge_run, until_end=True)  # resumes from its recovery state
        assert len(read_topic(edge_conf, uc.predictions_topic)) == 5000
        wait_for(lambda: proxy.refused >= 2, 60, "the mirror to meet the cut link")
        proxy.up()  # back: the backlog flows
        _wait_for_count(cloud_conf, up, 5000)

        os.kill(cloud.pid, signal.SIGSTOP)  # the cloud broker itself hangs for a while
        _feed(edge_conf, uc.raw_topic, 5000, 1500)
        run_pipeline(edge_run, until_end=True)
        assert len(read_topic(edge_conf, uc.predictions_topic)) == 6500
        hung_at = proxy.sent
        wait_for(lambda: proxy.sent > hung_at, 60, "the mirror to write to the hung broker")
        os.kill(cloud.pid, signal.SIGCONT)
        _wait_for_count(cloud_conf, up, 6500)

        stop.set()  # the mirror stops; the edge goes on; a new mirror takes over
        worker.join(60)
        _feed(edge_conf, uc.raw_topic, 6500, 500)
        run_pipeline(edge_run, until_end=True)
        run_mirror(prepare_mirror(plan, "edge:cloud", once=True), once=True)

        # up: every prediction and sample exactly once, same partition, same order
        edge_preds = read_topic(edge_conf, uc.predictions_topic)
        cloud_preds = read_topic(cloud_conf, up)
        assert sorted(_ids(cloud_conf, up)) == sorted(_ids(edge_conf, uc.predictions_topic))
        assert len(cloud_preds) == len(edge_preds) == 7000
        for part in (0, 1):
            assert [v for _, v, _, p, _ in cloud_preds if p == part] == [
                v for _, v, _, p, _ in edge_preds if p == part
            ]
        headers = dict(cloud_preds[0][2])
        assert headers["mlexec.mirror.source"] == b"edge"
        samples_up = f"edge.{uc.samples_topic}"
        sample_ids = _ids(edge_conf, uc.samples_topic, "record_id")
        assert sorted(_ids(cloud_conf, samples_up, "record_id")) == sorted(sample_ids)
        assert len(set(sample_ids)) == len(sample_ids) > 1400  # 25 % of 7,000
        # down: the model published in the cloud is on the edge
        down = read_topic(edge_conf, f"cloud.{MODELS_TOPIC}")
        assert [(k, v) for k, v, _, _, _ in down] == [(b"vib/mlp/2", b'{"manifest": "v2"}')]
        statuses = {s.connector: s for s in mirror.statuses}
        assert statuses["edge->cloud"].produced + 500 < 7000 + len(sample_ids)  # then the new one

        # the cloud's store reads the mirrored samples into its own sample store
        cloud_run = prepare_site(plan, "cloud")
        prepare_resources(cloud_run)
        run_store(cloud_run, until_end=True, recovery=False)
        with open_store(plan.topology.sites["cloud"].sample_store) as store:
            rows = store.query(f"SELECT count() AS n FROM mlexec.{uc.table} FINAL")
        assert int(rows["n"][0]) == len(sample_ids)
        proxy.close()
    assert os.path.exists(tmp_path / "state-edge" / "mirror" / "plant" / "edge-cloud.json")


@pytest.mark.integration
def test_kill_9_of_the_mirror_then_a_restart_re_sends_nothing(tmp_path):
    import signal
    import subprocess
    import sys

    with LocalBroker() as edge, LocalBroker() as cloud:
        path = tmp_path / "plant.yaml"
        path.write_text(yaml.safe_dump(_doc(tmp_path, edge.bootstrap, cloud.bootstrap)))
        plan = plan_topology(load_topology(path))
        uc = plan.usecases["vib"]
        edge_conf = {"bootstrap.servers": edge.bootstrap}
        cloud_conf = {"bootstrap.servers": cloud.bootstrap}
        ensure_topics(edge_conf, uc.topics())
        n = 30_000
        preds = [
            (f"s{i % 7}".encode(), orjson.dumps({"id": f"vib.raw:{i % 2}:{i}", "key": f"s{i % 7}"}))
            for i in range(n)
        ]
        produce_records(edge_conf, uc.predictions_topic, preds)
        cmd = [sys.executable, "-m", "mlexec.cli", "mirror", str(path), "--link", "edge:cloud"]
        checkpoint = tmp_path / "state-edge" / "mirror" / "plant" / "edge-cloud.json"
        for share in (0.2, 0.6):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for(
                    lambda share=share: (
                        sum(
                            orjson.loads(checkpoint.read_bytes())["state"]["offsets"]
                            .get(uc.predictions_topic, {})
                            .values()
                        )
                        > share * n
                    ),
                    60,
                    f"{share:.0%} mirrored",
                    every=0.02,
                )
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
        finished = subprocess.run([*cmd, "--once"], capture_output=True, text=True, timeout=180)
        assert finished.returncode == 0, finished.stderr
        up = read_topic(cloud_conf, f"edge.{uc.predictions_topic}")
        ids = [orjson.loads(v)["id"] for _, v, _, _, _ in up]
        assert len(ids) == len(set(ids)) == n  # every record once, none re-sent
        edge_side = read_topic(edge_conf, uc.predictions_topic)
        for part in (0, 1):
            assert [v for _, v, _, p, _ in up if p == part] == [
                v for _, v, _, p, _ in edge_side if p == part
            ]


SPLIT_REDUCTION = {
    "kind": "aggregate",
    "fields": {"f0": ["mean", "max", "quantile(0.9)"], "f1": ["std", "slope", "zero_crossings"]},
    "stateful": {"ewma": {"columns": ["f0_mean"], "alpha": 0.5}, "diff": ["f1_std"]},
}


def _predictions(conf: dict[str, Any], topic: str) -> dict[str, list[float]]:
    out = {}
    for _, value, _, _, _ in read_topic(conf, topic):
        doc = orjson.loads(value)
        out[doc["id"]] = doc["outputs"]["y"]
    return out


@pytest.mark.integration
def test_reduction_on_the_edge_and_inference_in_the_cloud_predict_as_one_site(tmp_path):
    with LocalBroker() as edge, LocalBroker() as cloud:
        doc = _doc(tmp_path, edge.bootstrap, cloud.bootstrap, infer="cloud")
        make_mlp(tmp_path / "model.onnx", inputs=8, hidden=(16,), seed=5)
        uc_doc = doc["usecases"]["vib"]
        uc_doc["dispatch"] = {"kind": "tumbling", "size": "1s", "lateness": "200ms"}
        uc_doc["reduction"] = SPLIT_REDUCTION
        uc_doc["outputs"] = []
        split_path = tmp_path / "split.yaml"
        split_path.write_text(yaml.safe_dump(doc))
        # the same use case on the edge alone: the reference
        single = {**doc, "name": "single", "links": [], "sites": {"edge": doc["sites"]["edge"]}}
        single["usecases"] = {"vib": {**uc_doc, "placement": {}}}
        single_path = tmp_path / "single.yaml"
        single_path.write_text(yaml.safe_dump(single))

        plan = plan_topology(load_topology(split_path))
        uc = plan.usecases["vib"]
        assert uc.read_name(uc.reduced_topic, "dispatch", "infer") == "edge.vib.reduced"
        edge_conf = client_config(plan.topology.sites["edge"].kafka)
        cloud_conf = client_config(plan.topology.sites["cloud"].kafka)
        edge_run, cloud_run = prepare_site(plan, "edge"), prepare_site(plan, "cloud")
        prepare_resources(edge_run)
        prepare_resources(cloud_run, tables=False)
        _feed(edge_conf, uc.raw_topic, 0, 4000)

        run_pipeline(edge_run, until_end=True, recovery=False)  # raw → edge's vib.reduced
        assert read_topic(edge_conf, uc.reduced_topic), "the edge reduces"
        assert not read_topic(edge_conf, uc.predictions_topic), "the edge does not infer"
        run_mirror(prepare_mirror(plan, "edge:cloud", once=True), once=True)
        run_pipeline(cloud_run, until_end=True, recovery=False)  # edge.vib.reduced → predictions
        split = _predictions(cloud_conf, uc.predictions_topic)

        single_plan = plan_topology(load_topology(single_path))
        single_run = prepare_site(single_plan, "edge")
        run_pipeline(single_run, until_end=True, recovery=False)
        reference = _predictions(edge_conf, uc.predictions_topic)

    assert len(reference) == 7 * 4  # 7 sensors, 4 windows of 1 s (4,000 records 1 ms apart)
    assert split.keys() == reference.keys()
    for record_id, y in reference.items():
        assert split[record_id] == pytest.approx(y, abs=1e-6), record_id


@pytest.mark.integration
def test_a_version_published_in_the_cloud_comes_down_and_serves_on_the_edge(tmp_path):
    with LocalBroker() as edge, LocalBroker() as cloud:
        path = tmp_path / "plant.yaml"
        path.write_text(yaml.safe_dump(_doc(tmp_path, edge.bootstrap, cloud.bootstrap)))
        plan = plan_topology(load_topology(path))
        uc = plan.usecases["vib"]
        edge_conf = client_config(plan.topology.sites["edge"].kafka)
        edge_run = prepare_site(plan, "edge")
        prepare_resources(edge_run)
        prepare_resources(prepare_site(plan, "cloud"))
        _feed(edge_conf, uc.raw_topic, 0, 500)
        run_pipeline(edge_run, until_end=True)

        v2 = make_mlp(tmp_path / "v2.onnx", inputs=len(FIELDS), hidden=(16,), seed=6)
        done = CliRunner().invoke(
            app,
            [
                "model",
                "publish",
                str(path),
                str(v2),
                "--usecase",
                "vib",
                "--version",
                "2",
                "--stage",
                "production",
            ],
        )
        assert done.exit_code == 0, done.output
        assert read_topic(
            {"bootstrap.servers": cloud.bootstrap}, MODELS_TOPIC
        )  # published up there
        assert not read_topic(edge_conf, MODELS_TOPIC)  # not on the edge's own registry
        run_mirror(prepare_mirror(plan, "edge:cloud", once=True), once=True)  # models come down

        _feed(edge_conf, uc.raw_topic, 500, 500)
        run_pipeline(edge_run, until_end=True)
        preds = [orjson.loads(v) for _k, v, *_ in read_topic(edge_conf, uc.predictions_topic)]
        versions = {}
        for p in preds:
            versions.setdefault(p["version"], 0)
            versions[p["version"]] += 1
        assert versions == {"1": 500, "2": 500}
