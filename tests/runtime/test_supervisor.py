"""`mlexec up`: crashes restarted with nothing lost, a store away for a while, scaling on lag."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
import yaml

from mlexec.connectors.reading import read_topic
from mlexec.connectors.samplestore import open_store
from mlexec.runtime.lag import pipeline_lag, store_backlog
from mlexec.runtime.supervisor import Supervisor, read_status
from mlexec.topologies import load_topology, plan_topology
from tests.dataflows.spine import FIELDS, feed, spine_topology
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _topology(tmp_path: Path, broker: Any, uid: str, batch: int = 256, **site: Any) -> Path:
    path = spine_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        dispatch=f"{{kind: microbatch, max_records: {batch}, max_wait: 20ms}}",
        reduction="{kind: identity}",
        sampling="{rate: 0.05}",
    )
    if site:
        doc = yaml.safe_load(path.read_text())
        doc["sites"]["here"].update(site)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class _Running:
    """A supervisor in a thread, stopped (and its processes with it) on exit."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        self.plan = plan_topology(load_topology(path))
        self.sup = Supervisor(self.plan, "here", path, backoff=(0.2, 1.0), **kwargs)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sup.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> _Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(90)
        assert not self.thread.is_alive()

    def pid(self, part: str) -> int | None:
        return self.sup.parts[part].pid

    def caught_up(self, total: int) -> bool:
        lag = pipeline_lag(self.plan, "here")
        return lag is not None and lag[0] == 0 and lag[1] >= total


def _prediction_ids(conf: dict[str, Any], topic: str) -> set[str]:
    return {orjson.loads(v)["id"] for _, v, _, _, _ in read_topic(conf, topic, timeout=60)}


def _sample_ids(conf: dict[str, Any], topic: str) -> set[str]:
    return {orjson.loads(v)["record_id"] for _, v, _, _, _ in read_topic(conf, topic, timeout=60)}


def test_kill_9_of_the_pipeline_at_five_points_loses_nothing_and_doubles_no_sample(
    broker, tmp_path, uid
):
    path = _topology(tmp_path, broker, uid)
    n = 200_000
    topology, plan, uc, conf, values, positions, good, bad = feed(path, n=n, bad_every=0)
    expected = {f"{uc.raw_topic}:{p}:{o}" for p, o in positions}
    kills = 0
    rng = random.Random(uid)  # five random points, different in every run (uid is random)
    points = sorted(rng.uniform(0.05, 0.85) for _ in range(5))
    with _Running(path) as up:
        for share in points:
            wait_for(
                lambda s=share: (pipeline_lag(up.plan, "here") or (1, 0))[1] >= s * n,
                120,
                f"{share:.0%} processed",
            )
            pid = up.pid("pipeline")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            kills += 1
            wait_for(lambda old=pid: up.pid("pipeline") not in (None, old), 30, "a restart")
        wait_for(lambda: up.caught_up(n), 180, "the pipeline to catch up")
        samples_written = _sample_ids(conf, uc.samples_topic)

        def stored() -> bool:
            # the store process owns chDB: ask it through its status, not its directory
            return read_status(up.plan, "here") is not None

        wait_for(stored, 10, "a status")
        # the store's recovery state holds every sample: they were written before its snapshot
        wait_for(
            lambda: (store_backlog(up.plan, "here") or (1, 0))[0] == 0,
            60,
            "the store to have stored every sample",
        )
        restarts = up.sup.parts["pipeline"].restarts
    assert kills == 5 and restarts >= 5, points
    predicted = _prediction_ids(conf, uc.predictions_topic)
    assert predicted == expected  # 0 input records without a prediction
    with open_store(topology.sites["here"].sample_store) as store:
        row = store.query(
            f"SELECT count() AS n, uniqExact(record_id) AS ids FROM mlexec.{uc.table} FINAL"
        )
    assert int(row["n"][0]) == int(row["ids"][0]) == len(samples_written)  # 0 duplicates, none lost


def test_a_store_away_for_a_while_loses_no_sample(broker, tmp_path, uid):
    path = _topology(tmp_path, broker, uid)
    topology, plan, uc, conf, *_ = feed(path, n=20_000, bad_every=0)
    url = topology.sites["here"].sample_store
    # another process holds the chDB directory: the store cannot open it
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom mlexec.connectors.samplestore import open_store\n"
            f"with open_store({url!r}):\n    print('held', flush=True)\n    sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with _Running(path) as up:
        wait_for(lambda: up.caught_up(20_000), 120, "the pipeline to catch up")
        wait_for(lambda: up.sup.parts["store"].restarts >= 1, 30, "the store to fail and restart")
        assert holder.stdin is not None
        holder.stdin.write("release\n")  # the holder lets go: the store comes back
        holder.stdin.flush()
        holder.wait(30)
        wait_for(lambda: up.sup.parts["store"].state == "running", 30, "the store running again")
        wait_for(
            lambda: (store_backlog(up.plan, "here") or (1, 0))[0] == 0,
            60,
            "the samples that waited in Kafka to be stored",
        )
    written = _sample_ids(conf, uc.samples_topic)
    with open_store(url) as store:
        row = store.query(f"SELECT uniqExact(record_id) AS ids FROM mlexec.{uc.table} FINAL")
    assert int(row["ids"][0]) == len(written) > 500


