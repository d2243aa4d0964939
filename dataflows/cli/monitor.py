"""``mlexec monitor``: run, show, record references, serve the dashboard."""

from __future__ import annotations

import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from mlexec.errors import MlexecError, TopologyError
from mlexec.monitoring.alerts import standing_at
from mlexec.monitoring.columns import now_utc

if TYPE_CHECKING:
    from collections.abc import Callable

from mlexec.cli.app import (
    JsonOpt,
    TopologyArg,
    app,
    console,
    interrupt_on,
    load,
    print_json,
)

monitor_app = typer.Typer(
    help="Drift, data quality, accuracy and runtime health of a site's use cases.",
    no_args_is_help=True,
    rich_markup_mode=None,
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


class FailOn(StrEnum):
    """The severity from which ``monitor run --once --fail-on`` exits 1."""

    warning = "warning"
    critical = "critical"


@monitor_app.command("run")
def monitor_run(
    topology: TopologyArg,
    site: MonitorSiteOpt = None,
    usecase: UsecaseOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Evaluate once and exit.")] = False,
    fail_on: Annotated[
        FailOn | None,
        typer.Option(
            help="With --once: exit 1 when a watched value stands at this severity or above "
            "(whether or not it is a new alert), for a CI gate or a cron job."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Evaluate a past event-time range from here (ISO 8601; UTC unless a zone is "
            "given), in windows as it would have been live, then exit.",
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="The range's end (default: now).")
    ] = None,
    every: Annotated[
        str | None,
        typer.Option(help="With --from: a window ends every this long (default monitoring.every)."),
    ] = None,
) -> None:
    """Store labels and health, evaluate drift, quality, accuracy and health; alert on changes.

    Runs every monitoring.every until Ctrl-C, or once, or over a past range (--from/--to).
    While a site's store runs, an embedded (chDB) store is reached through it.
    """
    from mlexec.connectors.samplestore import open_store
    from mlexec.lifecycle.reaction import follow
    from mlexec.monitoring.monitor import Monitor

    _, plan = load(topology)
    where = _store_site(plan, site, usecase)
    with open_store(plan.topology.sites[where].sample_store) as store:
        monitor = follow(Monitor(plan, where, store, usecase=usecase, source=str(topology)))
        monitor.prepare()
        if since is not None:
            start = _moment("--from", since)
            end = _moment("--to", until) if until else now_utc()
            if end <= start:
                msg = f"--to {end:%Y-%m-%d %H:%M} is not after --from {start:%Y-%m-%d %H:%M}"
                raise TopologyError(msg)
            evaluations = monitor.replay(start, end, _step(every))
            for ev in evaluations:
                _print_evaluation(ev)
            _fail_on(evaluations, fail_on)
            return
        if once:
            evaluations = monitor.run_once()
            for ev in evaluations:
                _print_evaluation(ev)
            _fail_on(evaluations, fail_on)
            return
        console.print(f"monitoring site {where} every {monitor.every():g}s; Ctrl-C stops")
        _until_interrupted(monitor.run)


def _fail_on(evaluations: list[Any], fail_on: FailOn | None) -> None:
    """Exit 1 (a runtime failure) when a watched value stands at ``fail_on`` or above."""
    if fail_on is None:
        return
    standing = standing_at(evaluations, fail_on.value)
    if standing:
        msg = f"{len(standing)} watched value(s) at {fail_on.value} or above: " + "; ".join(
            standing[:5]
        )
        raise MlexecError(msg)


def _moment(flag: str, text: str) -> datetime:
    """An ISO 8601 time from the command line; UTC unless it names a zone."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        msg = (
            f"{flag}: an ISO 8601 time like 2025-03-01 or 2025-03-01T08:00:00+01:00, found {text!r}"
        )
        raise TopologyError(msg) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _step(every: str | None) -> timedelta | None:
    if every is None:
        return None
    from mlexec.topologies.schema import parse_duration

    try:
        step = parse_duration(every)
    except ValueError as exc:
        msg = f"--every: {exc}"
        raise TopologyError(msg) from None
    if not isinstance(step, timedelta) or step <= timedelta(0):
        msg = f"--every: a positive duration like 10m or 1h, found {every!r}"
        raise TopologyError(msg)
    return step


def _until_interrupted(serve: Callable[[threading.Event], None]) -> None:
    """Run ``serve(stop)`` in the foreground until SIGINT or SIGTERM sets ``stop``."""
    stop = threading.Event()
    interrupt_on(signal.SIGINT, signal.SIGTERM)
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
    topology: TopologyArg,
    usecase: UsecaseOpt = None,
    site: MonitorSiteOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The latest evaluation, runtime health and alerts of the site's monitored use cases."""
    from mlexec.connectors.samplestore import open_store
    from mlexec.monitoring.monitor import latest

    _, plan = load(topology)
    where = _store_site(plan, site, usecase)
    chosen = [uc for uc in plan.chosen_at(where, usecase, stage="store")]
    with open_store(plan.topology.sites[where].sample_store) as store:
        views = {uc.name: latest(store, uc) for uc in chosen}
    if json_out:
        print_json(
            {name: {k: f.to_dicts() for k, f in view.items()} for name, view in views.items()}
        )
        return
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
        if view["performance"].height:
            console.print(_performance(view["performance"], styles))
        if view["segments"].height:
            console.print(_segments(view["segments"], styles))
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
    """Record a model version's training data as the reference that kind: model names."""
    from mlexec.connectors.samplestore import open_store
    from mlexec.monitoring.monitor import Monitor, read_reference_file

    _, plan = load(topology)
    where = _store_site(plan, site, usecase)
    uc = plan.usecases[usecase]
    name = f"model:{version or uc.usecase.model.version}"
    with open_store(plan.topology.sites[where].sample_store) as store:
        monitor = Monitor(plan, where, store, usecase=usecase, source=str(topology))
        monitor.prepare()
        rows = monitor.record_reference(uc, read_reference_file(str(data)), name)
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

    _, plan = load(topology)
    where = _store_site(plan, site, None)
    with open_store(plan.topology.sites[where].sample_store) as store:
        board = Dashboard(DashboardData(plan, where, store, hours), port)
        console.print(f"monitoring dashboard of site {where} at [bold]{board.url}[/]; Ctrl-C stops")
        sys.stdout.flush()
        _until_interrupted(board.serve)


def _performance(frame: Any, styles: dict[str, str]) -> Table:
    """Per version/variant: the realized metric (labels) beside the estimated ones (CBPE)."""
    table = Table(
        title="model performance (latest evaluation): realized from labels, estimated before them",
        title_justify="left",
    )
    for col in ("version/variant", "metric", "value ", "severity"):
        table.add_column(col.strip(), justify="right" if col == "value " else "left")
    for row in frame.iter_rows(named=True):
        sev = row["severity"]
        stat = row["statistic"]
        table.add_row(
            row["subject"],
            stat.replace("estimated_", "estimated ") if stat.startswith("estimated_") else stat,
            f"{row['value']:.4g}",
            f"[{styles.get(sev, '')}]{sev}[/]" if sev else "ok",
        )
    return table


def _segments(frame: Any, styles: dict[str, str]) -> Table:
    """The segments farthest past their thresholds (value ÷ threshold, highest first)."""
    table = Table(title="top drifting segments (latest evaluation)", title_justify="left")
    for col in ("segment", "subject", "statistic", "value ", "of threshold ", "severity"):
        table.add_column(col.strip(), justify="right" if col.endswith(" ") else "left")
    for row in frame.iter_rows(named=True):
        sev = row["severity"]
        table.add_row(
            row["segment"],
            row["column"],
            row["statistic"],
            f"{row['value']:.4g}",
            f"{row['of_threshold']:.2f}×",
            f"[{styles.get(sev, '')}]{sev}[/]" if sev else "ok",
        )
    return table
