"""A site's parts as processes: what each part is (:class:`PartSpec`) and how it runs.

A part is one of ``connect`` (the data connectors), ``pipeline`` (dispatch → infer),
``store`` (samples → the sample store, plus monitoring), ``act`` (outputs) or
``mirror`` (one link). :func:`run_part` runs one in this process — the CLI's commands
do — and :func:`spawn_part` starts one as a process of its own (``python -m
mlexec.runtime.part`` with the spec as JSON): the supervisor and ``mlexec run`` start
their children so, and the spec, not the CLI's flags, is the interface between them.

Stopping: connectors, outputs and mirrors finish their current batch on SIGINT or
SIGTERM; a dataflow stops at once (:func:`exit_on`) — safe by construction, because
input offsets are committed only in snapshots taken after the sinks flushed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from mlexec.errors import MlexecError, TopologyError
from mlexec.runtime.locks import SiteLock, child_env, die_with_parent
from mlexec.topologies.secrets import mask_text

__all__ = [
    "CHILD_DIED",
    "PARTS",
    "STOPPING",
    "PartSpec",
    "PreparedPart",
    "exit_on",
    "prepare_part",
    "run_part",
    "run_until_stopped",
    "spawn_part",
]

_log = logging.getLogger(__name__)

PartName = Literal["connect", "pipeline", "store", "act", "mirror"]
PARTS: tuple[PartName, ...] = ("connect", "pipeline", "store", "act", "mirror")

#: Set when this process is stopping on purpose: its children's exit is then expected.
STOPPING = threading.Event()
#: Set when a child this process depends on died: its stop then exits 1, not 128 + signal.
CHILD_DIED = threading.Event()


@dataclass(frozen=True)
class PartSpec:
    """One part of one site, and how to run it."""

    part: PartName
    topology: str
    site: str
    usecase: str | None = None
    #: pipeline: bytewax worker threads
    workers: int = 1
    #: pipeline and store: keep and resume from bytewax recovery state
    recovery: bool = True
    #: Serve Prometheus metrics on 127.0.0.1 at this port.
    metrics_port: int | None = None
    #: pipeline and store: seconds between runtime health snapshots on mlexec.metrics
    health_every: float = 10.0
    #: store: host the site's monitoring
    monitor: bool = True
    #: store: serve the monitoring dashboard on this port
    dashboard_port: int | None = None
    #: mirror: SOURCE:TARGET
    link: str | None = None
    #: connect, act, mirror: one pass over what is there now, then return
    once: bool = False
    #: pipeline, store: stop once everything present at start is processed
    until_end: bool = False
    #: pipeline: this process's number in a bytewax cluster, and every process's host:port
    process_id: int | None = None
    addresses: list[str] | None = None
    #: pipeline: the Service whose pods are the cluster (``MLEXEC_PEERS``), if found so
    peers: str | None = None

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            msg = f"unknown part {self.part!r}: one of {', '.join(PARTS)}"
            raise TopologyError(msg)
        if self.part == "mirror" and not self.link:
            msg = "a mirror part needs its link (SOURCE:TARGET)"
            raise TopologyError(msg)

    def to_json(self) -> str:
        """The spec as one JSON document (what a spawned part receives)."""
        return orjson.dumps(dataclasses.asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> PartSpec:
        """A spec from :meth:`to_json`'s document."""
        return cls(**orjson.loads(text))

    @property
    def lock(self) -> str | None:
        """The site lock the part holds while it runs (a mirror takes none)."""
        if self.part == "mirror":
            return None
        if self.part == "pipeline" and self.process_id:  # a cluster's further processes
            return f"pipeline.{self.process_id}"
        return self.part


def spawn_part(spec: PartSpec, *, new_session: bool = False) -> subprocess.Popen[bytes]:
    """Start ``spec`` as a process of its own, which dies with this one."""
    argv = [sys.executable, "-m", "mlexec.runtime.part", spec.to_json()]
    return subprocess.Popen(argv, start_new_session=new_session, env=child_env())


# ---------------------------------------------------------------- running


@dataclass
class PreparedPart:
    """A connect, act or mirror part made ready: its statuses, metrics and run."""

    spec: PartSpec
    #: The connectors', outputs' or mirror's statuses, updated while it runs.
    statuses: list[Any]
    run: Callable[[threading.Event], None]
    collector: Any


def run_part(
    spec: PartSpec, *, locked: bool = False, child: subprocess.Popen[bytes] | None = None
) -> list[Any]:
    """Run one part in this process until it ends or is stopped; its statuses.

    The part's site lock is taken first (unless the caller holds it: ``locked``), so a
    second copy of a part is refused before it touches anything. A dataflow's stop
    stops ``child`` first (the store process of ``mlexec run``).
    """
    if spec.part in ("pipeline", "store"):
        plan = _plan(spec, locked)
        _run_dataflow(spec, plan, child)
        return []
    prepared = prepare_part(spec, locked=locked)
    run_until_stopped(prepared.run)
    return prepared.statuses


def _plan(spec: PartSpec, locked: bool) -> Any:
    from mlexec.topologies import load_topology, plan_topology

    plan = plan_topology(load_topology(Path(spec.topology)), spec.topology)
    plan.require_site(spec.site)
    if spec.lock is not None and not locked:
        SiteLock(spec.site, plan.topology.sites[spec.site].state_dir, spec.lock).acquire()
    return plan


