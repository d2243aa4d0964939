"""The ``mlexec`` command line: validate, connect, run, act, query, broker, demo."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlexec.runtime.locks import (
    SiteBusyError,
    SiteLock,
    child_env,
    describe,
    die_with_parent,
    holder,
    stop_child,
)
from mlexec.topologies.errors import MlexecError, TopologyError
from mlexec.topologies.schema import (
    Connector,
    CsvConnector,
    FileOutput,
    HttpConnector,
    HttpOutput,
    LogfileConnector,
    MqttConnector,
    MqttOutput,
    Output,
    SqlConnector,
)
from mlexec.topologies.secrets import mask_text, mask_url

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client.registry import Collector

    from mlexec.connectors.runner import ConnectorStatus
    from mlexec.outputs import OutputStatus

__all__ = ["app", "main"]

app = typer.Typer(
    name="mlexec",
    help="A machine-learning execution environment for streams: one topology, every site.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _show_version(value: bool) -> None:
    if value:
        from mlexec import __version__

        console.print(f"mlexec {__version__}", highlight=False)
        raise typer.Exit


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """A machine-learning execution environment for streams: one topology, every site."""


_stopping = threading.Event()

TopologyArg = Annotated[Path, typer.Argument(help="The topology YAML file.", show_default=False)]
SiteOpt = Annotated[str, typer.Option("--site", "-s", help="The site to act for.")]
MetricsPortOpt = Annotated[
    int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1 at this port.", min=1)
]


#: The one exit-code rule: 0 done; 2 a usage or configuration error (the topology, or a
#: name in the arguments that it does not have — click's own usage errors exit 2 too);
#: 1 a runtime failure; 130 when interrupted (Ctrl-C).
EXIT_CONFIG, EXIT_RUNTIME, EXIT_INTERRUPTED = 2, 1, 130


def _fail(exc: Exception) -> typer.Exit:
    """The one error handler: the message in one line (no markup, no secret) and the code."""
    err_console.print(
        f"[bold red]error:[/] {escape(mask_text(str(exc)))}", highlight=False, soft_wrap=True
    )
    return typer.Exit(EXIT_CONFIG if isinstance(exc, TopologyError) else EXIT_RUNTIME)


def _load(path: Path):  # type: ignore[no-untyped-def]
    from mlexec.topologies import load_topology, plan_topology

    topology = load_topology(path)
    return topology, plan_topology(topology, str(path))


@app.command()
def validate(topology: TopologyArg) -> None:
    """Check a topology (and its models) without side effects; print the plan."""
    from mlexec.runtime.run import prepare_site

    try:
        topo, plan = _load(topology)
        runs = {site: prepare_site(plan, site, source=str(topology)) for site in topo.sites}
    except MlexecError as exc:
        raise _fail(exc) from exc

    console.print(f"[bold green]ok[/] topology [bold]{topo.name}[/] ({topology})")
    sites = Table(title="sites", title_justify="left")
    for col in ("site", "kafka", "security", "sample store", "state"):
        sites.add_column(col)
    for name, site in topo.sites.items():
        sites.add_row(
            name,
            mask_url(site.kafka.bootstrap),
            site.kafka.security.protocol,
            mask_url(site.sample_store),
            site.state_dir,
        )
    console.print(sites)
    stages = Table(title="use cases", title_justify="left")
    for col in (
        "use case",
        "connectors",
        "dispatch",
        "infer",
        "store",
        "act",
        "rule",
        "reduction",
        "model",
    ):
        stages.add_column(col)
    for uc in plan.usecases.values():
        u = uc.usecase
        stages.add_row(
            uc.name,
            *(uc.site(s) for s in ("connectors", "dispatch", "infer", "store", "act")),
            u.dispatch.kind,
            f"{u.reduction.kind} → {len(uc.features)} columns",
            f"{u.model.name} v{u.model.version}",
        )
    console.print(stages)
    connectors = Table(title="connectors (mlexec connect)", title_justify="left")
    for col in ("site", "use case", "connector", "kind", "reads", "writes"):
        connectors.add_column(col)
    for uc in plan.usecases.values():
        for conn in uc.usecase.connectors:
            connectors.add_row(
                uc.site("connectors"),
                uc.name,
                conn.name or conn.kind,
                conn.kind,
                _reads(conn),
                uc.raw_topic,
            )
    if connectors.row_count:
        console.print(connectors)
    outputs = Table(title="outputs (mlexec act)", title_justify="left")
    for col in ("site", "use case", "output", "kind", "to", "when", "debounce"):
        outputs.add_column(col)
    for uc in plan.usecases.values():
        for out in uc.usecase.outputs:
            outputs.add_row(
                uc.site("act"),
                uc.name,
                out.name or out.kind,
                out.kind,
                _delivers_to(out),
                out.when or "",
                _debounce_text(out),
            )
    if outputs.row_count:
        console.print(outputs)
    topics = Table(title="topics", title_justify="left")
    for col in ("site", "topic", "partitions"):
        topics.add_column(col)
    for site in topo.sites:
        for t in plan.topics_at(site):
            topics.add_row(site, t.name, str(t.partitions))
    console.print(topics)
    tables = Table(title="sample-store tables", title_justify="left")
    for col in ("site", "table", "retention", "columns"):
        tables.add_column(col)
    for site, run in runs.items():
        for rt in run.store:
            cols = ", ".join(f"{n} {k}" for n, k in rt.table.columns)
            days = rt.table.retention_seconds / 86400
            tables.add_row(site, rt.table.name, f"{days:g} d", cols)
    console.print(tables)
    watching = Table(title="monitoring (in the store site's mlexec run)", title_justify="left")
    for col in ("site", "use case", "every / window", "reference", "watched", "also"):
        watching.add_column(col)
    for uc in plan.usecases.values():
        mon = uc.usecase.monitoring
        if mon is None:
            continue
        life = uc.usecase.lifecycle
        also = (
            [f"accuracy ({mon.accuracy.metric} of {mon.accuracy.output})"] if mon.accuracy else []
        )
        also += [
            f"health ({n})"
            for n in ("lag", "deadletter_rate", "latency_p99_ms", "store_backlog")
            if getattr(mon.health, n)
        ]
        if life is not None:
            also.append("canary policy")
            if life.training is not None:
                also.append(f"training ({life.training.entrypoint})")
        watching.add_row(
            uc.site("store"),
            uc.name,
            f"{mon.every.total_seconds():g} s / {mon.window.total_seconds():g} s",
            mon.reference.kind if mon.reference else "-",
            ", ".join(f"{c} ({', '.join(w.thresholds())})" for c, w in mon.watch.items()),
            ", ".join(also),
        )
    if watching.row_count:
        console.print(watching)


def _reads(conn: Connector) -> str:
    """Where a connector reads, for people (no secrets)."""
    if isinstance(conn, CsvConnector | LogfileConnector):
        return conn.path
    if isinstance(conn, HttpConnector):
        return f"{mask_url(conn.url)} ({conn.cron or f'every {conn.every}'})"
    if isinstance(conn, SqlConnector):
        return f"{conn.table or 'query'} by {conn.cursor}"
    if isinstance(conn, MqttConnector):
        return f"mqtt://{conn.broker.host}:{conn.broker.port} {', '.join(conn.topics)}"
    return f"topic {conn.topic}"


def _debounce_text(out: Output) -> str:
    d = out.debounce
    if d is None:
        return ""
    parts = [
        f"every {d.every}" if d.every else "",
        f"on change of {d.on_change}" if d.on_change else "",
    ]
    return " and ".join(p for p in parts if p)


def _delivers_to(out: Output) -> str:
    """Where an output delivers, for people (no secrets)."""
    if isinstance(out, HttpOutput):
        return mask_url(out.url)
    if isinstance(out, MqttOutput):
        return f"mqtt://{out.broker.host}:{out.broker.port} {out.topic}"
    if isinstance(out, FileOutput):
        return f"{out.path} ({out.format})"
    return f"topic {out.topic}"


class Part(StrEnum):
    """Which of a site's dataflows ``mlexec run`` runs."""

    all = "all"
    pipeline = "pipeline"
    store = "store"


