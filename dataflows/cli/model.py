"""``mlexec model``: publish versions, change stages and traffic, compare; ``mlexec train``."""

from __future__ import annotations

import dataclasses
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mlexec.cli.app import (
    JsonOpt,
    TopologyArg,
    app,
    console,
    load,
    print_json,
)
from mlexec.errors import TopologyError

model_app = typer.Typer(
    help="Model versions on the registry (mlexec.models): publish, stages, rollback, compare.",
    no_args_is_help=True,
    rich_markup_mode=None,
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

    _, plan = load(topology)
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
    from mlexec.lifecycle.registry import publish_model, publish_trained_on

    plan, uc, conf = _registry(topology, usecase, site)
    if training_data is None:
        manifest, routing = publish_model(plan, conf, uc, model, version, stage.value, traffic)
    else:
        manifest, routing = publish_trained_on(
            plan,
            conf,
            uc,
            model,
            version,
            training_data,
            stage=stage.value,
            traffic=traffic,
            source=str(topology),
        )
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
    json_out: JsonOpt = False,
) -> None:
    """The versions on the registry and what each does now."""
    from mlexec.lifecycle.registry import current_routing, read_registry

    _, plan = load(topology)
    names = [usecase] if usecase else list(plan.usecases)
    listing = []
    for name in names:
        plan, uc, conf = _registry(topology, name, site)
        registry = read_registry(conf)
        listing.append((uc, registry, current_routing(registry, uc)))
    if json_out:
        print_json(
            {
                uc.name: {
                    "routing": dataclasses.asdict(routing),
                    "versions": [
                        {**dataclasses.asdict(m), "stage_now": routing.stage_of(m.version)}
                        for (u, _), m in registry.manifests.items()
                        if u == uc.name
                    ],
                }
                for uc, registry, routing in listing
            }
        )
        return
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

    _, uc, conf = _registry(topology, usecase, site)
    routing = change_routing(conf, uc, change)
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
            msg = f"a variant NAME=VERSION:SHARE, found {text!r}"
            raise TopologyError(msg) from None
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
    from mlexec.lifecycle.policy import compare_latest
    from mlexec.topologies.schema import parse_duration

    _, plan = load(topology)
    uc = plan.usecase_named(usecase)
    try:
        span = parse_duration(window)
    except ValueError as exc:
        msg = f"--window: {exc}"
        raise TopologyError(msg) from exc
    if not isinstance(span, timedelta):
        msg = f"--window: a duration such as 2h, not {window!r}"
        raise TopologyError(msg)
    with open_store(plan.topology.sites[uc.site("store")].sample_store) as store:
        table = compare_latest(store, uc, span)
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
    console.print(
        f"trained {usecase} version {done.version} on {done.rows:,} labelled samples; on the "
        f"{done.holdout:,} latest held out: {done.metric} {done.candidate_error:.4g} against "
        f"production {done.production_version}'s {done.production_error:.4g}; {done.change}",
        highlight=False,
    )
