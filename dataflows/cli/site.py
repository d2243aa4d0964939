"""Commands that run a site's parts: ``run``, ``connect``, ``act``, ``mirror``, ``up``, ``status``, ``reset``."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mlexec.cli.app import (
    EXIT_INTERRUPTED,
    JsonOpt,
    MetricsPortOpt,
    Part,
    SiteOpt,
    TopologyArg,
    app,
    console,
    one_site,
    print_connectors,
    print_json,
    print_outputs,
)
from mlexec.cli.progress import until_end_progress
from mlexec.errors import TopologyError
from mlexec.runtime.cluster import cluster_from
from mlexec.runtime.part import PartSpec, exit_on, prepare_part, run_until_stopped
from mlexec.runtime.site import Site
from mlexec.topologies.secrets import mask_url

__all__ = ["act", "connect", "mirror", "reset", "run", "status", "up"]

UsecasePartOpt = Annotated[
    str | None, typer.Option("--usecase", "-u", help="Run only this use case's part.")
]


@app.command()
def run(
    topology: TopologyArg,
    site: SiteOpt = None,
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
    process_id: Annotated[
        int | None,
        typer.Option(
            "--process-id",
            "-i",
            min=0,
            help="--part pipeline as process N of a bytewax cluster (or BYTEWAX_PROCESS_ID, "
            "or the pod ordinal of BYTEWAX_POD_NAME and BYTEWAX_STATEFULSET_NAME).",
        ),
    ] = None,
    addresses: Annotated[
        str | None,
        typer.Option(
            "--addresses",
            "-a",
            help="The cluster's processes as host:port;host:port;… in process order (or "
            "BYTEWAX_ADDRESSES, or a file of them, BYTEWAX_HOSTFILE_PATH).",
        ),
    ] = None,
) -> None:
    """Run a site's dataflows: the pipelines of the use cases placed there, and the store.

    Continuously, the store runs as a second process (the one owner of an embedded
    chDB store); with --until-end the pipelines run to the end first, then the store.
    With --process-id and --addresses the pipeline is one process of a bytewax cluster,
    each process reading its share of the input partitions.
    """
    cluster = cluster_from(process_id, addresses)
    if cluster is not None and part is not Part.pipeline:
        msg = (
            "--process-id/--addresses (or BYTEWAX_* in the environment): a cluster runs the "
            f"pipeline only, so --part pipeline, found --part {part.value}"
        )
        raise TopologyError(msg)
    site = one_site(topology, site)
    the_site = Site.load(topology, site)
    _banner(the_site, part.value, usecase, until_end)
    if until_end and part is Part.all:
        exit_on(signal.SIGINT, signal.SIGTERM)
        with until_end_progress(console, the_site.plan, site, usecase):
            the_site.run_to_end(usecase=usecase, workers=workers, recovery=not no_recovery)
        _summary(the_site, usecase)
        return
    try:
        the_site.run(
            part.value,  # type: ignore[arg-type]
            usecase=usecase,
            until_end=until_end,
            workers=workers,
            recovery=not no_recovery,
            metrics_port=metrics_port,
            health_every=health_every,
            monitor=monitor,
            dashboard_port=dashboard_port,
            cluster=cluster,
        )
    finally:
        if part is not Part.store:
            _summary(the_site, usecase)


def _banner(the_site: Site, part: str, usecase: str | None, until_end: bool) -> None:
    """What runs where: the use cases' pipelines and stores on this site, and until when."""
    plan, name = the_site.plan, the_site.name
    chosen = [uc for uc in plan.usecases_at(name) if usecase in (None, uc.name)]
    piped = [
        f"{uc.name} ({uc.read_name(uc.raw_topic, 'connectors', 'dispatch')} → {uc.predictions_topic})"
        for uc in chosen
        if name in (uc.site("dispatch"), uc.site("infer"))
    ]
    stored = [uc.name for uc in chosen if uc.site("store") == name]
    parts = []
    if part in ("all", "pipeline") and piped:
        parts.append(f"pipeline of {', '.join(piped)}")
    if part in ("all", "store") and stored:
        parts.append(
            f"store of {', '.join(stored)} in {mask_url(plan.topology.sites[name].sample_store)}"
        )
    until = "to the end of their input" if until_end else "until Ctrl-C"
    console.print(
        f"site [bold]{name}[/]: {'; '.join(parts) or 'nothing placed here'} — {until}",
        highlight=False,
    )


def _summary(the_site: Site, usecase: str | None) -> None:
    """What this process did, per use case: records read, predictions, dead letters, samples."""
    from mlexec.runtime.health import RuntimeHealth

    values = RuntimeHealth(the_site.plan, the_site.name, "pipeline").values()
    names = sorted({uc for uc, _ in values if usecase in (None, uc)})
    for uc in names:
        got = {measure: int(v) for (u, measure), v in values.items() if u == uc}
        console.print(
            f"{uc}: {got.get('records_in', 0):,} records read, {got.get('predictions', 0):,} "
            f"predictions, {got.get('deadletters', 0):,} dead letters, "
            f"{got.get('samples', 0):,} samples",
            highlight=False,
        )


def _part_banner(spec: PartSpec, statuses: list[Any]) -> None:
    """What a connect or act part runs: each connector (output) and where it goes."""
    items = []
    for st in statuses:
        if hasattr(st, "connector"):
            items.append(f"{st.usecase}/{st.connector} ({st.kind} {mask_url(st.origin)})")
        elif hasattr(st, "output"):
            items.append(f"{st.usecase}/{st.output} ({st.kind} → {mask_url(st.target)})")
    if not items:
        return
    until = "once" if spec.once else "until Ctrl-C"
    what = (
        "connectors" if spec.part == "connect" else "outputs" if spec.part == "act" else spec.part
    )
    console.print(
        f"site [bold]{spec.site}[/]: {what} {', '.join(items)} — {until}", highlight=False
    )