@app.command()
def run(
    topology: TopologyArg,
    site: SiteOpt,
    usecase: Annotated[
        str | None, typer.Option("--usecase", "-u", help="Run only this use case.")
    ] = None,
    until_end: Annotated[
        bool,
        typer.Option("--until-end", help="Stop once everything present at start is processed."),
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="bytewax worker threads.")] = 1,
    no_recovery: Annotated[
        bool, typer.Option("--no-recovery", help="Start from the beginning; keep no snapshots.")
    ] = False,
    part: Annotated[
        Part, typer.Option(help="all; or only the pipeline or the store dataflow.")
    ] = Part.all,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve runtime health to Prometheus on 127.0.0.1 at this port "
            "(the store process of --part all at the next one).",
            min=1,
        ),
    ] = None,
    health_every: Annotated[
        float,
        typer.Option(help="Seconds between runtime health snapshots on mlexec.metrics.", min=0.1),
    ] = 10.0,
    monitor: Annotated[
        bool,
        typer.Option(help="Run the stored use cases' monitoring in the store process."),
    ] = True,
    dashboard_port: Annotated[
        int | None,
        typer.Option(help="Serve the monitoring dashboard from the store process on this port."),
    ] = None,
) -> None:
    """Run a site's dataflows: the pipelines of the use cases placed there, and the store.

    Continuously, the store runs as a second process (the one owner of an embedded
    chDB store); with --until-end the pipelines run to the end first, then the store.
    """
    from mlexec.runtime.run import (
        prepare_resources,
        prepare_site,
        run_pipeline,
        run_site,
        run_store,
    )

    try:
        _, plan = _load(topology)
        prepared = prepare_site(plan, site, usecase, source=str(topology))
        if not prepared.process and not prepared.store:
            msg = f"site {site!r} runs no dispatch, infer or store stage of {usecase or 'any use case'}"
            raise TopologyError(msg)
        recovery = not no_recovery
        state_dir = plan.topology.sites[site].state_dir
        runs_store = part is Part.store or (part is Part.all and not prepared.process)
        held = (
            ["pipeline", "store"]
            if until_end and part is Part.all
            else ["store"]
            if runs_store
            else ["pipeline"]
        )
        for name in held:  # before anything starts; a refusal touches nothing
            SiteLock(site, state_dir, name).acquire()
        if until_end and part is Part.all:
            _exit_on(signal.SIGINT, signal.SIGTERM)
            run_site(prepared, workers=workers, recovery=recovery)
            return
        prepare_resources(prepared, tables=runs_store)  # chDB stays locked by its opener
        if runs_store:
            _exit_on(signal.SIGINT, signal.SIGTERM)
            run_store(
                prepared,
                until_end=until_end,
                recovery=recovery,
                metrics_port=metrics_port,
                health_every=health_every,
                monitor=monitor,
                dashboard_port=dashboard_port,
            )
            return
        child = None
        if part is Part.all and prepared.store:
            argv = [sys.executable, "-m", "mlexec.cli", "run", str(topology), "--site", site]
            argv += ["--part", "store", *(["--usecase", usecase] if usecase else [])]
            argv += ["--no-recovery"] if no_recovery else []
            argv += ["--metrics-port", str(metrics_port + 1)] if metrics_port else []
            argv += ["--health-every", str(health_every)]
            argv += [] if monitor else ["--no-monitor"]
            argv += ["--dashboard-port", str(dashboard_port)] if dashboard_port else []
            child = subprocess.Popen(argv, env=child_env())
            _watch(child)
        _exit_on(signal.SIGINT, signal.SIGTERM, child=child)
        try:
            run_pipeline(
                prepared,
                until_end=until_end,
                workers=workers,
                recovery=recovery,
                metrics_port=metrics_port,
                health_every=health_every,
            )
        finally:
            _stop_child(child)
    except (MlexecError, OSError) as exc:  # OSError: the state directory, said in one line
        raise _fail(exc) from exc


def _stop_child(child: subprocess.Popen[bytes] | None) -> None:
    """A run that ends, however it ends, stops its store process: none outlives it."""
    if child is None or child.poll() is not None:
        return
    _stopping.set()
    stop_child(child)


def _watch(child: subprocess.Popen[bytes]) -> None:
    """Stop this run when the store process dies: a supervisor restarts both."""

    def wait() -> None:
        code = child.wait()
        if _stopping.is_set():
            return
        err_console.print(f"[bold red]error:[/] the store process exited with {code}; stopping")
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=wait, name="mlexec-store-watch", daemon=True).start()


