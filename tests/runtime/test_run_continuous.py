"""`mlexec run` continuously: pipeline and store side by side, stopped by SIGTERM, resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import orjson
import pytest

from mlexec.connectors.reading import read_topic
from mlexec.connectors.samplestore import open_store
from mlexec.runtime.lag import pipeline_lag, store_backlog
from tests.dataflows.spine import feed, spine_topology
from tests.waiting import wait_for

MLEXEC = [sys.executable, "-m", "mlexec.cli"]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.integration
def test_continuous_run_stops_on_sigterm_and_the_next_run_resumes_without_loss(
    broker, tmp_path, uid
):
    path = spine_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        dispatch="{kind: microbatch, max_records: 64, max_wait: 20ms}",
        reduction="{kind: identity}",
        sampling="{rate: 0.25}",
    )
    topology, plan, uc, conf, *_ = feed(path, n=600, bad_every=0)
    proc = subprocess.Popen(
        [*MLEXEC, "run", str(path), "--site", "here"], stderr=subprocess.PIPE, text=True
    )
    try:

        def predictions() -> set[str]:
            return {
                orjson.loads(v)["id"] for _, v, _, _, _ in read_topic(conf, uc.predictions_topic)
            }

        wait_for(lambda: len(predictions()) == 600, 90, "the running pipeline to score 600")
        store_pids = _children(proc.pid)
        assert store_pids, "the store runs as a process of its own"
        feed(path, n=400, bad_every=0, start=600)  # more data while it runs
        wait_for(lambda: len(predictions()) == 1000, 90, "the running pipeline to score 1000")

        def snapshotted() -> bool:  # both dataflows' recovery state has everything processed
            lag, backlog = pipeline_lag(plan, "here"), store_backlog(plan, "here")
            return lag is not None and lag == (0, 1000) and backlog is not None and backlog[0] == 0

        wait_for(snapshotted, 60, "both dataflows to snapshot what they processed")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 128 + signal.SIGTERM, proc.stderr.read()
    assert all(not os.path.exists(f"/proc/{p}") for p in store_pids), (
        "SIGTERM must stop the store too"
    )

    done = subprocess.run(
        [*MLEXEC, "run", str(path), "--site", "here", "--until-end"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    sent = read_topic(conf, uc.predictions_topic)
    ids = [orjson.loads(v)["id"] for _, v, _, _, _ in sent]
    assert len(set(ids)) == 1000  # nothing lost
    assert len(ids) < 2 * 1000  # resumed from the snapshot, not from the beginning
    sampled = {orjson.loads(v)["record_id"] for _, v, _, _, _ in read_topic(conf, uc.samples_topic)}
    with open_store(topology.sites["here"].sample_store) as store:
        stored = store.query(f"SELECT record_id FROM mlexec.{uc.table} FINAL")[
            "record_id"
        ].to_list()
    assert len(stored) == len(set(stored)) == len(sampled)
    assert set(stored) == sampled
    assert 0.15 * 1000 < len(stored) < 0.35 * 1000
