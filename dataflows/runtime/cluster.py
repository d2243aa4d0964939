"""A site's pipeline as a bytewax cluster: which process this is, and where its peers are.

The same conventions as ``python -m bytewax.run`` and bytewax's own Kubernetes tooling,
so a StatefulSet starts ``mlexec run --part pipeline`` exactly as it starts bytewax:

- ``--process-id`` / ``BYTEWAX_PROCESS_ID``, or the pod's ordinal: ``BYTEWAX_POD_NAME``
  (``pipeline-2``) less ``BYTEWAX_STATEFULSET_NAME`` (``pipeline``) and a dash;
- ``--addresses "h0:p;h1:p"`` / ``BYTEWAX_ADDRESSES``, or ``BYTEWAX_HOSTFILE_PATH``, a
  file of one ``host:port`` per line, in process order;
- or, on Kubernetes (what ``mlexec render k8s`` sets up), ``MLEXEC_PEERS``, the
  StatefulSet's headless Service as ``service:port``: the processes are its pods,
  ``<statefulset>-<i>.<service>:<port>`` for as many as the Service resolves to. A
  process then watches that count (:class:`PeerWatch`) and stops itself when the
  StatefulSet is scaled, to be restarted into the new cluster — a rescale from
  recovery.

Every process runs the same dataflow; each reads the Kafka partitions bytewax gives its
workers, and all of them share the site's recovery directory (on Kubernetes a volume
every pod mounts), so a cluster resumes from recovery with another process count.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from mlexec.errors import TopologyError

__all__ = ["Cluster", "PeerWatch", "cluster_from", "resolved_peers", "run_beside"]

_log = logging.getLogger(__name__)

#: service host → how many pods it resolves to.
Resolver = Callable[[str], int]


def resolved_peers(host: str) -> int:
    """How many addresses a (headless) Service's name resolves to: its pods."""
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return 0
    return len({info[4][0] for info in found})


@dataclass(frozen=True)
class Cluster:
    """One process's place in a cluster of ``len(addresses)`` processes."""

    process_id: int
    addresses: tuple[str, ...]
    #: The Service whose pods are the processes (``MLEXEC_PEERS``), when found by it.
    peers: str | None = None

    @property
    def processes(self) -> int:
        return len(self.addresses)


def _ordinal(env: Mapping[str, str]) -> int | None:
    pod, statefulset = env.get("BYTEWAX_POD_NAME"), env.get("BYTEWAX_STATEFULSET_NAME")
    if not pod or not statefulset:
        return None
    ordinal = pod.removeprefix(statefulset + "-")
    if ordinal == pod or not ordinal.isdigit():
        msg = (
            f"BYTEWAX_POD_NAME {pod!r} is not <BYTEWAX_STATEFULSET_NAME>-<ordinal> "
            f"(BYTEWAX_STATEFULSET_NAME is {statefulset!r})"
        )
        raise TopologyError(msg)
    return int(ordinal)