@app.command()
def connect(
    topology: TopologyArg,
    site: SiteOpt,
    usecase: Annotated[
        str | None, typer.Option("--usecase", "-u", help="Run only this use case's connectors.")
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="One pass: read what is there now, then exit.")
    ] = False,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run a site's data connectors: files, logs, web, SQL, Kafka → the raw topics.

    Each connector checkpoints in the site's state directory after every delivered
    batch, so a restart resumes with nothing lost and nothing produced twice.
    """
    from mlexec.connectors.runner import ConnectorCollector
    from mlexec.runtime.connect import prepare_connectors, run_connectors

    try:
        _, plan = _load(topology)
        plan.require_site(site)
        SiteLock(site, plan.topology.sites[site].state_dir, "connect").acquire()
        prepared = prepare_connectors(plan, site, usecase, once=once)
        collector = ConnectorCollector(prepared.statuses)
        try:
            _run_parts(
                lambda stop: run_connectors(prepared, stop, once=once), collector, metrics_port
            )
        finally:
            _print_connectors(prepared.statuses)
    except MlexecError as exc:
        raise _fail(exc) from exc


@app.command()
def act(
    topology: TopologyArg,
    site: SiteOpt,
    usecase: Annotated[
        str | None, typer.Option("--usecase", "-u", help="Run only this use case's outputs.")
    ] = None,
    once: Annotated[
        bool,
        typer.Option("--once", help="Deliver what the predictions topic holds now, then exit."),
    ] = False,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Deliver predictions to the use cases' outputs: Kafka, webhooks, MQTT, files.

    Each output filters and debounces as declared, retries with backoff, sends what it
    cannot deliver to <uc>.outputs.deadletter, and checkpoints its offsets in the
    site's state directory once deliveries are durable.
    """
    from mlexec.outputs import OutputCollector, prepare_outputs, run_outputs

    try:
        _, plan = _load(topology)
        plan.require_site(site)
        SiteLock(site, plan.topology.sites[site].state_dir, "act").acquire()
        prepared = prepare_outputs(plan, site, usecase)
        collector = OutputCollector(prepared.statuses)
        try:
            _run_parts(lambda stop: run_outputs(prepared, stop, once=once), collector, metrics_port)
        finally:
            _print_outputs(prepared.statuses)
    except MlexecError as exc:
        raise _fail(exc) from exc


