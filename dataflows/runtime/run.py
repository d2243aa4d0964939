"""Run a site: create its topics and tables, then execute its two dataflows.

A site runs a *pipeline* dataflow (every use case's raw → predictions, samples and
dead letters) and a *store* dataflow (samples topics → the sample store). They keep
separate recovery state under the site's ``state_dir``, whether they run one after
the other to the end of their input (batch jobs, tests, the demo) or side by side
in two processes (``mlexec run``) — chDB allows one owner per process, and a slow
store must never stall inference.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from mlexec.connectors.kafka import client_config, ensure_topics
from mlexec.connectors.samplestore import open_store
from mlexec.errors import TopologyError
from mlexec.flow import build_flow
from mlexec.lifecycle.watcher import RegistryWatcher
from mlexec.monitoring.profiles import profiles_table
from mlexec.runtime.cluster import Cluster, PeerWatch, run_beside
from mlexec.runtime.health import Reporter, RuntimeHealth, serve_metrics
from mlexec.runtime.lag import recovered_parts
from mlexec.runtime.threadstates import holding_thread_states
from mlexec.topologies.plan import Plan
from mlexec.usecase import UseCaseRuntime

__all__ = [
    "SiteRun",
    "execute",
    "prepare_resources",
    "prepare_site",
    "run_pipeline",
    "run_site",
    "run_store",
    "site_dataflow",
]

_log = logging.getLogger(__name__)


@dataclass
class SiteRun:
    """What a site runs: its use cases' pipelines and stores, checked and loaded."""

    plan: Plan
    site: str
    process: list[UseCaseRuntime]
    store: list[UseCaseRuntime]


def prepare_site(
    plan: Plan, site: str, usecase: str | None = None, source: str = "<topology>"
) -> SiteRun:
    """Load and check every use case the site runs (no side effects)."""
    process, store = [], []
    for uc in plan.chosen_at(site, usecase):
        on_site = {stage for stage, s in uc.sites if s == site}
        if not ({"dispatch", "infer", "store"} & on_site):
            continue
        rt = UseCaseRuntime.build(uc, source)
        if "dispatch" in on_site or "infer" in on_site:
            process.append(rt)
        if "store" in on_site:
            store.append(rt)
    return SiteRun(plan=plan, site=site, process=process, store=store)


def _recovery(state_dir: Path, flow: Dataflow) -> RecoveryConfig:
    db_dir = state_dir / "recovery" / flow.flow_id
    if not db_dir.exists():
        db_dir.mkdir(parents=True)
        init_db_dir(db_dir, 1)
    return RecoveryConfig(db_dir)


def execute(
    flow: Dataflow,
    *,
    workers: int = 1,
    epoch: timedelta = timedelta(seconds=2),
    recovery: RecoveryConfig | None = None,
    process_id: int | None = None,
    addresses: list[str] | None = None,
) -> None:
    """Run ``flow`` in this process (one of ``addresses`` when it is a cluster).

    Everything built before the run — modules, the model, the flow — moves out of the
    garbage collector's sight (``gc.freeze``): the hot path allocates a parsed dict per
    record, and collections would otherwise keep walking those long-lived objects. One
    worker runs on this thread; several (or a cluster) run as :func:`run_beside` says,
    their threads keeping their Python state (:func:`holding_thread_states`).
    """
    gc.collect()
    gc.freeze()
    run = functools.partial(
        cli_main,
        workers_per_process=workers,
        epoch_interval=epoch,
        recovery_config=recovery,
        process_id=process_id,
        addresses=addresses,
    )
    if addresses is None and workers == 1:
        run(flow)  # bytewax runs the one worker on this thread
    else:
        with holding_thread_states(flow) as held:
            run_beside(functools.partial(run, held))


def _execute(
    flow: Dataflow,
    state_dir: Path | None,
    workers: int,
    epoch: timedelta,
    health: tuple[SiteRun, str, int | None, float] | None = None,
    cluster: Cluster | None = None,
) -> None:
    """Run ``flow``; with ``health`` (run, part, metrics port, report interval) report it.

    In a ``cluster`` this process is one of its processes.
    """
    recovery = _recovery(state_dir, flow) if state_dir is not None else None
    reporter = None
    if health is not None:
        run, part, port, every = health
        serves = part.startswith("pipeline")
        routers = {
            rt.plan.name: rt.router for rt in run.process if rt.plan.site("infer") == run.site
        }
        watched = RuntimeHealth(run.plan, run.site, part, routers if serves else None)
        if port is not None:
            serve_metrics(watched, port)
        conf = client_config(run.plan.topology.sites[run.site].kafka)
        reporter = Reporter(watched, conf, every).start()
    try:
        execute(
            flow,
            workers=workers,
            epoch=epoch,
            recovery=recovery,
            process_id=None if cluster is None else cluster.process_id,
            addresses=None if cluster is None else list(cluster.addresses),
        )
    finally:
        if reporter is not None:
            reporter.stop()