def _run_part(spec: PartSpec, show: str) -> None:
    """Run a connect, act or mirror part in the foreground; its counts at the end."""
    prepared = prepare_part(spec)
    _part_banner(spec, prepared.statuses)
    try:
        received = run_until_stopped(prepared.run)
    finally:
        (print_connectors if show == "connectors" else print_outputs)(prepared.statuses)
    if received == signal.SIGINT:  # SIGTERM is a requested stop (0); Ctrl-C is 130
        raise typer.Exit(EXIT_INTERRUPTED)


@app.command()
def connect(
    topology: TopologyArg,
    site: SiteOpt = None,
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
    site = one_site(topology, site)
    spec = PartSpec(
        "connect", str(topology), site, usecase=usecase, once=once, metrics_port=metrics_port
    )
    _run_part(spec, "connectors")


@app.command()
def act(
    topology: TopologyArg,
    site: SiteOpt = None,
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
    site = one_site(topology, site)
    spec = PartSpec(
        "act", str(topology), site, usecase=usecase, once=once, metrics_port=metrics_port
    )
    _run_part(spec, "outputs")


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
    source = link.split(":", 1)[0]
    spec = PartSpec(
        "mirror", str(topology), source, link=link, once=once, metrics_port=metrics_port
    )
    _run_part(spec, "connectors")


@app.command()
def up(
    topology: TopologyArg,
    site: SiteOpt = None,
    dashboard_port: Annotated[
        int | None,
        typer.Option(help="Serve the monitoring dashboard from the store process on this port."),
    ] = None,
) -> None:
    """Start and supervise a site: connectors, pipeline, store, outputs and mirror links.

    A process that exits is restarted with backoff and resumes from its recovery
    state or checkpoint; with a scale policy the pipeline gets more or fewer workers as
    its lag demands. SIGTERM or Ctrl-C stops every process gracefully. While the site
    runs, `query`, `monitor` and `model compare` on its embedded store go through the
    store process.
    """
    site = one_site(topology, site)
    the_site = Site.load(topology, site)
    # everything checked (models loaded, nothing of the site running) before anything
    # starts; then the lock goes back and this process becomes the small supervisor
    the_site.supervisor(dashboard_port=dashboard_port)
    the_site.stop()
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-m", "mlexec.runtime.supervise", the_site.topology, site]
    os.execv(sys.executable, [*argv, str(dashboard_port or "")])  # noqa: S606 (the same argv, no shell)


@app.command()
def status(topology: TopologyArg, site: SiteOpt = None, json_out: JsonOpt = False) -> None:
    """Show a site's supervised processes, the pipeline's lag and throughput, restarts."""
    site = one_site(topology, site)
    found = Site.load(topology, site).status()
    if json_out:
        print_json(dataclasses.asdict(found))
        return
    table = Table(title=f"site {site} (status written {found.age:.0f}s ago)", title_justify="left")
    for col in ("process", "pid", "state", "restarts", "last exit", "workers"):
        table.add_column(col)
    for part in found.parts:
        table.add_row(
            part["name"],
            str(part["pid"] or ""),
            part["state"],
            str(part["restarts"]),
            "" if part["last_exit"] is None else str(part["last_exit"]),
            "" if part["workers"] is None else str(part["workers"]),
        )
    console.print(table)
    if not found.supervised:
        console.print("the supervisor (`mlexec up`) is not running: the states above are its last")
    for what, problem in found.problems.items():
        text = problem if what == "disk" else f"{what}: {problem}"
        console.print(f"[bold red]problem:[/] {escape(text)}", highlight=False, soft_wrap=True)
    if found.stalled is not None:
        waiting, seconds = found.stalled
        console.print(
            f"[bold red]problem:[/] the pipeline processed nothing for {seconds:.0f}s while "
            f"{waiting:,} records waited (stalled: see its log; a topic of many tiny batches "
            "on the embedded broker is a known cause, docs/reliability.md)",
            highlight=False,
        )
    rate = f", {found.rate:,.0f} records/s" if found.rate is not None else ""
    lag, backlog = found.lag, found.backlog
    if isinstance(lag, str):
        console.print(f"pipeline: lag {lag}", highlight=False, soft_wrap=True, markup=False)
    elif lag is not None:
        console.print(f"pipeline: {lag[0]:,} records behind, {lag[1]:,} processed{rate}")
    elif "pipeline" in {p["name"] for p in found.parts}:
        console.print("pipeline: lag unknown until its first snapshot (no records processed yet)")
    if isinstance(backlog, str):
        console.print(f"store: backlog {backlog}", highlight=False, soft_wrap=True, markup=False)
    elif backlog is not None:
        console.print(
            f"store: {backlog[0]:,} samples waiting in Kafka, {backlog[1]:,} read by the store "
            "(stored, or held in its recovery state for a retry)"
        )


@app.command()
def reset(
    topology: TopologyArg,
    site: SiteOpt = None,
    part: Annotated[
        Part, typer.Option(help="all; or only the pipeline's or the store's recovery.")
    ] = Part.all,
) -> None:
    """Forget a site's dataflow recovery state on purpose: the next run starts over.

    Refused while any part of the site runs. Connector checkpoints, the model cache and
    the sample store are kept; the dataflows read their topics again from the beginning
    (the store de-duplicates samples by record id).
    """
    site = one_site(topology, site)
    removed = Site.load(topology, site).reset(part.value)  # type: ignore[arg-type]
    if removed:
        console.print("removed the recovery state " + ", ".join(removed), highlight=False)
    else:
        console.print(f"site {site!r} has no recovery state to reset", highlight=False)
