"""A :class:`Site` of a topology: its parts run, supervised and stopped, its status, its reset.

The Python API behind ``mlexec run``, ``up``, ``status`` and ``reset``::

    from mlexec import Site

    site = Site.load("topologies/demo.yaml", "edge")
    site.run_to_end()            # the pipelines, then the store, to the end of their input
    site.start()                 # supervise every part in the background ...
    print(site.status().parts)
    site.stop()                  # ... and stop them all
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlexec.errors import MlexecError, TopologyError
from mlexec.runtime.locks import SiteBusyError, SiteLock, describe, holder, stop_child
from mlexec.runtime.part import CHILD_DIED, STOPPING, PartSpec, run_part, spawn_part

if TYPE_CHECKING:
    import subprocess

    from bytewax.dataflow import Dataflow

    from mlexec.runtime.cluster import Cluster
    from mlexec.runtime.supervisor import Supervisor
    from mlexec.topologies.plan import Plan

__all__ = ["Site", "SiteStatus"]

#: The parts a supervisor runs; each holds its own lock while it runs.
_SUPERVISED = ("pipeline", "store", "connect", "act")
_LOW_DISK = 16 * 1024 * 1024


@dataclass
class SiteStatus:
    """What ``mlexec status`` shows: the supervised processes, lag and backlog, problems."""

    site: str
    #: Per process: name, pid, state, restarts, last_exit, workers (as ``mlexec up`` wrote).
    parts: list[dict[str, Any]]
    #: Seconds since the supervisor wrote the status.
    age: float
    #: Whether the supervisor is running now (else the states are its last).
    supervised: bool
    #: The supervisor's own problems, and the disk's.
    problems: dict[str, str] = field(default_factory=dict)
    #: (records behind, processed), "cannot be measured: …", or None before a snapshot.
    lag: tuple[int, int] | str | None = None
    #: (samples waiting in Kafka, read by the store), as ``lag``.
    backlog: tuple[int, int] | str | None = None
    #: Records per second over the last lag readings.
    rate: float | None = None
    #: (records waiting, seconds) when the pipeline processed nothing while records waited.
    stalled: tuple[int, float] | None = None


class Site:
    """One site of a planned topology."""

    def __init__(self, plan: Plan, name: str, topology: str | Path) -> None:
        plan.require_site(name)
        self.plan = plan
        self.name = name
        self.topology = str(topology)
        self.settings = plan.topology.sites[name]
        self.state_dir = Path(self.settings.state_dir)
        self._supervision: tuple[threading.Thread, threading.Event] | None = None
        self._up_lock: SiteLock | None = None

    @classmethod
    def load(cls, topology: str | Path, name: str) -> Site:
        """Load, validate and plan ``topology``; its site ``name``."""
        from mlexec.topologies import load_topology, plan_topology

        return cls(plan_topology(load_topology(Path(topology)), str(topology)), name, topology)

    @property
    def conf(self) -> dict[str, Any]:
        """The librdkafka settings of the site's broker."""
        from mlexec.connectors.kafka import client_config

        return client_config(self.settings.kafka)

    def prepare(self, usecase: str | None = None) -> None:
        """Create the site's topics and samples tables (idempotent; nothing runs)."""
        from mlexec.runtime.run import prepare_resources

        prepare_resources(self._prepared(usecase))

    def spec(self, part: str, **options: Any) -> PartSpec:
        """The :class:`PartSpec` of one of this site's parts."""
        return PartSpec(part, self.topology, self.name, **options)  # type: ignore[arg-type]

    # ------------------------------------------------------------ dataflows

    def dataflow(self, part: Literal["pipeline", "store"] = "pipeline", **options: Any) -> Dataflow:
        """The site's bytewax dataflow, registry watcher and health reporting wired in.

        See :func:`mlexec.runtime.run.site_dataflow`, which ``python -m bytewax.run``
        can call directly.
        """
        from mlexec.runtime.run import site_dataflow

        return site_dataflow(self.topology, self.name, part, **options)

    def run_to_end(
        self, *, usecase: str | None = None, workers: int = 1, recovery: bool = True
    ) -> None:
        """Run the pipelines, then the store, in this process until their input's end."""
        from mlexec.runtime.run import run_site

        prepared = self._prepared(usecase)
        for name in ("pipeline", "store"):  # before anything starts; a refusal touches nothing
            SiteLock(self.name, self.state_dir, name).acquire()
        run_site(prepared, workers=workers, recovery=recovery)

    def run(
        self,
        part: Literal["all", "pipeline", "store"] = "all",
        *,
        usecase: str | None = None,
        until_end: bool = False,
        workers: int = 1,
        recovery: bool = True,
        metrics_port: int | None = None,
        health_every: float = 10.0,
        monitor: bool = True,
        dashboard_port: int | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        """Run the dataflows in this process until a signal stops them.

        With a ``cluster`` (the pipeline only), this process is one of its processes.

        With ``until_end``, a single part runs until the end of its input.

        With ``all``: the pipeline here and the store as a process of its own (the one
        owner of an embedded chDB store), stopped with this run; when the store dies
        the run stops too, for a supervisor to restart both.
        """
        prepared = self._prepared(usecase)
        options: dict[str, Any] = {
            "usecase": usecase,
            "recovery": recovery,
            "health_every": health_every,
            "until_end": until_end,
        }
        store_only = part == "store" or (part == "all" and not prepared.process)
        if store_only:
            run_part(
                self.spec(
                    "store",
                    metrics_port=metrics_port,
                    monitor=monitor,
                    dashboard_port=dashboard_port,
                    **options,
                )
            )
            return
        if cluster is not None:
            if part != "pipeline":
                msg = "a cluster runs the pipeline: --part pipeline with --process-id/--addresses"
                raise TopologyError(msg)
            options["process_id"] = cluster.process_id
            options["addresses"] = list(cluster.addresses)
            options["peers"] = cluster.peers
        pipeline = self.spec("pipeline", workers=workers, metrics_port=metrics_port, **options)
        assert pipeline.lock is not None
        SiteLock(self.name, self.state_dir, pipeline.lock).acquire()
        child = None
        if part == "all" and prepared.store:
            store = self.spec(
                "store",
                metrics_port=metrics_port + 1 if metrics_port else None,
                monitor=monitor,
                dashboard_port=dashboard_port,
                **options,
            )
            child = spawn_part(store)
            _stop_when_it_dies(child, "the store process")
        try:
            run_part(pipeline, locked=True, child=child)
        finally:
            if child is not None and child.poll() is None:
                STOPPING.set()
                stop_child(child)

    def _prepared(self, usecase: str | None) -> Any:
        from mlexec.runtime.run import prepare_site

        prepared = prepare_site(self.plan, self.name, usecase, source=self.topology)
        if not prepared.process and not prepared.store:
            msg = (
                f"site {self.name!r} runs no dispatch, infer or store stage of "
                f"{usecase or 'any use case'}"
            )
            raise TopologyError(msg)
        return prepared

    # ------------------------------------------------------------ supervision

    def supervisor(self, *, dashboard_port: int | None = None, check: bool = True) -> Supervisor:
        """A supervisor of every part, after checking that no part of the site runs.

        Takes the site's ``up`` lock (released by :meth:`stop`, or with the process).
        With ``dashboard_port`` the store process serves the monitoring page there.
        ``check`` first loads what the parts will load (models, reductions) so that a
        bad one is refused before anything starts; ``mlexec up`` checks in the command
        and supervises from a small process that does not hold them.
        """
        from mlexec.runtime.supervisor import Supervisor

        if check:
            from mlexec.runtime.run import prepare_site

            prepare_site(self.plan, self.name, source=self.topology)
        self._up_lock = SiteLock(self.name, self.state_dir, "up").acquire()
        for part in _SUPERVISED:  # a part run by hand
            found = holder(self.state_dir, part)
            if found is not None:
                self._up_lock.release()
                raise SiteBusyError(describe(self.name, part, found) + "; stop it first")
        supervisor = Supervisor(
            self.plan, self.name, Path(self.topology), dashboard_port=dashboard_port
        )
        if not supervisor.parts:
            self._up_lock.release()
            msg = f"site {self.name!r} has nothing to run"
            raise TopologyError(msg)
        return supervisor

    def supervise(self, stop: threading.Event, *, dashboard_port: int | None = None) -> None:
        """Start and supervise every part in the foreground until ``stop`` is set."""
        supervisor = self.supervisor(dashboard_port=dashboard_port)
        try:
            supervisor.run(stop)
        finally:
            self._release_up()

    def start(self, *, dashboard_port: int | None = None) -> Site:
        """Supervise every part in a background thread; :meth:`stop` ends it."""
        if self._supervision is not None:
            msg = f"site {self.name!r} is already started"
            raise MlexecError(msg)
        supervisor = self.supervisor(dashboard_port=dashboard_port)
        stop = threading.Event()
        thread = threading.Thread(
            target=supervisor.run, args=(stop,), name=f"mlexec-up-{self.name}", daemon=True
        )
        thread.start()
        self._supervision = (thread, stop)
        return self

    def stop(self, timeout: float = 90.0) -> None:
        """Stop every supervised part (gracefully) and the supervision."""
        if self._supervision is not None:
            thread, stop = self._supervision
            stop.set()
            thread.join(timeout)
            self._supervision = None
        self._release_up()

    def _release_up(self) -> None:
        if self._up_lock is not None:
            self._up_lock.release()
            self._up_lock = None

    # ------------------------------------------------------------ state

    def status(self) -> SiteStatus:
        """What the supervisor last wrote, with the lag and backlog measured now."""
        from mlexec.runtime.lag import pipeline_lag, stalled, store_backlog
        from mlexec.runtime.supervisor import read_status

        found = read_status(self.plan, self.name)
        if found is None:
            msg = f"site {self.name!r} has not been started with `mlexec up`"
            raise MlexecError(msg)
        measured: dict[str, Any] = {}
        for name, measure in (("pipeline", pipeline_lag), ("store", store_backlog)):
            try:
                measured[name] = measure(self.plan, self.name)
            except Exception as exc:  # noqa: BLE001 - say what cannot be measured, never 0
                measured[name] = f"cannot be measured: {exc}"
        problems = dict(found.get("problems") or {})
        try:
            free: int | None = shutil.disk_usage(self.state_dir).free
        except OSError:
            free = None
        if free is not None and free < _LOW_DISK:
            problems["disk"] = (
                f"the disk of {self.state_dir} has {free:,} bytes free; recovery and "
                "checkpoints need room, the site resumes once there is"
            )
        history = found.get("history") or []
        return SiteStatus(
            site=self.name,
            parts=found["parts"],
            age=time.time() - found["written_at"],
            supervised=holder(self.state_dir, "up") is not None,
            problems=problems,
            lag=measured["pipeline"],
            backlog=measured["store"],
            rate=history[-1]["rate"] if history else None,
            stalled=stalled(history),
        )

    def reset(self, part: Literal["all", "pipeline", "store"] = "all") -> list[str]:
        """Forget the dataflows' recovery state (refused while any part runs); what was removed."""
        locks = []
        try:
            for name in ("up", "pipeline", "store"):
                try:
                    locks.append(SiteLock(self.name, self.state_dir, name).acquire())
                except SiteBusyError as exc:
                    msg = f"{exc}; reset refused while the site runs"
                    raise SiteBusyError(msg) from None
            removed = []
            for name in ("pipeline", "store") if part == "all" else (part,):
                flow = self.state_dir / "recovery" / f"{self.plan.topology.name}-{self.name}-{name}"
                if flow.exists():
                    shutil.rmtree(flow)
                    removed.append(str(flow))
            return removed
        finally:
            for lock in locks:
                lock.release()


def _stop_when_it_dies(child: subprocess.Popen[bytes], what: str) -> None:
    """Stop this process (as SIGTERM would, exit 1) when ``child`` exits unasked."""
    import os
    import signal
    import sys

    def wait() -> None:
        code = child.wait()
        if STOPPING.is_set():
            return
        print(f"error: {what} exited with {code}; stopping", file=sys.stderr, flush=True)
        CHILD_DIED.set()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="mlexec-child-watch", daemon=True).start()