@app.command()
def mirror(
    topology: TopologyArg,
    link: Annotated[str, typer.Option("--link", help="SOURCE:TARGET, a link of the topology.")],
    once: Annotated[
        bool, typer.Option("--once", help="Carry what is there now both ways, then exit.")
    ] = False,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Carry a link's topics both ways (MirrorMaker 2's contract, on one machine).

    Up: what the placement needs on the target, and alerts; down: models. Remote topics
    are <site>.<topic>; a restart or an outage of the other side loses and repeats nothing.
    """
    from mlexec.connectors.runner import ConnectorCollector
    from mlexec.runtime.mirror import prepare_mirror, run_mirror

    try:
        _, plan = _load(topology)
        prepared = prepare_mirror(plan, link, once=once)
        collector = ConnectorCollector(prepared.statuses)
        try:
            _run_parts(lambda stop: run_mirror(prepared, stop, once=once), collector, metrics_port)
        finally:
            _print_connectors(prepared.statuses)
    except MlexecError as exc:
        raise _fail(exc) from exc


@app.command()
def up(topology: TopologyArg, site: SiteOpt) -> None:
    """Start and supervise a site: connectors, pipeline, store, outputs and mirror links.

    A process that exits is restarted with backoff and resumes from its recovery
    state or checkpoint; with a scale policy the pipeline gets more or fewer workers as
    its lag demands. SIGTERM or Ctrl-C stops every process gracefully.
    """
    from mlexec.runtime.supervisor import Supervisor

    try:
        _, plan = _load(topology)
        plan.require_site(site)
        state_dir = plan.topology.sites[site].state_dir
        SiteLock(site, state_dir, "up").acquire()
        for part in ("pipeline", "store", "connect", "act"):  # a part run by hand
            found = holder(state_dir, part)
            if found is not None:
                raise SiteBusyError(describe(site, part, found) + "; stop it first")
        supervisor = Supervisor(plan, site, topology)
    except MlexecError as exc:
        raise _fail(exc) from exc
    if not supervisor.parts:
        raise _fail(TopologyError(f"site {site!r} has nothing to run"))
    console.print(f"supervising {', '.join(supervisor.parts)} of site [bold]{site}[/]")
    _run_parts(supervisor.run, None, None)


@app.command()
def status(topology: TopologyArg, site: SiteOpt) -> None:
    """Show a site's supervised processes, the pipeline's lag and throughput, restarts."""
    import shutil

    from mlexec.runtime.lag import pipeline_lag, stalled, store_backlog
    from mlexec.runtime.supervisor import read_status

    try:
        _, plan = _load(topology)
        plan.require_site(site)
        found = read_status(plan, site)
    except MlexecError as exc:
        raise _fail(exc) from exc
    if found is None:
        raise _fail(MlexecError(f"site {site!r} has not been started with `mlexec up`"))
    measured: dict[str, tuple[int, int] | str | None] = {}
    for name, measure in (("pipeline", pipeline_lag), ("store", store_backlog)):
        try:
            measured[name] = measure(plan, site)
        except Exception as exc:  # noqa: BLE001 - say what cannot be measured, never 0
            measured[name] = f"cannot be measured: {exc}"
    state_dir = Path(plan.topology.sites[site].state_dir)
    runs = holder(state_dir, "up")
    age = time.time() - found["written_at"]
    table = Table(title=f"site {site} (status written {age:.0f}s ago)", title_justify="left")
    for col in ("process", "pid", "state", "restarts", "last exit", "workers"):
        table.add_column(col)
    for part in found["parts"]:
        table.add_row(
            part["name"],
            str(part["pid"] or ""),
            part["state"],
            str(part["restarts"]),
            "" if part["last_exit"] is None else str(part["last_exit"]),
            "" if part["workers"] is None else str(part["workers"]),
        )
    console.print(table)
    if runs is None:
        console.print("the supervisor (`mlexec up`) is not running: the states above are its last")
    for what, problem in (found.get("problems") or {}).items():
        console.print(f"[bold red]problem:[/] {what}: {problem}", highlight=False, soft_wrap=True)
    try:
        free = shutil.disk_usage(state_dir).free
    except OSError:
        free = None
    if free is not None and free < 16 * 1024 * 1024:
        console.print(
            f"[bold red]problem:[/] the disk of {state_dir} has {free:,} bytes free; "
            "recovery and checkpoints need room, the site resumes once there is",
            highlight=False,
        )
    history = found.get("history") or []
    rate = f", {history[-1]['rate']:,.0f} records/s" if history else ""
    stuck = stalled(history)
    if stuck is not None:
        console.print(
            f"[bold red]problem:[/] the pipeline processed nothing for {stuck[1]:.0f}s while "
            f"{stuck[0]:,} records waited (stalled: see its log; a topic of many tiny batches "
            "on the embedded broker is a known cause, docs/reliability.md)",
            highlight=False,
        )
    lag, backlog = measured["pipeline"], measured["store"]
    if isinstance(lag, str):
        console.print(f"pipeline: lag {lag}", highlight=False, soft_wrap=True)
    elif lag is not None:
        console.print(f"pipeline: {lag[0]:,} records behind, {lag[1]:,} processed{rate}")
    elif "pipeline" in {p["name"] for p in found["parts"]}:
        console.print("pipeline: lag unknown until its first snapshot (no records processed yet)")
    if isinstance(backlog, str):
        console.print(f"store: backlog {backlog}", highlight=False, soft_wrap=True)
    elif backlog is not None:
        console.print(
            f"store: {backlog[0]:,} samples waiting in Kafka, {backlog[1]:,} read by the store "
            "(stored, or held in its recovery state for a retry)"
        )


@app.command()
def reset(
    topology: TopologyArg,
    site: SiteOpt,
    part: Annotated[
        Part, typer.Option(help="all; or only the pipeline's or the store's recovery.")
    ] = Part.all,
) -> None:
    """Forget a site's dataflow recovery state on purpose: the next run starts over.

    Refused while any part of the site runs. Connector checkpoints, the model cache and
    the sample store are kept; the dataflows read their topics again from the beginning
    (the store de-duplicates samples by record id).
    """
    import shutil

    try:
        _, plan = _load(topology)
        plan.require_site(site)
        state_dir = Path(plan.topology.sites[site].state_dir)
        locks = []
        for name in ("up", "pipeline", "store"):
            try:
                locks.append(SiteLock(site, state_dir, name).acquire())
            except SiteBusyError as exc:
                msg = f"{exc}; reset refused while the site runs"
                raise SiteBusyError(msg) from None
        removed = []
        try:
            for name in ("pipeline", "store") if part is Part.all else (part.value,):
                flow = state_dir / "recovery" / f"{plan.topology.name}-{site}-{name}"
                if flow.exists():
                    shutil.rmtree(flow)
                    removed.append(str(flow))
        finally:
            for lock in locks:
                lock.release()
    except MlexecError as exc:
        raise _fail(exc) from exc
    if removed:
        console.print("removed the recovery state " + ", ".join(removed), highlight=False)
    else:
        console.print(f"site {site!r} has no recovery state to reset", highlight=False)


def _run_parts(
    run: Callable[[threading.Event], None], collector: Collector | None, metrics_port: int | None
) -> None:
    """Serve metrics if asked, turn SIGINT/SIGTERM into a stop, and run."""
    from prometheus_client import CollectorRegistry, start_http_server

    if metrics_port is not None and collector is not None:
        registry = CollectorRegistry()
        registry.register(collector)
        start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    stop = threading.Event()
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        err_console.print(f"{signal.Signals(signum).name}: stopping after the current batch")
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    run(stop)
    if signal.SIGINT in received:  # SIGTERM is a requested stop (0); Ctrl-C is 130
        raise typer.Exit(EXIT_INTERRUPTED)


def _print_outputs(statuses: list[OutputStatus]) -> None:
    table = Table(title="outputs", title_justify="left")
    for col in ("use case", "output", "consumed", "delivered", "filtered", "debounced"):
        table.add_column(col, justify="right")
    for col in ("retried", "dead letters", "mean latency"):
        table.add_column(col, justify="right")
    table.add_column("target")
    for s in statuses:
        mean = f"{1000 * s.latency_sum / s.latency_count:.0f} ms" if s.latency_count else ""
        table.add_row(
            s.usecase,
            s.output,
            *(f"{v:,}" for v in (s.consumed, s.delivered, s.filtered, s.debounced, s.retried)),
            f"{s.deadlettered:,}",
            mean,
            s.target,
        )
    console.print(table)


def _print_connectors(statuses: list[ConnectorStatus]) -> None:
    table = Table(title="connectors", title_justify="left")
    for col in ("use case", "connector", "read", "produced", "dead letters", "skipped", "behind"):
        table.add_column(col, justify="right")
    table.add_column("position")
    for s in statuses:
        behind = "" if s.behind is None else f"{s.behind:,} {s.behind_unit}"
        table.add_row(
            s.usecase,
            s.connector,
            f"{s.read:,}",
            f"{s.produced:,}",
            f"{s.deadlettered:,}",
            f"{s.skipped:,}",
            behind,
            s.position,
        )
    console.print(table)


class Rendering(StrEnum):
    """What ``mlexec render`` writes."""

    mm2 = "mm2"
    grafana = "grafana"


@app.command()
def render(
    topology: TopologyArg,
    what: Annotated[
        Rendering,
        typer.Argument(
            help="mm2: MirrorMaker 2 properties per link; grafana: Grafana provisioning "
            "(ClickHouse datasource and monitoring dashboard) per ClickHouse-server site."
        ),
    ],
    out: Annotated[Path, typer.Option(help="The directory to write to.")] = Path("deploy"),
) -> None:
    """Write what the infrastructure needs: MirrorMaker 2 properties, Grafana provisioning.

    MirrorMaker 2 properties are private (mode 0600): with SASL they hold the
    credentials. Grafana's files hold none (its password comes from its environment)
    and must be readable by the Grafana container's user.
    """
    from mlexec.topologies.render import render_grafana, render_mm2

    try:
        topo, plan = _load(topology)
    except MlexecError as exc:
        raise _fail(exc) from exc
    files: dict[str, str] = {}
    if what is Rendering.mm2:
        if not topo.links:
            raise _fail(TopologyError(f"{topology}: links: no links to render MirrorMaker 2 for"))
        for link in topo.links:
            files[f"mm2-{link.source}-{link.target}.properties"] = render_mm2(plan, link)
    else:
        servers = [
            s for s, site in topo.sites.items() if site.sample_store.startswith("clickhouse")
        ]
        if not servers:
            msg = f"{topology}: sites: no site has a ClickHouse server store for Grafana to read"
            raise _fail(TopologyError(msg))
        for name in servers:
            files.update(render_grafana(plan, name))
    for relative, text in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o600 if what is Rendering.mm2 else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        console.print(f"wrote {path}")


@app.command()
def query(
    topology: TopologyArg,
    sql: Annotated[str, typer.Argument(help="SQL for the site's sample store.")],
    site: SiteOpt,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print JSON lines, not a table.")
    ] = False,
) -> None:
    """Run SQL on a site's sample store (the database is named ``mlexec``)."""
    from mlexec.connectors.samplestore import open_store

    try:
        topo, plan = _load(topology)
        plan.require_site(site)
        with open_store(topo.sites[site].sample_store) as store:
            frame = store.query(sql)
    except MlexecError as exc:
        raise _fail(exc) from exc
    if json_lines:
        for record in frame.iter_rows(named=True):
            sys.stdout.write(orjson.dumps(record, default=str).decode() + "\n")
        return
    table = Table(show_lines=False)
    for name in frame.columns:
        table.add_column(name)
    for row in frame.iter_rows():
        table.add_row(*(str(v) for v in row))
    console.print(table)


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: a free one).")] = 9092,
    storage: Annotated[
        str,
        typer.Option(
            help="memory://tansu/; postgres:// needs a Tansu built with it (the pinned one is not)."
        ),
    ] = "memory://tansu/",
) -> None:
    """Run a local Kafka-wire broker (Tansu) in the foreground until Ctrl-C."""
    from mlexec.connectors.broker import LocalBroker

    local = LocalBroker(port=port, storage=storage)
    _interrupt_on(signal.SIGINT, signal.SIGTERM)
    try:
        local.start()
        console.print(
            f"broker listening on [bold]{local.bootstrap}[/] ({storage}); Ctrl-C stops it"
        )
        local.wait()
    except KeyboardInterrupt:
        pass
    except MlexecError as exc:
        raise _fail(exc) from exc
    finally:
        local.stop()


