"""``mlexec fleet status``: every member of a fleet as the cloud last heard of it."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.table import Table

from mlexec.cli.app import JsonOpt, TopologyArg, app, console, load, print_json
from mlexec.errors import TopologyError

fleet_app = typer.Typer(
    help="Fleets: a site template run on many members, watched from the cloud.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(fleet_app, name="fleet")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


@fleet_app.command("status")
def status(
    topology: TopologyArg,
    fleet: Annotated[
        str | None, typer.Option("--fleet", "-f", help="The fleet (default: the only one).")
    ] = None,
    offline_after: Annotated[
        float,
        typer.Option(help="Seconds without a health report after which a member is offline."),
    ] = 60.0,
    json_out: JsonOpt = False,
) -> None:
    """List a fleet's members: online or offline, lag, rate, dead letters, what each serves.

    What a member serves is the topology it runs (current, or another) and the model
    versions of each use case. Read from the cloud's store (the fleet's link target), where every member's runtime
    health arrives on its mirrored mlexec.metrics; a member never heard from is
    "never seen".
    """
    from mlexec.connectors.samplestore import open_store
    from mlexec.monitoring.columns import now_utc
    from mlexec.monitoring.fleet import fleet_status

    topo, plan = load(topology)
    if fleet is None:
        if len(topo.fleets) != 1:
            msg = f"{topology}: fleets: name one with --fleet, of {sorted(topo.fleets) or 'none'}"
            raise TopologyError(msg)
        fleet = next(iter(topo.fleets))
    if fleet not in topo.fleets:
        msg = f"{topology}: no fleet {fleet!r}; fleets: {sorted(topo.fleets) or 'none'}"
        raise TopologyError(msg)
    declared = topo.fleets[fleet]
    if declared.link is None:
        msg = f"{topology}: fleets.{fleet}.link: the site its members report to, found none"
        raise TopologyError(msg)
    cloud = declared.link.target
    now = now_utc()
    with open_store(topo.sites[cloud].sample_store) as store:
        members = fleet_status(store, declared.names, now, timedelta(seconds=offline_after))
    if json_out:
        print_json(
            {
                "fleet": fleet,
                "cloud": cloud,
                "members": [
                    {
                        "member": m.member,
                        "state": m.state,
                        "last_seen": m.last_seen.isoformat() if m.last_seen else None,
                        "lag": m.lag,
                        "records_per_s": m.records_per_s,
                        "deadletter_rate": m.deadletter_rate,
                        "topology": m.topology,
                        "current_topology": m.topology == plan.digest if m.topology else None,
                        "models": m.models,
                    }
                    for m in members
                ],
            }
        )
        return
    counts = {s: sum(m.state == s for m in members) for s in ("online", "offline", "never seen")}
    console.print(
        f"fleet [bold]{fleet}[/] ({len(members)} members, seen from {cloud}): "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    )
    table = Table()
    columns = ("member", "state", "last seen", "lag", "records/s", "dead-letter rate")
    for col in (*columns, "topology", "serves"):
        table.add_column(col)
    for m in members:
        table.add_row(
            m.member,
            m.state,
            _ago((now - m.last_seen).total_seconds()) if m.last_seen else "-",
            f"{m.lag:,.0f}" if m.lag is not None else "-",
            f"{m.records_per_s:,.1f}" if m.records_per_s is not None else "-",
            f"{m.deadletter_rate:.2%}" if m.deadletter_rate is not None else "-",
            "-"
            if m.topology is None
            else ("current" if m.topology == plan.digest else f"other ({m.topology})"),
            m.serves() or "-",
        )
    console.print(table)
