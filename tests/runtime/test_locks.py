"""An operator's mistakes never break a site: a second start is refused and touches
nothing, a failed start leaves no process behind, recovery can be reset on purpose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from mlexec.connectors.reading import read_topic
from mlexec.runtime.locks import holder
from tests.dataflows.spine import feed, spine_topology
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

MLEXEC = [sys.executable, "-m", "mlexec.cli"]


def _site(tmp_path: Path, broker, uid: str) -> Path:  # type: ignore[no-untyped-def]
    return spine_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        dispatch="{kind: microbatch, max_records: 64, max_wait: 20ms}",
        reduction="{kind: identity}",
        sampling="{rate: 0.25}",
    )


def _mlexec(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MLEXEC, *args], capture_output=True, text=True, timeout=timeout)


def _processes_naming(text: str) -> list[int]:
    """Pids of live processes whose command line names ``text`` (not zombies)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _recovery_files(state: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in (state / "recovery").rglob("*")
        if p.is_file()
    }


def test_a_second_start_is_refused_in_one_line_and_the_site_starts_normally_after(
    broker, tmp_path, uid
):
    path = _site(tmp_path, broker, uid)
    topology, plan, uc, conf, *_ = feed(path, n=300, bad_every=0)
    state = tmp_path / "state"
    first = subprocess.Popen([*MLEXEC, "run", str(path), "--site", "here"], stderr=subprocess.PIPE)
    try:
        wait_for(
            lambda: holder(state, "pipeline") is not None and holder(state, "store") is not None,
            60,
            "the running site's locks",
        )

        def predicted() -> int:
            return len(read_topic(conf, uc.predictions_topic))

        wait_for(lambda: predicted() == 300, 90, "the first run's predictions")
        before = _recovery_files(state)
        for second in (["run", str(path), "--site", "here"], ["up", str(path), "--site", "here"]):
            done = _mlexec(*second)
            assert done.returncode == 1, done
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            assert len(lines) == 1, done.stderr
            assert f"pid {first.pid}" in lines[0] and "already running" in lines[0]
            assert "mlexec run" in lines[0] and "since" in lines[0]
        refused = _mlexec("reset", str(path), "--site", "here")
        assert refused.returncode == 1 and "reset refused while the site runs" in refused.stderr
        assert _recovery_files(state).keys() >= before.keys()  # nothing removed
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)
    assert holder(state, "pipeline") is None and holder(state, "store") is None

    feed(path, n=200, bad_every=0, start=300)
    done = _mlexec("run", str(path), "--site", "here", "--until-end")
    assert done.returncode == 0, done.stderr
    ids = {orjson.loads(v)["id"] for _, v, *_ in read_topic(conf, uc.predictions_topic)}
    assert len(ids) == 500  # the site resumed normally: nothing lost, no broken recovery

    reset = _mlexec("reset", str(path), "--site", "here")
    assert reset.returncode == 0, reset.stderr
    assert "removed the recovery state" in reset.stdout
    assert not (state / "recovery" / f"{topology.name}-here-pipeline").exists()
    again = _mlexec("run", str(path), "--site", "here", "--until-end")
    assert again.returncode == 0, again.stderr
    sent = [orjson.loads(v)["id"] for _, v, *_ in read_topic(conf, uc.predictions_topic)]
    assert len(set(sent)) == 500 and len(sent) == 1000  # read again from the beginning


def test_a_failed_start_and_a_killed_run_leave_no_process_behind(broker, tmp_path, uid):
    path = _site(tmp_path, broker, uid)
    topology, *_ = feed(path, n=50, bad_every=0)
    flow = tmp_path / "state" / "recovery" / f"{topology.name}-here-pipeline"
    flow.parent.mkdir(parents=True)
    flow.write_text("not a recovery directory")  # the pipeline fails as it starts
    done = _mlexec("run", str(path), "--site", "here")
    assert done.returncode != 0
    gone = lambda: not _processes_naming(str(path)) and holder(tmp_path / "state", "store") is None  # noqa: E731
    wait_for(gone, 30, "the store process to exit")
    flow.unlink()

    run = subprocess.Popen([*MLEXEC, "run", str(path), "--site", "here"])
    try:
        wait_for(lambda: holder(tmp_path / "state", "store") is not None, 60, "the store")
        store_pid = holder(tmp_path / "state", "store")["pid"]  # type: ignore[index]
        assert store_pid != run.pid
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.wait(30)
    wait_for(gone, 30, "the store to die with its parent")