@app.command()
def demo(
    work_dir: Annotated[
        Path, typer.Option(help="Where the demo keeps its data (wiped first).")
    ] = Path(".mlexec/demo"),
    machines: Annotated[int, typer.Option(min=1, help="Machines in the synthetic park.")] = 20,
    seconds: Annotated[int, typer.Option(min=20, help="Seconds of readings per machine.")] = 1000,
) -> None:
    """From nothing: local broker, models, data, the site dataflow to the end, a report."""
    from mlexec.demo import run_demo

    console.rule("[bold]mlexec demo")
    console.print("local broker, synthetic sensor park, two models (scikit-learn → ONNX) …")
    try:
        with console.status("running the demo topology to the end"):
            report = run_demo(work_dir, machines=machines, seconds=seconds)
    except MlexecError as exc:
        raise _fail(exc) from exc

    console.print(
        f"the CSV connector read [bold]{report.records_in:,}[/] readings into the raw topic; "
        f"{report.broken_in} of them have an unreadable value and went to the dead-letter topic"
    )
    summary = Table(title="what happened", title_justify="left")
    for col in ("use case", "predictions", "dead letters", "samples", "retention"):
        summary.add_column(col, justify="right")
    for name in report.predictions:
        summary.add_row(
            name,
            f"{report.predictions[name]:,}",
            f"{report.deadletters[name]:,}",
            f"{report.samples[name]:,}",
            report.retention[name],
        )
    console.print(summary)
    for name, (considered, delivered, target) in report.actions.items():
        console.print(
            f"output [bold]{name}[/]: {delivered:,} of {considered:,} predictions acted on "
            f"(anomalies, at most one per machine a minute) → {target}",
            highlight=False,
            soft_wrap=True,
        )
    for title, frame in report.monitoring.items():
        table = Table(title=f"monitoring (SQL on the sample store): {title}", title_justify="left")
        for col in frame.columns:
            table.add_column(col, justify="right")
        for row in frame.iter_rows():
            table.add_row(*(str(v) for v in row))
        console.print(table)
    console.print(
        f"data, models and the chDB store are in [bold]{work_dir}[/]; the broker is stopped. "
        "Query the samples again with:"
    )
    console.print(
        f"  MLEXEC_DEMO_DIR={work_dir.resolve()} mlexec query topologies/demo.yaml --site edge "
        "'SELECT count() FROM mlexec.samples_readings FINAL'",
        highlight=False,
        soft_wrap=True,
    )


def _interrupt_on(*signals: signal.Signals) -> None:
    """Turn these signals into KeyboardInterrupt, so foreground commands stop cleanly.

    SIGINT may arrive ignored (a background job), SIGTERM is what supervisors send.
    """

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in signals:
        signal.signal(sig, handler)


def _exit_on(*signals: signal.Signals, child: subprocess.Popen[bytes] | None = None) -> None:
    """Stop a running dataflow at once on these signals.

    Safe by construction: input offsets are committed only in snapshots taken after
    the sinks flushed, so the next run resumes from the last snapshot and repeats at
    most one epoch, which downstream de-duplication by id removes. (bytewax panics
    when a Python exception interrupts a source, so no exception is raised here.)
    """

    def handler(signum: int, _frame: object) -> None:
        _stopping.set()
        err_console.print(
            f"{signal.Signals(signum).name}: stopping; the next run resumes from the last snapshot"
        )
        sys.stderr.flush()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
        from mlexec.runtime.health import flush_reporters

        flush_reporters()  # the runtime health up to this moment, for the monitor
        os._exit(128 + signum)

    for sig in signals:
        signal.signal(sig, handler)


# ------------------------------------------------------------------ monitoring

monitor_app = typer.Typer(
    help="Drift, data quality, accuracy and runtime health of a site's use cases.",
    no_args_is_help=True,
)
app.add_typer(monitor_app, name="monitor")