def test_the_pipeline_scales_out_under_lag_and_back_in(broker, tmp_path, uid):
    scale = {
        "max_workers": 2,
        "out_above": 20_000,
        "in_below": 10,
        "sustain": "0.5s",
        "every": "0.5s",
    }
    # one-record dispatches make the pipeline slow enough to fall behind for a while
    path = _topology(tmp_path, broker, uid, batch=1, pipeline={"workers": 1, "scale": scale})
    n = 150_000
    topology, plan, uc, conf, values, positions, good, bad = feed(path, n=n, bad_every=0)
    with _Running(path) as up:
        wait_for(lambda: up.sup.parts["pipeline"].workers == 2, 120, "a second worker")
        wait_for(
            lambda: up.sup.parts["pipeline"].workers == 1 and up.caught_up(n), 180, "back to one"
        )
    workers = [h["workers"] for h in up.sup.history]
    assert 2 in workers and workers[-1] in (1, 2)
    predictions = {}
    for _, v, _, _, _ in read_topic(conf, uc.predictions_topic, timeout=60):
        p = orjson.loads(v)
        predictions[p["id"]] = p["outputs"]["y"]
    ids = [f"{uc.raw_topic}:{positions[i][0]}:{positions[i][1]}" for i in good]
    assert set(predictions) == set(ids)  # no record lost across two restarts
    x = np.array([[good[i][f] for f in FIELDS] for i in good], dtype=np.float32)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    np.testing.assert_allclose([predictions[r] for r in ids], y[:, 0], rtol=1e-5, atol=1e-6)


def test_up_and_status_from_the_command_line_and_sigterm_stops_everything(broker, tmp_path, uid):
    path = _topology(tmp_path, broker, uid)
    feed(path, n=2_000, bad_every=0)
    cli = [sys.executable, "-m", "mlexec.cli"]
    proc = subprocess.Popen(
        [*cli, "up", str(path), "--site", "here"], stderr=subprocess.PIPE, text=True
    )
    plan = plan_topology(load_topology(path))
    try:
        wait_for(
            lambda: (pipeline_lag(plan, "here") or (1, 0))[1] >= 2_000, 60, "the records processed"
        )
        shown = subprocess.run(
            [*cli, "status", str(path), "--site", "here"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert shown.returncode == 0, shown.stderr
        for words in ("pipeline", "store", "running", "0 records behind", "2,000 processed"):
            assert words in shown.stdout, (words, shown.stdout)
        as_json = subprocess.run(
            [*cli, "status", str(path), "--json"],  # one site: --site may be left out
            capture_output=True,
            text=True,
            timeout=60,
        )
        doc = json.loads(as_json.stdout)
        assert {p["name"] for p in doc["parts"]} >= {"pipeline", "store"}
        assert doc["site"] == "here" and doc["lag"][0] == 0 and doc["lag"][1] >= 2_000
        status = read_status(plan, "here")
        assert status is not None
        children = [p["pid"] for p in status["parts"] if p["pid"]]
        assert len(children) == 2

        # the topology edited while it runs: the pipeline restarts on it, the store stays
        def pids() -> dict[str, int | None]:
            found = read_status(plan, "here") or {"parts": []}
            return {p["name"]: p["pid"] for p in found["parts"] if p["state"] == "running"}

        before = pids()
        doc = yaml.safe_load(path.read_text())
        (usecase,) = doc["usecases"].values()
        usecase["sampling"] = {"rate": 1.0}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        wait_for(
            lambda: pids().get("pipeline") not in (None, before["pipeline"]), 60, "a new pipeline"
        )
        assert pids()["store"] == before["store"]
        feed(path, n=500, bad_every=0, start=2_000)
        wait_for(lambda: (pipeline_lag(plan, "here") or (1, 0))[1] >= 2_500, 60, "the new ones")
        # a broken edit is refused: the site serves on, and status says why
        running = pids()
        usecase["model"]["path"] = str(tmp_path / "no-such-model.onnx")
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        refused = wait_for(
            lambda: (read_status(plan, "here") or {}).get("problems", {}).get("topology"),
            60,
            "the edit refused",
        )
        assert "no-such-model.onnx" in refused and "the last good version serves" in refused
        assert pids() == running
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0
    for pid in children:  # every supervised process is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
