"""The supervisor's own bookkeeping never stops a site: a full disk, a broken recovery file."""

from __future__ import annotations

import errno
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from mlexec.runtime.lag import pipeline_lag
from tests.dataflows.spine import feed
from tests.runtime.test_supervisor import _Running, _topology
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _fill(folder: Path) -> Path:
    """Write a file into ``folder`` until its file system is full."""
    filler = folder / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_up_survives_a_full_state_dir_and_resumes_when_space_returns(broker, tmp_path, uid):
    state = tmp_path / "state"
    state.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(state)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        path = _topology(tmp_path, broker, uid)
        feed(path, n=1_000, bad_every=0)
        with _Running(path) as up:
            wait_for(lambda: up.caught_up(1_000), 90, "the first records processed")
            filler = _fill(state)
            feed(path, n=1_000, bad_every=0, start=1_000)
            wait_for(
                lambda: "full" in up.sup.problems.get("status file", ""), 30, "a full disk reported"
            )
            assert up.thread.is_alive()  # the supervisor goes on
            filler.unlink()  # space returns
            wait_for(lambda: up.caught_up(2_000), 120, "the site to resume by itself")
            wait_for(lambda: "status file" not in up.sup.problems, 30, "the status written again")
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_a_recovery_file_without_tables_stops_neither_lag_reading_nor_up(broker, tmp_path, uid):
    scale = {"max_workers": 2, "out_above": 1_000_000, "in_below": 0, "every": "0.2s"}
    path = _topology(tmp_path, broker, uid, pipeline={"workers": 1, "scale": scale})
    topology, plan, *_ = feed(path, n=500, bad_every=0)
    flow = tmp_path / "state" / "recovery" / f"{topology.name}-here-pipeline"
    flow.mkdir(parents=True)
    sqlite3.connect(flow / "part-0.sqlite3").close()  # a file bytewax has not set up yet
    assert pipeline_lag(plan, "here") is None  # not an error: nothing to read yet
    with _Running(path) as up:
        wait_for(lambda: up.sup.parts["pipeline"].restarts >= 2, 60, "the pipeline failing")
        assert up.thread.is_alive()
        shutil.rmtree(flow)  # the operator's fix (what `mlexec reset` does)
        wait_for(lambda: up.caught_up(500), 120, "the pipeline to start and catch up")


def test_status_tells_a_stalled_pipeline_from_the_lag_history():
    from mlexec.runtime.lag import stalled

    moving = [{"at": float(t), "lag": 100, "processed": t * 10} for t in range(0, 60, 5)]
    assert stalled(moving) is None
    stuck = moving + [{"at": 60.0 + t, "lag": 400, "processed": 999} for t in range(0, 40, 5)]
    assert stalled(stuck) == (400, 35.0)
    idle = stuck + [{"at": 100.0, "lag": 0, "processed": 1399}]
    assert stalled(idle) is None  # caught up: nothing waits, nothing is stalled