MonitorSiteOpt = Annotated[
    str | None,
    typer.Option(
        "--site",
        "-s",
        help="The site whose sample store to use; default: the use case's store site.",
    ),
]
UsecaseOpt = Annotated[str | None, typer.Option("--usecase", "-u", help="Only this use case.")]


def _store_site(plan, site: str | None, usecase: str | None) -> str:  # type: ignore[no-untyped-def]
    """The given site, or where the use case (or else the first monitored one) is stored."""
    if site is not None:
        plan.require_site(site)
        return site
    if usecase is not None:
        if usecase not in plan.usecases:
            msg = f"no use case {usecase!r}; use cases: {sorted(plan.usecases)}"
            raise TopologyError(msg)
        return str(plan.usecases[usecase].site("store"))
    monitored = [uc for uc in plan.usecases.values() if uc.usecase.monitoring is not None]
    return str((monitored or list(plan.usecases.values()))[0].site("store"))


@monitor_app.command("run")
def monitor_run(
    topology: TopologyArg,
    site: MonitorSiteOpt = None,
    usecase: UsecaseOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Evaluate once and exit.")] = False,
) -> None:
    """Store labels and health, evaluate drift, quality, accuracy and health; alert on changes.

    Runs every ``monitoring.every`` until Ctrl-C, or once. With an embedded (chDB) store
    it needs the store directory to itself: `mlexec run` stores monitor in-process.
    """
    from mlexec.connectors.samplestore import open_store
    from mlexec.lifecycle.reaction import follow
    from mlexec.monitoring.monitor import Monitor

    try:
        _, plan = _load(topology)
        where = _store_site(plan, site, usecase)
        with open_store(plan.topology.sites[where].sample_store) as store:
            monitor = follow(Monitor(plan, where, store, usecase=usecase, source=str(topology)))
            monitor.prepare()
            if once:
                for ev in monitor.run_once():
                    _print_evaluation(ev)
                return
            console.print(f"monitoring site {where} every {monitor.every():g}s; Ctrl-C stops")
            _until_interrupted(monitor.run)
    except MlexecError as exc:
        raise _fail(exc) from exc


def _until_interrupted(serve: Callable[[threading.Event], None]) -> None:
    """Run ``serve(stop)`` in the foreground until SIGINT or SIGTERM sets ``stop``."""
    stop = threading.Event()
    _interrupt_on(signal.SIGINT, signal.SIGTERM)
    try:
        serve(stop)
    except KeyboardInterrupt:
        stop.set()


def _print_evaluation(ev) -> None:  # type: ignore[no-untyped-def]
    console.print(
        f"[bold]{ev.usecase}[/]: {ev.rows:,} samples from {ev.window_start:%Y-%m-%d %H:%M} "
        f"to {ev.window_end:%Y-%m-%d %H:%M} UTC, reference {ev.reference or '-'}",
        highlight=False,
    )
    for note in ev.notes:
        console.print(f"  [yellow]{note}[/]", highlight=False)
    for alert in ev.alerts:
        style = {"critical": "bold red", "warning": "yellow"}.get(alert.severity, "green")
        console.print(f"  [{style}]{alert.severity}[/] {alert.message()}", highlight=False)
    if not ev.alerts:
        console.print("  no change: no new alert", highlight=False)


@monitor_app.command("show")
def monitor_show(
    topology: TopologyArg, usecase: UsecaseOpt = None, site: MonitorSiteOpt = None
) -> None:
    """The latest evaluation, runtime health and alerts of the site's monitored use cases."""
    from mlexec.connectors.samplestore import open_store
    from mlexec.monitoring.monitor import latest

    try:
        _, plan = _load(topology)
        where = _store_site(plan, site, usecase)
        chosen = [uc for uc in plan.chosen_at(where, usecase, stage="store")]
        with open_store(plan.topology.sites[where].sample_store) as store:
            views = {uc.name: latest(store, uc) for uc in chosen}
    except MlexecError as exc:
        raise _fail(exc) from exc
    styles = {"critical": "bold red", "warning": "yellow", "resolved": "green"}
    for name, view in views.items():
        console.rule(f"[bold]{name}")
        drift = Table(title="drift and quality (latest evaluation)", title_justify="left")
        for col in ("column", "statistic", "value ", "severity"):
            drift.add_column(col.strip(), justify="right" if col == "value " else "left")
        for row in view["drift"].iter_rows(named=True):
            sev = row["severity"]
            drift.add_row(
                row["column"],
                row["statistic"],
                f"{row['value']:.4g}",
                f"[{styles.get(sev, '')}]{sev}[/]" if sev else "ok",
            )
        if view["drift"].height:
            first = view["drift"].row(0, named=True)
            drift.caption = f"{first['rows']:,} samples up to {first['window_end']}"
        console.print(drift if view["drift"].height else "no evaluation yet: mlexec monitor run")
        health = Table(title="runtime health (latest)", title_justify="left")
        for col in ("site", "part", "measure", "value", "at"):
            health.add_column(col, justify="right" if col == "value" else "left")
        for row in view["health"].iter_rows(named=True):
            health.add_row(
                row["site"], row["part"], row["name"], f"{row['value']:.4g}", str(row["at"])
            )
        console.print(health if view["health"].height else "no runtime health reported yet")
        alerts = Table(title="alerts (latest 10)", title_justify="left")
        for col in ("time", "severity", "kind", "message"):
            alerts.add_column(col)
        for row in view["alerts"].iter_rows(named=True):
            sev = row["severity"]
            alerts.add_row(
                str(row["time"]), f"[{styles.get(sev, '')}]{sev}[/]", row["kind"], row["message"]
            )
        console.print(alerts if view["alerts"].height else "no alerts")


@monitor_app.command("reference")
def monitor_reference(
    topology: TopologyArg,
    usecase: Annotated[str, typer.Option("--usecase", "-u", help="The use case.")],
    data: Annotated[
        Path, typer.Option(help="Training data: Parquet or CSV with the watched columns.")
    ],
    version: Annotated[
        str | None, typer.Option(help="The model version it trained; default: model.version.")
    ] = None,
    site: MonitorSiteOpt = None,
) -> None:
    """Record a model version's training data as the reference ``kind: model`` names."""
    from mlexec.connectors.samplestore import open_store
    from mlexec.monitoring.monitor import Monitor, read_reference_file

    try:
        _, plan = _load(topology)
        where = _store_site(plan, site, usecase)
        uc = plan.usecases[usecase]
        name = f"model:{version or uc.usecase.model.version}"
        with open_store(plan.topology.sites[where].sample_store) as store:
            monitor = Monitor(plan, where, store, usecase=usecase, source=str(topology))
            monitor.prepare()
            rows = monitor.record_reference(uc, read_reference_file(str(data)), name)
    except MlexecError as exc:
        raise _fail(exc) from exc
    console.print(f"recorded {rows:,} rows of {data} as reference {name} of {usecase}")