def prepare_resources(run: SiteRun, *, tables: bool = True) -> None:
    """Create the site's topics and (with ``tables``) its samples tables; idempotent.

    Only the process that runs the store should create tables: an embedded chDB store
    stays locked by the process that opened it.
    """
    site = run.plan.topology.sites[run.site]
    ensure_topics(client_config(site.kafka), run.plan.topics_at(run.site), site=run.site)
    if run.store and tables:
        with open_store(site.sample_store) as store:
            for rt in run.store:
                store.ensure_table(rt.table)
            profiles = profiles_table(rt.plan for rt in run.store)
            if profiles is not None:
                store.ensure_table(profiles)


def _flow_name(run: SiteRun, part: str) -> str:
    return f"{run.plan.topology.name}-{run.site}-{part}"


def run_pipeline(
    run: SiteRun,
    *,
    until_end: bool = False,
    workers: int = 1,
    recovery: bool = True,
    epoch: timedelta = timedelta(seconds=2),
    batch_size: int = 1000,
    metrics_port: int | None = None,
    health_every: float = 10.0,
    cluster: Cluster | None = None,
) -> None:
    """Run the use cases' pipelines (raw → predictions, samples, dead letters).

    Runtime health goes to ``mlexec.metrics`` every ``health_every`` seconds and, with
    ``metrics_port``, to Prometheus on 127.0.0.1. In a ``cluster`` this is one of its
    processes: its health is reported as part ``pipeline.<process id>`` (process 0:
    ``pipeline``), on ``metrics_port`` + its process id.
    """
    if not run.process:
        return
    site = run.plan.topology.sites[run.site]
    flow = build_flow(
        _flow_name(run, "pipeline"),
        client_config(site.kafka),
        process=run.process,
        until_end=until_end,
        batch_size=batch_size,
        site=run.site,
        cluster_share=(0, 1) if cluster is None else (cluster.process_id, cluster.processes),
    )
    part, port = "pipeline", metrics_port
    if cluster is not None and cluster.process_id:
        part = f"pipeline.{cluster.process_id}"
        port = None if metrics_port is None else metrics_port + cluster.process_id
    health = (run, part, port, health_every)
    watcher = _watcher(run, until_end=until_end)
    peers = PeerWatch(cluster).start() if cluster is not None and cluster.peers else None
    try:
        state = Path(site.state_dir) if recovery else None
        _execute(flow, state, workers, epoch, health, cluster)
    finally:
        if watcher is not None:
            watcher.stop()
        if peers is not None:
            peers.stop()


def run_store(
    run: SiteRun,
    *,
    until_end: bool = False,
    recovery: bool = True,
    epoch: timedelta = timedelta(seconds=2),
    metrics_port: int | None = None,
    health_every: float = 10.0,
    monitor: bool = True,
    dashboard_port: int | None = None,
) -> None:
    """Run the store dataflow (samples topics → the sample store), the one owner of chDB.

    Run continuously, the store process also hosts the site's monitoring (every
    ``monitoring.every`` of the use cases stored here) and, with ``dashboard_port``,
    the monitoring page — they share its store, which an embedded chDB requires.
    """
    if not run.store:
        return
    site = run.plan.topology.sites[run.site]
    name = _flow_name(run, "store")
    flow = build_flow(
        name,
        client_config(site.kafka),
        store=run.store,
        store_url=site.sample_store,
        until_end=until_end,
        recovered=recovered_parts(Path(site.state_dir), name) if recovery else None,
    )
    health = (run, "store", metrics_port, health_every)
    with ExitStack() as hosted:
        if not until_end:
            _host_monitoring(run, hosted, monitor, dashboard_port)
        _execute(flow, Path(site.state_dir) if recovery else None, 1, epoch, health)


