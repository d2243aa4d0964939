"""A site's pipeline as a bytewax cluster of processes, started as a StatefulSet starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from mlexec.connectors.broker import free_port
from mlexec.connectors.reading import read_topic
from mlexec.errors import TopologyError
from mlexec.runtime.cluster import Cluster, PeerWatch, cluster_from
from mlexec.topologies import load_topology, plan_topology
from mlexec.topologies.kubernetes import render_k8s
from tests.dataflows.spine import feed, spine_topology
from tests.waiting import wait_for

MLEXEC = [sys.executable, "-m", "mlexec.cli"]
PARTITIONS = 6


def _topology(tmp: Path, bootstrap: str, uid: str) -> Path:
    path = spine_topology(
        tmp,
        bootstrap,
        uid,
        dispatch="{kind: microbatch, max_records: 200, max_wait: 10ms}",
        reduction="{kind: identity}",
        sampling="{rate: 1.0}",
    )
    doc = yaml.safe_load(path.read_text())
    (uc,) = doc["usecases"].values()
    uc["input"]["partitions"] = PARTITIONS  # every process gets some to read
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _hostfile(tmp: Path, processes: int) -> Path:
    path = tmp / f"hosts-{processes}-{free_port()}"
    path.write_text("".join(f"127.0.0.1:{free_port()}\n" for _ in range(processes)))
    return path


def _ports(count: int) -> int:
    """A port p with p … p + count - 1 free: process i serves its metrics on p + i."""
    for _ in range(50):
        base = free_port()
        try:
            for port in range(base + 1, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no run of free ports on 127.0.0.1")


def _statefulset_pod(path: Path) -> tuple[str, list[str], dict[str, str]]:
    """The pipeline StatefulSet ``mlexec render k8s`` writes for this topology.

    Its name, and its pods' command and (literal) environment.
    """
    plan = plan_topology(load_topology(path))
    files = render_k8s(plan, "here", path.read_text(), topology_file=path.name)
    sts = yaml.safe_load(files["pipeline.yaml"])
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return sts["metadata"]["name"], container["args"], env


def _start(
    path: Path,
    processes: int,
    *,
    recovery: bool,
    until_end: bool = True,
    metrics: int | None = None,
) -> list[Any]:
    """The pipeline as ``processes`` pods of its rendered StatefulSet.

    Each runs the pods' own command (the ConfigMap's path mapped to the topology's) and
    environment, with the pod name the downward API gives pod ``i``. What a laptop
    lacks is the headless Service's DNS: the peers come from a hostfile instead
    (``BYTEWAX_HOSTFILE_PATH``, bytewax's other convention), as loopback ports.
    """
    name, args, pod_env = _statefulset_pod(path)
    assert pod_env["MLEXEC_PEERS"].startswith(f"{name}:")
    mount = f"/etc/mlexec/{path.name}"
    assert mount in args
    args = [str(path) if a == mount else a for a in args]
    args[args.index("--metrics-port") + 1] = str(metrics or _ports(processes))
    hosts = _hostfile(path.parent, processes)
    procs = []
    for ordinal in range(processes):
        env = {k: v for k, v in pod_env.items() if k != "MLEXEC_PEERS"}
        env |= {
            "BYTEWAX_POD_NAME": f"{name}-{ordinal}",
            "BYTEWAX_HOSTFILE_PATH": str(hosts),
            "MLEXEC_METRICS_ADDRESS": "127.0.0.1",  # the pod's 0.0.0.0: loopback here
        }
        argv = [*MLEXEC, *args]
        argv += ["--until-end"] if until_end else []
        argv += [] if recovery else ["--no-recovery"]
        procs.append(
            subprocess.Popen(
                argv,
                env=dict(os.environ, **env),
                cwd=path.parent,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    return procs


def _finish(procs: list[Any], timeout: float = 240.0) -> None:
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err.decode()[-3000:]


def _predictions(conf: dict[str, Any], topic: str) -> list[tuple[tuple[int, int], float]]:
    """((partition, offset) of the record, output) of every prediction."""
    out = []
    for _, value, _, _, _ in read_topic(conf, topic):
        p = orjson.loads(value)
        _, partition, offset = p["id"].rsplit(":", 2)
        out.append(((int(partition), int(offset)), p["outputs"]["y"]))
    return out


def _produced_by_part(conf: dict[str, Any], usecase: str) -> dict[str, dict[str, float]]:
    """part → its last runtime health for ``usecase``: what each process read and produced."""
    out: dict[str, dict[str, float]] = {}
    for _, value, _, _, _ in read_topic(conf, "mlexec.metrics"):
        snapshot = orjson.loads(value)
        for row in snapshot["rows"]:
            if row["usecase"] == usecase:
                got = out.setdefault(snapshot["part"], {})
                got[row["name"]] = max(got.get(row["name"], 0.0), row["value"])
    return out


def test_the_cluster_is_found_as_bytewax_finds_it():
    assert cluster_from(None, None, {}) is None
    assert cluster_from(1, "a:1;b:2", {}) == Cluster(1, ("a:1", "b:2"))
    env = {"BYTEWAX_POD_NAME": "pipe-2", "BYTEWAX_STATEFULSET_NAME": "pipe"}
    assert cluster_from(None, "a:1;b:2;c:3", env) == Cluster(2, ("a:1", "b:2", "c:3"))
    assert cluster_from(None, None, {"BYTEWAX_PROCESS_ID": "0", "BYTEWAX_ADDRESSES": "a:1"}) == (
        Cluster(0, ("a:1",))
    )
    with pytest.raises(TopologyError, match="needs --addresses"):
        cluster_from(0, None, {})
    with pytest.raises(TopologyError, match="a cluster of 2 processes"):
        cluster_from(2, "a:1;b:2", {})
    with pytest.raises(TopologyError, match="host:port per process"):
        cluster_from(0, "a:1;nonsense", {})
    with pytest.raises(TopologyError, match="is not <BYTEWAX_STATEFULSET_NAME>-<ordinal>"):
        cluster_from(None, "a:1", {"BYTEWAX_POD_NAME": "x-y", "BYTEWAX_STATEFULSET_NAME": "p"})
    with pytest.raises(TopologyError, match="BYTEWAX_HOSTFILE_PATH /nowhere: cannot be read"):
        cluster_from(0, None, {"BYTEWAX_HOSTFILE_PATH": "/nowhere"})


@pytest.mark.integration
def test_one_two_and_three_processes_make_the_same_predictions_and_samples(broker, tmp_path, uid):
    results = {}
    for processes in (1, 2, 3):
        folder = tmp_path / f"p{processes}"
        folder.mkdir()
        path = _topology(folder, broker.bootstrap, f"{uid}p{processes}")
        topology, plan, uc, conf, _values, positions, good, bad = feed(path, 3000, bad_every=61)
        _finish(_start(path, processes, recovery=False))
        subprocess.run([*MLEXEC, "run", str(path), "--part", "store", "--until-end"], check=True)
        from mlexec.connectors.samplestore import open_store

        with open_store(topology.sites["here"].sample_store) as store:
            rows = store.query(f"SELECT record_id, y FROM mlexec.{uc.table} FINAL")
        samples = {
            tuple(int(x) for x in rid.rsplit(":", 2)[1:]): y
            for rid, y in zip(rows["record_id"], rows["y"], strict=True)
        }
        predicted = _predictions(conf, uc.predictions_topic)
        assert len(predicted) == len(dict(predicted)) == len(good)  # one each, no duplicate
        assert {positions[i] for i in good} == set(dict(predicted))
        assert len(read_topic(conf, uc.deadletter_topic)) == len(bad)
        # every process produced what it read itself: no prediction crossed processes
        health = _produced_by_part(conf, uc.name)
        parts = ["pipeline"] + [f"pipeline.{i}" for i in range(1, processes)]
        assert sorted(p for p in health if p.startswith("pipeline")) == sorted(parts)
        for part in parts:
            done = health[part]
            assert done["records_in"] > 0, (part, done)
            assert done.get("predictions", 0) + done.get("deadletters", 0) == done["records_in"]
            assert done.get("samples", 0) == done.get("predictions", 0)  # rate 1.0
        assert sum(health[p]["records_in"] for p in parts) == len(good) + len(bad)
        results[processes] = (dict(predicted), samples)
    one, two, three = results[1], results[2], results[3]
    assert one[0] == two[0] == three[0]  # by record and value
    assert one[1] == two[1] == three[1] and len(one[1]) == len(one[0])


@pytest.mark.integration
def test_a_cluster_killed_mid_stream_resumes_with_three_processes_then_one(broker, tmp_path, uid):
    path = _topology(tmp_path, broker.bootstrap, uid)
    topology, plan, uc, conf, _v, positions, good, bad = feed(path, 6000, bad_every=47)
    metrics = _ports(2)
    procs = _start(path, 2, recovery=True, until_end=False, metrics=metrics)
    wait_for(
        lambda: len(read_topic(conf, uc.predictions_topic)) >= 1500,
        timeout=180,
        what="the 2-process cluster's first predictions",
    )
    for i in range(2):  # each pod's liveness and readiness probe: its own metrics endpoint
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics + i}/metrics", timeout=10) as r:
            assert r.status == 200 and b"mlexec_records_in" in r.read()
    for p in procs:  # kill -9, mid-stream
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    _finish(_start(path, 3, recovery=True))  # resumes from recovery with 3 processes
    *_, positions2, good2, bad2 = feed(path, 2000, bad_every=47, seed=2, start=6000)
    _finish(_start(path, 1, recovery=True))  # ... and with one, for what came since

    predicted = _predictions(conf, uc.predictions_topic)
    by_record: dict[tuple[int, int], set[float]] = {}
    for position, y in predicted:
        by_record.setdefault(position, set()).add(y)
    expected = {positions[i] for i in good} | {positions2[i] for i in good2}
    assert set(by_record) == expected  # every good record predicted, nothing else
    assert all(len(ys) == 1 for ys in by_record.values())  # a replayed one: the same value
    dead = read_topic(conf, uc.deadletter_topic)
    dead_at = {
        (int(dict(h)["mlexec.partition"]), int(dict(h)["mlexec.offset"])) for _, _, h, _, _ in dead
    }
    assert dead_at == {positions[i] for i in bad} | {positions2[i] for i in bad2}


def test_on_kubernetes_the_peers_are_the_services_pods_and_a_scale_restarts_the_process():
    env = {
        "BYTEWAX_POD_NAME": "site-pipeline-1",
        "BYTEWAX_STATEFULSET_NAME": "site-pipeline",
        "MLEXEC_PEERS": "site-pipeline:2101",
    }
    pods = {"n": 2}
    cluster = cluster_from(None, None, env, resolve=lambda host: pods["n"])
    assert cluster == Cluster(
        1, ("site-pipeline-0.site-pipeline:2101", "site-pipeline-1.site-pipeline:2101"),
        "site-pipeline:2101",
    )  # fmt: skip
    # a pod not resolvable yet (DNS lags a new pod) still counts itself
    assert cluster_from(None, None, env, resolve=lambda host: 0).processes == 2  # type: ignore[union-attr]
    with pytest.raises(TopologyError, match="MLEXEC_PEERS: the StatefulSet's headless Service"):
        cluster_from(None, None, {**env, "MLEXEC_PEERS": "no-port"}, resolve=lambda h: 1)

    stopped = []
    watch = PeerWatch(cluster, resolve=lambda host: pods["n"], stop=lambda: stopped.append(1))
    assert watch.check(0) == 0 and not stopped  # as many pods as processes
    pods["n"] = 0
    assert watch.check(0) == 0  # DNS answering nothing is not a scale
    pods["n"] = 3  # scaled out: once may be a pod coming and going ...
    assert watch.check(0) == 1 and not stopped
    assert watch.check(1) == 2 and stopped == [1]  # ... twice in a row is a rescale