@monitor_app.command("dashboard")
def monitor_dashboard(
    topology: TopologyArg,
    site: MonitorSiteOpt = None,
    port: Annotated[int, typer.Option(min=0, help="Port on 127.0.0.1 (0: a free one).")] = 8050,
    hours: Annotated[float, typer.Option(help="Hours of history to plot.")] = 24.0,
) -> None:
    """Serve the monitoring page on 127.0.0.1 until Ctrl-C (no internet needed)."""
    from mlexec.connectors.samplestore import open_store
    from mlexec.monitoring.dashboard import Dashboard, DashboardData

    try:
        _, plan = _load(topology)
        where = _store_site(plan, site, None)
        with open_store(plan.topology.sites[where].sample_store) as store:
            board = Dashboard(DashboardData(plan, where, store, hours), port)
            console.print(
                f"monitoring dashboard of site {where} at [bold]{board.url}[/]; Ctrl-C stops"
            )
            sys.stdout.flush()
            _until_interrupted(board.serve)
    except MlexecError as exc:
        raise _fail(exc) from exc


# ------------------------------------------------------------------ model life cycle

model_app = typer.Typer(
    help="Model versions on the registry (mlexec.models): publish, stages, rollback, compare.",
    no_args_is_help=True,
)
app.add_typer(model_app, name="model")

ModelUsecaseOpt = Annotated[str, typer.Option("--usecase", "-u", help="The use case.")]
RegistrySiteOpt = Annotated[
    str | None,
    typer.Option(
        "--site",
        "-s",
        help="The site whose registry to write; default: where models come down from to "
        "the use case's infer site (the cloud), or that site itself.",
    ),
]


def _registry(topology: Path, usecase: str, site: str | None):  # type: ignore[no-untyped-def]
    """(plan, use case plan, Kafka config) of the registry to use."""
    from mlexec.connectors.kafka import client_config

    _, plan = _load(topology)
    if usecase not in plan.usecases:
        msg = f"no use case {usecase!r}; use cases: {sorted(plan.usecases)}"
        raise TopologyError(msg)
    uc = plan.usecases[usecase]
    from mlexec.lifecycle.registry import registry_site

    site = site or registry_site(plan, uc)
    plan.require_site(site)
    return plan, uc, client_config(plan.topology.sites[site].kafka)


class Stage(StrEnum):
    """The stage ``mlexec model publish`` puts a version in."""

    candidate = "candidate"
    shadow = "shadow"
    canary = "canary"
    production = "production"


@model_app.command("publish")
def model_publish(
    topology: TopologyArg,
    model: Annotated[Path, typer.Argument(help="The ONNX file.", exists=True, dir_okay=False)],
    usecase: ModelUsecaseOpt,
    version: Annotated[str, typer.Option(help="The version it becomes (immutable).")],
    stage: Annotated[Stage, typer.Option(help="What it does once published.")] = Stage.candidate,
    traffic: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="A canary's share of the keys.")
    ] = 0.0,
    site: RegistrySiteOpt = None,
    training_data: Annotated[
        Path | None,
        typer.Option(
            help="Parquet/CSV it was trained on: recorded as the monitoring reference model:V "
            "in the use case's sample store.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Put a model version on the registry, checked against the use case, in chunks."""
    from mlexec.connectors.samplestore import open_store
    from mlexec.lifecycle.registry import publish_model
    from mlexec.monitoring.monitor import Monitor, read_reference_file

    try:
        plan, uc, conf = _registry(topology, usecase, site)
        frame = read_reference_file(str(training_data)) if training_data else None
        if frame is not None:
            watched = list(uc.usecase.monitoring.watch) if uc.usecase.monitoring else []
            missing = [c for c in watched if c not in frame.columns]
            if not watched or missing:
                msg = (
                    f"--training-data: {training_data} becomes the reference of the watched values "
                    f"({watched or 'none: declare monitoring.watch'}); missing columns: {missing}"
                )
                raise TopologyError(msg)
        manifest, routing = publish_model(plan, conf, uc, model, version, stage.value, traffic)
        if frame is not None:
            where = uc.site("store")
            with open_store(plan.topology.sites[where].sample_store) as store:
                monitor = Monitor(plan, where, store, usecase=usecase, source=str(topology))
                monitor.prepare()
                monitor.record_reference(uc, frame, f"model:{version}")
    except MlexecError as exc:
        raise _fail(exc) from exc
    console.print(
        f"published {usecase} version {version}: {manifest.size:,} bytes in {manifest.chunks} "
        f"chunk(s), sha256 {manifest.sha256[:16]}…; {routing.change}"
        + (f"; its training data is reference model:{version}" if training_data else ""),
        highlight=False,
    )


@model_app.command("list")
def model_list(
    topology: TopologyArg,
    usecase: Annotated[str | None, typer.Option("--usecase", "-u", help="Only this one.")] = None,
    site: RegistrySiteOpt = None,
) -> None:
    """The versions on the registry and what each does now."""
    from mlexec.lifecycle.registry import current_routing, read_registry

    try:
        _, plan = _load(topology)
        names = [usecase] if usecase else list(plan.usecases)
        listing = []
        for name in names:
            plan, uc, conf = _registry(topology, name, site)
            registry = read_registry(conf)
            listing.append((uc, registry, current_routing(registry, uc)))
    except MlexecError as exc:
        raise _fail(exc) from exc
    for uc, registry, routing in listing:
        table = Table(
            title=f"{uc.name}: {routing.change or 'the topology model serves'}",
            title_justify="left",
        )
        for col in ("version", "stage", "sha256", "bytes", "published"):
            table.add_column(col)
        versions = [m for (u, _), m in registry.manifests.items() if u == uc.name]
        if not any(m.version == uc.usecase.model.version for m in versions):
            table.add_row(
                uc.usecase.model.version,
                routing.stage_of(uc.usecase.model.version),
                "(topology file)",
                "",
                "",
            )
        for m in sorted(versions, key=lambda m: m.published_at):
            published = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m.published_at / 1000))
            table.add_row(
                m.version, routing.stage_of(m.version), m.sha256[:16], f"{m.size:,}", published
            )
        console.print(table)