def _host_monitoring(
    run: SiteRun, hosted: ExitStack, monitor: bool, dashboard_port: int | None
) -> None:
    """Start the monitor's schedule and the dashboard beside the store dataflow."""
    from mlexec.lifecycle.reaction import follow
    from mlexec.monitoring.dashboard import Dashboard, DashboardData
    from mlexec.monitoring.monitor import Monitor

    monitored = [rt for rt in run.store if rt.plan.usecase.monitoring is not None]
    if not (monitored and monitor) and dashboard_port is None:
        return
    store = hosted.enter_context(open_store(run.plan.topology.sites[run.site].sample_store))
    if monitored and monitor:
        watcher = follow(Monitor(run.plan, run.site, store))
        watcher.prepare()
        stop = threading.Event()
        thread = threading.Thread(
            target=watcher.run, args=(stop,), name="mlexec-monitor", daemon=True
        )
        thread.start()
        hosted.callback(thread.join, 30.0)
        hosted.callback(stop.set)
    if dashboard_port is not None:
        board = Dashboard(DashboardData(run.plan, run.site, store), dashboard_port).start()
        hosted.callback(board.close)
        # what the user started the site for, not a warning: said on the process's stdout
        print(f"monitoring dashboard of site {run.site} at {board.url}", flush=True)  # noqa: T201


def site_dataflow(
    topology: str,
    site: str,
    part: str = "pipeline",
    *,
    usecase: str | None = None,
    until_end: bool = False,
    health_every: float = 10.0,
    workers: int = 1,
) -> Dataflow:
    """A site's dataflow to run or embed, with the registry watcher and health reporting.

    For ``python -m bytewax.run``, which calls it with literal arguments::

        python -m bytewax.run "mlexec.runtime.run:site_dataflow('topologies/demo.yaml', 'edge')"

    It creates the site's topics (and, for the ``store`` part, its tables), builds the
    flow and, in this process, catches the registry up and starts its watcher thread
    and the health reporter (``mlexec.metrics`` every ``health_every`` seconds, a last
    snapshot at exit). Recovery is bytewax's: pass ``-r`` to ``bytewax.run``.
    ``workers`` sizes the pipeline's producer pool like ``-w``.
    """
    import atexit

    from mlexec.topologies import load_topology, plan_topology

    if part not in ("pipeline", "store"):
        msg = f"part must be 'pipeline' or 'store', not {part!r}"
        raise TopologyError(msg)
    plan = plan_topology(load_topology(Path(topology)), topology)
    run = prepare_site(plan, site, usecase, source=topology)
    prepare_resources(run, tables=part == "store")
    settings = plan.topology.sites[site]
    conf = client_config(settings.kafka)
    if part == "store":
        flow = build_flow(
            _flow_name(run, "store"),
            conf,
            store=run.store,
            store_url=settings.sample_store,
            until_end=until_end,
        )
    else:
        flow = build_flow(
            _flow_name(run, "pipeline"),
            conf,
            process=run.process,
            until_end=until_end,
            site=site,
        )
        watcher = _watcher(run, until_end=until_end)
        if watcher is not None:
            atexit.register(watcher.stop)
    routers = {rt.plan.name: rt.router for rt in run.process if rt.plan.site("infer") == site}
    health = RuntimeHealth(plan, site, part, routers if part == "pipeline" else None)
    reporter = Reporter(health, conf, health_every).start()
    atexit.register(reporter.stop)
    return flow


def _watcher(run: SiteRun, *, until_end: bool) -> RegistryWatcher | None:
    """The registry watcher of the routers the site serves, caught up (and following)."""
    site = run.plan.topology.sites[run.site]
    routers = {rt.plan.name: rt.router for rt in run.process if rt.plan.site("infer") == run.site}
    if not routers:
        return None
    cache = Path(site.state_dir) / "models"
    watcher = RegistryWatcher(run.plan, run.site, routers, client_config(site.kafka), cache)
    watcher.catch_up()  # the first batch already uses what the registry says
    if not until_end:
        watcher.start()
    return watcher


def run_site(
    run: SiteRun,
    *,
    workers: int = 1,
    recovery: bool = True,
    epoch: timedelta = timedelta(seconds=2),
    batch_size: int = 1000,
) -> None:
    """Run the site to the end of its input, in this process: the pipelines, then the store.

    The two phases are sequential because the store can only know where the samples
    end once the pipelines have stopped writing them. (A continuous run starts the
    store as a process of its own: ``mlexec run``.)
    """
    prepare_resources(run)
    run_pipeline(
        run, until_end=True, workers=workers, recovery=recovery, epoch=epoch, batch_size=batch_size
    )
    run_store(run, until_end=True, recovery=recovery, epoch=epoch)
