"""``mlexec fleet status|publish`` and ``mlexec follow``: a fleet seen, fed and followed from the cloud."""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path
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
                        "link_backlog": m.link_backlog,
                        "desired": m.desired,
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
    columns = (
        "member",
        "state",
        "last seen",
        "lag",
        "link backlog",
        "records/s",
        "dead-letter rate",
    )
    followed = any(m.desired for m in members)  # members run by `mlexec follow`
    for col in (*columns, "topology", "serves", *(["desired state"] if followed else [])):
        table.add_column(col)
    for m in members:
        table.add_row(
            m.member,
            m.state,
            _ago((now - m.last_seen).total_seconds()) if m.last_seen else "-",
            f"{m.lag:,.0f}" if m.lag is not None else "-",
            f"{m.link_backlog:,.0f}" if m.link_backlog is not None else "-",
            f"{m.records_per_s:,.1f}" if m.records_per_s is not None else "-",
            f"{m.deadletter_rate:.2%}" if m.deadletter_rate is not None else "-",
            "-"
            if m.topology is None
            else ("current" if m.topology == plan.digest else f"other ({m.topology})"),
            m.serves() or "-",
            *([m.desired or "-"] if followed else []),
        )
    console.print(table)


@fleet_app.command("publish")
def publish(
    topology: TopologyArg,
    site: Annotated[
        str | None,
        typer.Option(
            help="The site whose registry the members follow (default: the fleets' link target)."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Publish without checking it here as a member would (they still do)."
        ),
    ] = False,
) -> None:
    """Publish the topology and every file it names (models, packages, inventories) for its members.

    Members started with `mlexec follow` apply it — restarting only the parts it
    changes — or refuse it and keep the last good version. Before publishing, the
    topology is checked here as its first fleet member would check it (models and
    reduction packages load); --force skips that.
    """
    from mlexec.connectors.kafka import client_config
    from mlexec.lifecycle.desired import publish_desired
    from mlexec.runtime.follow import check_bundle

    topo, plan = load(topology)
    if site is None:
        targets = {f.link.target for f in topo.fleets.values() if f.link is not None}
        if len(targets) != 1:
            msg = f"{topology}: name the site whose registry members follow (--site), of {sorted(topo.sites)}"
            raise TopologyError(msg)
        site = next(iter(targets))
    plan.require_site(site)
    if not force:
        example = next((m for f in topo.fleets.values() for m in f.names), None)
        if example is not None:
            reason = check_bundle(topology, example, dict(os.environ))
            if reason is not None:
                msg = f"{topology}: not published: member {example} could not run it: {reason}"
                raise TopologyError(msg)
    desired = publish_desired(plan, topology, client_config(topo.sites[site].kafka))
    console.print(
        f"published {desired.topology} v{desired.version} ({desired.digest[:12]}, "
        f"{len(desired.files)} files) on {site}'s registry",
        highlight=False,
    )


@app.command()
def follow(
    member: Annotated[str, typer.Option("--site", "-s", help="This member's name.")],
    cloud: Annotated[
        str, typer.Option(help="The cloud's Kafka bootstrap (host:port), where the registry is.")
    ],
    state_dir: Annotated[
        Path, typer.Option(help="Where this member keeps its state, bundles and packages.")
    ] = Path("state"),
    topology_name: Annotated[
        str | None,
        typer.Option("--topology", help="Follow this topology (when several declare the member)."),
    ] = None,
    security: Annotated[
        str,
        typer.Option(help="plaintext, ssl, sasl_plaintext or sasl_ssl, towards the cloud."),
    ] = "plaintext",
    ca: Annotated[str | None, typer.Option(help="CA file of the cloud's TLS.")] = None,
    user: Annotated[
        str | None,
        typer.Option(help="SASL user; the password is read from MLEXEC_CLOUD_PASSWORD."),
    ] = None,
    poll: Annotated[float, typer.Option(min=0.1, help="Seconds between registry reads.")] = 2.0,
) -> None:
    """Run a fleet member from the cloud's desired state: apply new versions, refuse broken ones.

    Needs only the member's name and its cloud link: the topology, models and
    reduction packages come from the cloud's registry (`mlexec fleet publish`). A
    version that does not check out on this member is refused and reported; the last
    good one keeps serving, also after a restart without the cloud.
    """
    from pydantic import ValidationError

    from mlexec.runtime.follow import Follower
    from mlexec.runtime.part import run_until_stopped
    from mlexec.topologies.schema import KafkaSettings

    settings: dict[str, object] = {"bootstrap": cloud, "security": {"protocol": security, "ca": ca}}
    if user is not None:
        sasl = {
            "mechanism": "PLAIN",
            "username": user,
            "password": os.environ.get("MLEXEC_CLOUD_PASSWORD", ""),
        }
        settings["security"] = {**settings["security"], "sasl": sasl}  # type: ignore[dict-item]
    try:
        link = KafkaSettings.model_validate(settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = f"--cloud/--security/--ca/--user: {first['msg']}"
        raise TopologyError(msg) from None
    follower = Follower(member, link, state_dir, topology=topology_name, poll=poll)
    console.print(f"member {member}: following the registry at {cloud}", highlight=False)
    received = run_until_stopped(follower.run)
    if received == signal.SIGINT:
        raise typer.Exit(130)
