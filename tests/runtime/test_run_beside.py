"""A run of several bytewax workers (or a cluster): its waiting thread, its errors, its stops.

bytewax waits for its workers on the thread that started them, taking the GIL every
millisecond; mlexec runs that wait on a thread of its own set to ``SCHED_IDLE``, with a
long timer slack, once the workers started (``mlexec.runtime.cluster.run_beside``). These tests look at the real
threads of a real run through ``/proc``, and stop real processes with real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource

from mlexec.connectors.broker import free_port
from mlexec.runtime.cluster import WAIT_SLACK_NS
from mlexec.runtime.run import execute
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's: elsewhere the wait runs as before"
)

ROOT = Path(__file__).resolve().parents[2]


def _policies() -> dict[int, tuple[str, int]]:
    """Every thread of this process: its name and scheduling policy."""
    found = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            found[int(task.name)] = (name, os.sched_getscheduler(int(task.name)))
        except OSError:  # the thread ended meanwhile
            continue
    return found


def _idle(policies: dict[int, tuple[str, int]]) -> list[tuple[int, str]]:
    return [(tid, name) for tid, (name, policy) in policies.items() if policy == os.SCHED_IDLE]


def test_the_waiting_thread_is_idle_while_the_workers_run_and_nothing_is_left_idle_after():
    seen: list[dict[int, tuple[str, int]]] = []
    own: list[tuple[str, int]] = []

    def look(x: int) -> int:
        if x == 0:  # once, on whichever worker gets the first item, while the run is on
            own.append((threading.current_thread().name, os.sched_getscheduler(0)))
            seen.append(
                wait_for(
                    lambda: _policies() if _idle(_policies()) else None,
                    30,
                    "a SCHED_IDLE thread in the running cluster",
                )
            )
        return x

    flow = Dataflow("beside")
    out: list[int] = []
    items = op.map("look", op.input("in", flow, TestingSource(range(200))), look)
    op.output("out", items, TestingSink(out))
    execute(flow, workers=2)

    assert sorted(out) == list(range(200))
    (during,) = seen
    idle = _idle(during)
    assert len(idle) == 1, f"one idle thread, bytewax's wait: {idle}"
    assert not idle[0][1].startswith("timely:"), f"a worker or network thread went idle: {idle}"
    workers = [p for name, p in during.values() if name.startswith("timely:work")]
    assert len(workers) == 2 and set(workers) == {os.SCHED_OTHER}
    assert own[0][1] == os.SCHED_OTHER  # the step ran at normal priority
    # the waiting thread ends with the run (its OS thread a moment after Python's join):
    # nothing started later can inherit its policy
    wait_for(lambda: idle[0][0] not in _policies(), 30, "the waiting thread to end")
    assert not _idle(_policies())
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def _slack(tid: int) -> int | None:
    try:
        return int(Path(f"/proc/{tid}/timerslack_ns").read_text())
    except OSError:  # the thread ended meanwhile
        return None


def _may_set_others_slack() -> bool:
    """CAP_SYS_NICE (bit 23 of the effective set): what writing another thread's slack needs."""
    status = Path("/proc/self/status").read_text()
    eff = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    return bool(int(eff, 16) >> 23 & 1) and Path(f"/proc/{os.getpid()}/timerslack_ns").exists()


