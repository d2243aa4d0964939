"""``mlexec model rollout | pin | fleet-status``: a version brought to a fleet in waves."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.table import Table

from mlexec.cli.app import JsonOpt, TopologyArg, console, print_json
from mlexec.cli.model import ModelUsecaseOpt, RegistrySiteOpt, _registry, model_app
from mlexec.errors import TopologyError

__all__ = ["parse_wave"]


def parse_wave(text: str):  # type: ignore[no-untyped-def]
    """``0.25`` or ``25%`` (a share of the members), or ``ring=canary,region=eu`` (labels)."""
    from mlexec.topologies.schema.fleets import Wave

    text = text.strip()
    if "=" in text:
        pairs = [p.partition("=") for p in text.split(",") if p.strip()]
        if any(not k.strip() or not v.strip() for k, _, v in pairs):
            msg = f"--wave {text!r}: labels as key=value[,key=value], or a share (0.25, 25%)"
            raise TopologyError(msg)
        return Wave(labels={k.strip(): v.strip() for k, _, v in pairs})
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        msg = f"--wave {text!r}: a share of the members (0.25, 25%) or labels (ring=canary)"
        raise TopologyError(msg) from None
    if not 0.0 < share <= 1.0:
        msg = f"--wave {text!r}: a share above 0 and at most 1 (100%)"
        raise TopologyError(msg)
    return Wave(share=share)


@model_app.command("rollout")
def model_rollout(
    topology: TopologyArg,
    usecase: ModelUsecaseOpt,
    version: Annotated[
        str | None, typer.Option(help="The published version to bring to the fleet.")
    ] = None,
    wave: Annotated[
        list[str] | None,
        typer.Option(
            help="A wave, in order (repeat): a share of the members (0.25, 25%) or labels "
            "(region=eu); default: the fleet's rollout.waves.",
        ),
    ] = None,
    soak: Annotated[
        str | None,
        typer.Option(help="How long each wave soaks (30m); default: the fleet's rollout.soak."),
    ] = None,
    halt: Annotated[bool, typer.Option("--halt", help="Stop the rollout where it is.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Go on with a halted rollout: its wave soaks again.")
    ] = False,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Roll back every member the rollout reached.")
    ] = False,
    site: RegistrySiteOpt = None,
) -> None:
    """Bring a version to a fleet in waves; the cloud's monitor advances or rolls them back.

    Each wave serves the version for the soak time; while its monitoring stays clean
    (no alert of the use case, predictions close to the version before's, errors no
    higher where labels exist) the next wave follows, else every member reached goes
    back to what it served. Pinned members are left alone (mlexec model pin).
    """
    from mlexec.lifecycle.rollout import halt_rollout, resume_rollout, start_rollout
    from mlexec.topologies.schema.common import parse_duration

    plan, uc, conf = _registry(topology, usecase, site)
    if halt or rollback or resume:
        if version is not None or halt + rollback + resume != 1:
            msg = "--halt, --resume or --rollback, alone: they act on the rollout in progress"
            raise TopologyError(msg)
        if resume:
            done = resume_rollout(conf, uc)
        else:
            done = halt_rollout(conf, uc, roll_back=rollback)
        console.print(f"{usecase}: rollout of {done.version}: {done.message}", highlight=False)
        return
    if version is None:
        msg = "--version: the published version to roll out (or --halt / --resume / --rollback)"
        raise TopologyError(msg)
    waves = [parse_wave(w) for w in wave] if wave else None
    soak_s = None
    if soak is not None:
        parsed = parse_duration(soak)
        if not isinstance(parsed, timedelta):
            msg = f"--soak {soak!r}: a duration such as 30m, 2h or 90s"
            raise TopologyError(msg)
        soak_s = parsed.total_seconds()
    rollout = start_rollout(plan, conf, uc, version, waves=waves, soak_s=soak_s)
    sizes = ", ".join(str(len(w)) for w in rollout.waves)
    console.print(
        f"{usecase}: rollout of {version} to fleet {rollout.fleet} in {len(rollout.waves)} "
        f"wave(s) of {sizes} member(s), {rollout.soak_s:g} s soak each; {rollout.message}",
        highlight=False,
    )


@model_app.command("pin")
def model_pin(
    topology: TopologyArg,
    usecase: ModelUsecaseOpt,
    member: Annotated[str, typer.Option(help="The fleet member.")],
    version: Annotated[
        str | None, typer.Option(help="The version it keeps serving, whatever rolls out.")
    ] = None,
    unpin: Annotated[
        bool, typer.Option("--unpin", help="It serves the fleet's routing again.")
    ] = False,
    site: RegistrySiteOpt = None,
) -> None:
    """Pin a member to a version of its own (e.g. its fine-tuned model), or unpin it."""
    from mlexec.lifecycle.rollout import pin

    if (version is None) == (not unpin):
        msg = "--version V to pin, or --unpin"
        raise TopologyError(msg)
    plan, uc, conf = _registry(topology, usecase, site)
    console.print(f"{usecase}: {pin(plan, conf, uc, member, version)}", highlight=False)


@model_app.command("fleet-status")
def model_fleet_status(
    topology: TopologyArg,
    usecase: ModelUsecaseOpt,
    offline_after: Annotated[
        float,
        typer.Option(help="Seconds without a health report after which a member is offline."),
    ] = 60.0,
    site: RegistrySiteOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The use case's rollout and, per member: its wave, what it should serve, what it does."""
    from mlexec.connectors.samplestore import open_store
    from mlexec.lifecycle.registry import read_registry
    from mlexec.lifecycle.rollout import rollout_status
    from mlexec.monitoring.columns import now_utc

    plan, uc, conf = _registry(topology, usecase, site)
    registry = read_registry(conf)
    store_url = plan.topology.sites[str(uc.site("store"))].sample_store
    with open_store(store_url) as store:
        rollout, members = rollout_status(
            plan, registry, store, uc, now_utc(), timedelta(seconds=offline_after)
        )
    if json_out:
        print_json(
            {
                "usecase": usecase,
                "rollout": None
                if rollout is None
                else {
                    "version": rollout.version,
                    "previous": rollout.previous,
                    "state": rollout.state,
                    "wave": rollout.wave + 1,
                    "waves": len(rollout.waves),
                    "message": rollout.message,
                },
                "members": [
                    {
                        "member": m.member,
                        "state": m.state,
                        "wave": m.wave,
                        "pinned": m.pinned,
                        "meant": m.meant,
                        "serves": m.serves,
                        "caught_up": m.caught_up,
                    }
                    for m in members
                ],
            }
        )
        return
    if rollout is None:
        console.print(f"{usecase}: no rollout yet", highlight=False)
    else:
        console.print(
            f"{usecase}: rollout of {rollout.version} (from {rollout.previous}): "
            f"{rollout.state}, wave {rollout.wave + 1} of {len(rollout.waves)} — {rollout.message}",
            highlight=False,
        )
    table = Table()
    for col in ("member", "state", "wave", "should serve", "serves", ""):
        table.add_column(col)
    for m in members:
        note = "pinned" if m.pinned else ("" if m.caught_up else "catching up")
        table.add_row(m.member, m.state, str(m.wave or "-"), m.meant or "-", m.serves or "-", note)
    console.print(table)