def _hostfile(path: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        msg = f"BYTEWAX_HOSTFILE_PATH {path}: cannot be read ({exc.strerror})"
        raise TopologyError(msg) from exc
    return [line.strip() for line in lines if line.strip()]


def _from_peers(process_id: int, peers: str, env: Mapping[str, str], resolve: Resolver) -> Cluster:
    host, _, port = peers.rpartition(":")
    statefulset = env.get("BYTEWAX_STATEFULSET_NAME", "")
    if not host or not port.isdigit() or not statefulset:
        msg = (
            f"MLEXEC_PEERS: the StatefulSet's headless Service as service:port, with "
            f"BYTEWAX_STATEFULSET_NAME set; found {peers!r}"
        )
        raise TopologyError(msg)
    count = max(resolve(host), process_id + 1)  # a pod not yet resolvable counts itself
    addresses = tuple(f"{statefulset}-{i}.{host}:{port}" for i in range(count))
    return Cluster(process_id, addresses, peers)


def cluster_from(
    process_id: int | None,
    addresses: str | None,
    env: Mapping[str, str] | None = None,
    resolve: Resolver = resolved_peers,
) -> Cluster | None:
    """The cluster the flags (else the environment) describe; ``None``: one process."""
    env = os.environ if env is None else env
    if process_id is None and env.get("BYTEWAX_PROCESS_ID"):
        text = env["BYTEWAX_PROCESS_ID"]
        if not text.isdigit():
            msg = f"BYTEWAX_PROCESS_ID: a process number (0, 1, …), found {text!r}"
            raise TopologyError(msg)
        process_id = int(text)
    if process_id is None:
        process_id = _ordinal(env)
    if addresses is None and env.get("BYTEWAX_ADDRESSES"):
        addresses = env["BYTEWAX_ADDRESSES"]
    listed = [a.strip() for a in addresses.split(";") if a.strip()] if addresses else None
    if listed is None and env.get("BYTEWAX_HOSTFILE_PATH") and process_id is not None:
        listed = _hostfile(env["BYTEWAX_HOSTFILE_PATH"])
    if listed is None and env.get("MLEXEC_PEERS") and process_id is not None:
        return _from_peers(process_id, env["MLEXEC_PEERS"], env, resolve)
    if process_id is None and listed is None:
        return None
    if process_id is None or not listed:
        missing = (
            "--process-id (or BYTEWAX_PROCESS_ID, or a pod ordinal)"
            if process_id is None
            else ("--addresses (or BYTEWAX_ADDRESSES, or BYTEWAX_HOSTFILE_PATH)")
        )
        msg = f"a pipeline cluster needs {missing}"
        raise TopologyError(msg)
    for address in listed:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            msg = f"--addresses: host:port per process, separated by ';', found {address!r}"
            raise TopologyError(msg)
    if not 0 <= process_id < len(listed):
        msg = (
            f"--process-id {process_id}: a cluster of {len(listed)} processes "
            f"({';'.join(listed)}) numbers them 0…{len(listed) - 1}"
        )
        raise TopologyError(msg)
    return Cluster(process_id, tuple(listed))


class PeerWatch:
    """Stop this process when its Service's pod count leaves the cluster's size.

    Checked every ``every`` seconds; two checks in a row that disagree with the cluster
    (a StatefulSet scaled, not a pod restarting) call ``stop`` — by default SIGTERM to
    this process, which stops at once and resumes, restarted, from the last snapshot.
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        every: float = 30.0,
        resolve: Resolver = resolved_peers,
        stop: Callable[[], None] | None = None,
    ) -> None:
        assert cluster.peers is not None
        self._cluster, self._every, self._resolve = cluster, every, resolve
        self._stop = stop or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlexec-peers", daemon=True)

    def check(self, disagreed: int) -> int:
        """One check; how many in a row have disagreed (the stop is called at two)."""
        host = (self._cluster.peers or "").rpartition(":")[0]
        found = self._resolve(host)
        if found in (0, self._cluster.processes):  # nothing resolvable: not news
            return 0
        if disagreed + 1 >= 2:
            _log.warning(
                "the pipeline's StatefulSet has %d pods, this cluster %d processes: "
                "stopping to rejoin it as %d (a rescale from recovery)",
                found,
                self._cluster.processes,
                found,
            )
            self._stop()
        return disagreed + 1

    def start(self) -> PeerWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()

    def _run(self) -> None:
        disagreed = 0
        while not self._done.wait(self._every):
            disagreed = self.check(disagreed)


#: What timely (bytewax's engine) names its worker threads, as ``/proc`` shows them.
_WORKER_THREAD = "timely:work"

#: How late the kernel may wake bytewax's waiting thread from its 1 ms sleeps (100 ms):
#: it only looks for signals (the caller's thread handles them) and for the run's end.
WAIT_SLACK_NS = 100_000_000


def run_beside(run: Callable[[], None], *, poll: float = 0.02) -> None:
    """Run a bytewax execution of several workers (or a cluster) on a thread of its own.

    bytewax waits for its worker threads on the thread that started them, waking every
    millisecond to take the GIL and look for signals: a thousand times a second it takes
    the GIL from the workers. Measured here, a 1-process run with such a thread beside
    its worker spent 4–49 % more CPU per record (six pairs of runs). (A cluster of one
    process spent ~20 % more than the same process run alone; most of that was not this
    loop but the workers' thread states made and deleted at every activation, which
    :func:`mlexec.runtime.threadstates.holding_thread_states` ends.) So the wait runs
    on a thread of its own, set to ``SCHED_IDLE`` once the workers started (a thread
    inherits the policy of the thread that starts it, so not before): on
    saturated cores it gets the CPU, and so the GIL, only when nothing else wants it.
    On a core left free it would still wake every millisecond — the loop is bytewax's, in
    Rust — so the thread also gets a timer slack of :data:`WAIT_SLACK_NS`: the kernel may
    then fold its 1 ms sleeps into the next timer interrupt of its core (every 4 ms on a
    busy core at HZ=250) or into fewer wakes on a free one: in an idle 2-worker run here it
    ran ~90 times a second instead of ~880. It did not make a cluster's CPU per record
    reliably that of one process (``benchmarks/e2e.py --only scale``: 0.86 × in one run,
    1.20 × in the next); the slack only delays bytewax noticing its workers ended. Setting
    another thread's slack needs ``CAP_SYS_NICE``; without it the run goes on with the
    idle policy alone. The thread ends with the run, so nothing started later inherits
    the policy (an unprivileged thread cannot take it back).

    Signals stay the calling thread's to handle: mlexec stops a dataflow at once in its
    handler (:func:`mlexec.runtime.part.exit_on`), safe because input offsets are only
    committed in snapshots taken after the sinks flushed — also while a process still
    waits for its peers to connect, before bytewax's own loop (the only place it looked
    for signals) starts. An interrupt with no handler (``KeyboardInterrupt``) cannot
    reach bytewax's workers from here, so it stops the process at once as well; the
    next run resumes from the last snapshot.
    """
    failed: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            failed.append(exc)

    runner = threading.Thread(target=target, name="mlexec-bytewax-wait", daemon=True)
    runner.start()  # returns once the thread runs: its native_id is known
    try:
        _idle_once_started(runner, cast(int, runner.native_id), poll)
        while runner.is_alive():
            runner.join(0.25)
    except KeyboardInterrupt:
        print(
            "interrupted: stopping at once; the next run resumes from the last snapshot",
            file=sys.stderr,
            flush=True,
        )
        os._exit(130)
    if failed:
        raise failed[0]


def _idle_once_started(runner: threading.Thread, tid: int, poll: float) -> None:
    """Make thread ``tid`` idle and slack once bytewax's workers run (Linux only)."""
    tasks = Path("/proc/self/task")
    if not hasattr(os, "SCHED_IDLE") or not tasks.is_dir():
        return
    while runner.is_alive():
        if any(_thread_name(t).startswith(_WORKER_THREAD) for t in tasks.iterdir()):
            try:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            except OSError as exc:  # a sandbox may refuse it: the run goes on as before
                _log.debug("could not make bytewax's waiting thread idle: %s", exc)
            try:  # /proc/<tid>: the per-thread file sits there, not under task/
                Path(f"/proc/{tid}/timerslack_ns").write_text(str(WAIT_SLACK_NS))
            except OSError as exc:  # needs CAP_SYS_NICE, and Linux ≥ 4.6
                _log.debug("could not give bytewax's waiting thread a timer slack: %s", exc)
            return
        time.sleep(poll)  # the workers start once every peer of a cluster connected


def _thread_name(task: Path) -> str:
    try:
        return (task / "comm").read_text()
    except OSError:  # the thread ended meanwhile
        return ""