def _run_dataflow(spec: PartSpec, plan: Any, child: subprocess.Popen[bytes] | None) -> None:
    from mlexec.connectors.samplestore import open_store
    from mlexec.connectors.storeservice import name_this_holder
    from mlexec.runtime.cluster import Cluster
    from mlexec.runtime.run import prepare_resources, prepare_site, run_pipeline, run_store

    name_this_holder(f"the {spec.part} of site {spec.site}, {spec.topology}")
    prepared = prepare_site(plan, spec.site, spec.usecase, source=spec.topology)
    exit_on(signal.SIGINT, signal.SIGTERM, child=child)
    with ExitStack() as held:
        if spec.part == "store" and prepared.store:
            # The store holds its directory from its first moment to its last, so what
            # asks it in between (query, monitor) is answered and never opens it in a gap.
            url = plan.topology.sites[spec.site].sample_store
            held.enter_context(open_store(url, owner=True))
        prepare_resources(prepared, tables=spec.part == "store")
        if spec.part == "store":
            run_store(
                prepared,
                until_end=spec.until_end,
                recovery=spec.recovery,
                metrics_port=spec.metrics_port,
                health_every=spec.health_every,
                monitor=spec.monitor,
                dashboard_port=spec.dashboard_port,
            )
        else:
            cluster = (
                Cluster(spec.process_id, tuple(spec.addresses), spec.peers)
                if spec.process_id is not None and spec.addresses
                else None
            )
            run_pipeline(
                prepared,
                until_end=spec.until_end,
                workers=spec.workers,
                recovery=spec.recovery,
                metrics_port=spec.metrics_port,
                health_every=spec.health_every,
                cluster=cluster,
            )


def prepare_part(spec: PartSpec, *, locked: bool = False) -> PreparedPart:
    """Make a connect, act or mirror part ready (its lock taken, its metrics served)."""
    from mlexec.connectors.runner import ConnectorCollector

    plan = _plan(spec, locked)
    if spec.part == "connect":
        from mlexec.runtime.connect import prepare_connectors, run_connectors

        connectors = prepare_connectors(plan, spec.site, spec.usecase, once=spec.once)
        prepared = PreparedPart(
            spec,
            connectors.statuses,
            lambda stop: run_connectors(connectors, stop, once=spec.once),
            ConnectorCollector(connectors.statuses),
        )
    elif spec.part == "act":
        from mlexec.outputs import OutputCollector, prepare_outputs, run_outputs

        outputs = prepare_outputs(plan, spec.site, spec.usecase)
        prepared = PreparedPart(
            spec,
            outputs.statuses,
            lambda stop: run_outputs(outputs, stop, once=spec.once),
            OutputCollector(outputs.statuses),
        )
    elif spec.part == "mirror":
        from mlexec.connectors.kafka import client_config
        from mlexec.runtime.mirror import prepare_mirror, run_mirror

        mirror = prepare_mirror(plan, str(spec.link), once=spec.once)
        here = (spec.site, client_config(plan.topology.sites[spec.site].kafka), spec.health_every)
        prepared = PreparedPart(
            spec,
            mirror.statuses,
            lambda stop: run_mirror(
                mirror, stop, once=spec.once, health=None if spec.once else here
            ),
            ConnectorCollector(mirror.statuses),
        )
    else:
        msg = f"the {spec.part} part is a dataflow: run it with run_part"
        raise TopologyError(msg)
    if spec.metrics_port is not None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        registry.register(prepared.collector)
        from mlexec.runtime.health import metrics_address

        start_http_server(spec.metrics_port, addr=metrics_address(), registry=registry)
    return prepared


def run_until_stopped(run: Callable[[threading.Event], None]) -> int | None:
    """Run ``run(stop)`` with SIGINT and SIGTERM setting ``stop``; the signal that did."""
    stop = threading.Event()
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        print(f"{signal.Signals(signum).name}: stopping after the current batch", file=sys.stderr)
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    run(stop)
    return received[0] if received else None


def exit_on(*signals: signal.Signals, child: subprocess.Popen[bytes] | None = None) -> None:
    """Stop a running dataflow at once on these signals (and ``child`` first, if given).

    Safe by construction: input offsets are committed only in snapshots taken after
    the sinks flushed, so the next run resumes from the last snapshot and repeats at
    most one epoch, which downstream de-duplication by id removes. (bytewax panics
    when a Python exception interrupts a source, so no exception is raised here.)
    """

    def handler(signum: int, _frame: object) -> None:
        STOPPING.set()
        print(
            f"{signal.Signals(signum).name}: stopping; the next run resumes from the last snapshot",
            file=sys.stderr,
            flush=True,
        )
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
        from mlexec.runtime.health import flush_reporters

        flush_reporters()  # the runtime health up to this moment, for the monitor
        os._exit(1 if CHILD_DIED.is_set() else 128 + signum)

    for sig in signals:
        signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """A spawned part: ``python -m mlexec.runtime.part SPEC_JSON``."""
    argv = sys.argv[1:] if argv is None else argv
    die_with_parent()
    logging.basicConfig(
        level=os.environ.get("MLEXEC_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    if len(argv) != 1:
        print("usage: python -m mlexec.runtime.part SPEC_JSON", file=sys.stderr)
        return 2
    try:
        spec = PartSpec.from_json(argv[0])
        run_part(spec)
    except (MlexecError, OSError) as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return 2 if isinstance(exc, TopologyError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