@pytest.mark.skipif(not _may_set_others_slack(), reason="needs CAP_SYS_NICE and Linux >= 4.6")
def test_the_waiting_thread_sleeps_with_a_long_timer_slack_and_the_workers_keep_theirs():
    before = _slack(threading.get_native_id())
    seen: list[dict[int, tuple[str, int | None]]] = []

    def slacked() -> dict[int, tuple[str, int | None]] | None:
        got = {tid: (name, _slack(tid)) for tid, (name, _) in _policies().items()}
        return got if any(s == WAIT_SLACK_NS for _, s in got.values()) else None

    def look(x: int) -> int:
        if x == 0:  # while the run is on: once the waiting thread got its slack
            seen.append(wait_for(slacked, 30, "a thread with the waiting thread's slack"))
        return x

    flow = Dataflow("slack")
    out: list[int] = []
    op.output(
        "out",
        op.map("look", op.input("in", flow, TestingSource(range(50))), look),
        TestingSink(out),
    )
    execute(flow, workers=2)

    assert sorted(out) == list(range(50))
    (during,) = seen
    slack = [name for name, s in during.values() if s == WAIT_SLACK_NS]
    assert len(slack) == 1 and not slack[0].startswith("timely:"), slack
    workers = [s for name, s in during.values() if name.startswith("timely:work")]
    assert workers == [before, before], f"the workers keep the process's slack: {workers}"
    assert _slack(threading.get_native_id()) == before


def test_an_error_in_a_step_of_a_multi_worker_run_is_raised_to_the_caller():
    def boom(x: int) -> int:
        if x == 7:
            raise ValueError("record 7 is the one")
        return x

    flow = Dataflow("beside_error")
    op.output(
        "out", op.map("boom", op.input("in", flow, TestingSource(range(20))), boom), TestingSink([])
    )
    with pytest.raises(Exception, match="boom") as got:  # bytewax names the step,
        execute(flow, workers=2)
    causes, exc = [], got.value  # and the step's own error is in the chain of causes
    while exc is not None:
        causes.append(exc)
        exc = exc.__cause__
    assert any(isinstance(c, ValueError) and "record 7" in str(c) for c in causes), causes
    wait_for(lambda: not _idle(_policies()), 30, "no thread left idle")


_PROCESS = textwrap.dedent(
    """
    import signal, sys, time
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import SimplePollingSource
    from mlexec.runtime.part import exit_on
    from mlexec.runtime.run import execute

    class Ticks(SimplePollingSource):
        def next_item(self):
            return time.time()

    mode, addresses, pid = sys.argv[1], sys.argv[2].split(";"), int(sys.argv[3])
    if mode == "handled":
        exit_on(signal.SIGINT, signal.SIGTERM)
    flow = Dataflow("stops")
    ticks = op.input("in", flow, Ticks(interval=__import__("datetime").timedelta(milliseconds=20)))
    op.inspect("ran", ticks, lambda _s, _x: print("running", flush=True))
    print("started", flush=True)
    execute(flow, process_id=pid, addresses=addresses)
    """
)


def _start(mode: str, addresses: list[str], process_id: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _PROCESS, mode, ";".join(addresses), str(process_id)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_line(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    got = proc.stdout.readline().strip()  # blocks until the process printed, or died
    assert got == line, (
        f"expected {line!r}, got {got!r}; stderr: {proc.stderr and proc.stderr.read()}"
    )


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_cluster_process_stops_on_a_signal_while_it_runs(sig, code):
    proc = _start("handled", [f"127.0.0.1:{free_port()}"])
    _first_line(proc, "started")
    _first_line(proc, "running")
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "stopping" in err


def _listening(port: int) -> bool:
    """Something listens on 127.0.0.1:``port`` (``/proc/net/tcp``: state 0A)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if local == f"0100007F:{port:04X}" and state == "0A":
            return True
    return False


def test_a_cluster_process_waiting_for_a_peer_that_never_comes_stops_on_sigterm():
    # process 0 of two listens for process 1, which never comes; bytewax's own wait loop
    # (which looks for signals) only starts once every peer connected
    first, second = free_port(), free_port()
    proc = _start("handled", [f"127.0.0.1:{first}", f"127.0.0.1:{second}"], process_id=0)
    try:
        _first_line(proc, "started")
        wait_for(lambda: _listening(first) or proc.poll() is not None, 60, "the peer's listener")
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
    finally:
        proc.kill()
        proc.communicate()


def test_an_interrupt_with_no_handler_stops_a_cluster_process_at_once():
    proc = _start("unhandled", [f"127.0.0.1:{free_port()}"])
    _first_line(proc, "started")
    _first_line(proc, "running")
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: stopping at once" in err