def _change(topology: Path, usecase: str, site: str | None, change):  # type: ignore[no-untyped-def]
    from mlexec.lifecycle.registry import change_routing

    try:
        _, uc, conf = _registry(topology, usecase, site)
        routing = change_routing(conf, uc, change)
    except MlexecError as exc:
        raise _fail(exc) from exc
    console.print(f"{usecase}: {routing.change}", highlight=False)


VersionOpt = Annotated[str, typer.Option(help="The version.")]


@model_app.command("promote")
def model_promote(
    topology: TopologyArg,
    usecase: ModelUsecaseOpt,
    version: VersionOpt,
    site: RegistrySiteOpt = None,
) -> None:
    """Make a version serve production; the one before can be rolled back to."""
    _change(topology, usecase, site, lambda r: r.promote(version))


@model_app.command("stage")
def model_stage(
    topology: TopologyArg,
    usecase: ModelUsecaseOpt,
    version: VersionOpt,
    stage: Annotated[Stage, typer.Option(help="What it does from now on.")],
    traffic: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="A canary's share of the keys.")
    ] = 0.0,
    site: RegistrySiteOpt = None,
) -> None:
    """Move a published version to a stage: a candidate to shadow or canary, and so on."""
    _change(topology, usecase, site, lambda r: r.publish(version, stage.value, traffic))


@model_app.command("rollback")
def model_rollback(
    topology: TopologyArg, usecase: ModelUsecaseOpt, site: RegistrySiteOpt = None
) -> None:
    """Serve the previous production version again (and end any canary)."""
    _change(topology, usecase, site, lambda r: r.rollback())


@model_app.command("retire")
def model_retire(
    topology: TopologyArg,
    usecase: ModelUsecaseOpt,
    version: VersionOpt,
    site: RegistrySiteOpt = None,
) -> None:
    """Stop a version serving (shadow, canary or A/B); production is promoted away first."""
    _change(topology, usecase, site, lambda r: r.retire(version))


@model_app.command("split")
def model_split(
    topology: TopologyArg,
    usecase: ModelUsecaseOpt,
    variants: Annotated[list[str], typer.Argument(help="NAME=VERSION:SHARE, e.g. A=3:0.5 B=4:0.5")],
    site: RegistrySiteOpt = None,
) -> None:
    """A/B test: split the keys between named variants (the rest stays on production)."""
    parsed = []
    for text in variants:
        name, _, rest = text.partition("=")
        version, _, share = rest.rpartition(":")
        try:
            parsed.append((name, version, float(share)))
        except ValueError:
            raise _fail(TopologyError(f"a variant NAME=VERSION:SHARE, found {text!r}")) from None
    _change(topology, usecase, site, lambda r: r.split(parsed))


@model_app.command("compare")
def model_compare(
    topology: TopologyArg,
    usecase: ModelUsecaseOpt,
    window: Annotated[
        str, typer.Option(help="How far back from the newest sample, e.g. 1h.")
    ] = "1h",
) -> None:
    """Per version and variant: samples, latency, distance to production's predictions, error."""
    from datetime import timedelta

    from mlexec.connectors.samplestore import open_store
    from mlexec.lifecycle.policy import compare
    from mlexec.topologies.schema import parse_duration

    try:
        _, plan = _load(topology)
        uc = plan.usecases.get(usecase)
        if uc is None:
            msg = f"no use case {usecase!r}; use cases: {sorted(plan.usecases)}"
            raise TopologyError(msg)
        span = parse_duration(window)
        assert isinstance(span, timedelta)
        with open_store(plan.topology.sites[uc.site("store")].sample_store) as store:
            newest = store.query(
                f"SELECT max(event_time) AS t FROM `{store.database}`.`{uc.table}`"
            )["t"][0]
            if newest is None:
                msg = f"{usecase} has no samples yet"
                raise TopologyError(msg)
            table = compare(store, uc, newest - span, newest + timedelta(milliseconds=1))
    except (MlexecError, ValueError) as exc:
        raise _fail(exc) from exc
    view = Table(
        title=f"{usecase}: versions over the last {window} of samples", title_justify="left"
    )
    for col in table.columns:
        view.add_column(col, justify="left" if col in ("version", "variant") else "right")
    for row in table.iter_rows():
        view.add_row(
            *("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row)
        )
    console.print(view)


@app.command()
def train(
    topology: TopologyArg,
    usecase: ModelUsecaseOpt,
    version: Annotated[str | None, typer.Option(help="Default: the next number.")] = None,
) -> None:
    """Train a new version on the labelled samples; publish it when it beats production."""
    from mlexec.connectors.samplestore import open_store
    from mlexec.lifecycle.training import train as train_version
    from mlexec.monitoring.monitor import Monitor

    try:
        plan, uc, conf = _registry(topology, usecase, None)
        site = uc.site("store")
        with open_store(plan.topology.sites[site].sample_store) as store:
            monitor = Monitor(plan, site, store, usecase=usecase, source=str(topology))
            monitor.prepare()
            monitor.ingest()  # the labels that arrived since the last round
            watched = set(uc.usecase.monitoring.watch) if uc.usecase.monitoring else set()
            recorder = monitor.record_reference if watched and watched <= set(uc.features) else None
            done = train_version(
                plan, site, store, conf, uc, version=version, record_reference=recorder
            )
    except MlexecError as exc:
        raise _fail(exc) from exc
    console.print(
        f"trained {usecase} version {done.version} on {done.rows:,} labelled samples; on the "
        f"{done.holdout:,} latest held out: {done.metric} {done.candidate_error:.4g} against "
        f"production {done.production_version}'s {done.production_error:.4g}; {done.change}",
        highlight=False,
    )


def main() -> None:
    """Console-script entry point."""
    die_with_parent()
    logging.basicConfig(
        level=os.environ.get("MLEXEC_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_MaskSecrets())
    app()


class _MaskSecrets(logging.Filter):
    """No log line carries a URL's password, whoever wrote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = mask_text(text)
        if masked != text:
            record.msg, record.args = masked, None
        return True


if __name__ == "__main__":
    main()
