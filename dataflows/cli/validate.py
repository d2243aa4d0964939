"""``mlexec validate``: check a topology and its models without side effects; print the plan."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from mlexec.cli.app import (
    JsonOpt,
    TopologyArg,
    app,
    console,
    load,
    print_json,
)
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
from mlexec.topologies.secrets import mask_url

if TYPE_CHECKING:
    from mlexec.runtime.run import SiteRun
    from mlexec.topologies.plan import TopicSpec
    from mlexec.topologies.schema import Topology


@app.command()
def validate(topology: TopologyArg, json_out: JsonOpt = False) -> None:
    """Check a topology (and its models) without side effects; print the plan."""
    from mlexec.runtime.run import prepare_site

    topo, plan = load(topology)
    # a fleet's members share their template: one of them stands for all
    shown = shown_sites(topo)
    runs = {site: prepare_site(plan, site, source=str(topology)) for site in shown}
    if json_out:
        print_json(_plan_document(topology, runs))
        return

    console.print(f"[bold green]ok[/] topology [bold]{topo.name}[/] ({topology})")
    sites = Table(title="sites", title_justify="left")
    for col in ("site", "kafka", "security", "sample store", "state"):
        sites.add_column(col)
    examples = {fleet.names[0]: name for name, fleet in topo.fleets.items() if fleet.members}
    for name in shown:
        site = topo.sites[name]
        fleet = examples.get(name)
        sites.add_row(
            name if fleet is None else f"{fleet}: {len(topo.fleets[fleet].members)} members",
            mask_url(site.kafka.bootstrap),
            site.kafka.security.protocol,
            mask_url(site.sample_store),
            site.state_dir,
        )
    console.print(sites)
    for line in fleet_lines(topo):
        console.print(line)
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
    _print_models(runs)
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
    for site_name in shown:
        for name, partitions, count in compact_topics(topo, plan.topics_at(site_name)):
            times = f" × {count}" if count > 1 else ""
            topics.add_row(site_name, f"{name}{times}", str(partitions))
    console.print(topics)
    tables = Table(title="sample-store tables", title_justify="left")
    for col in ("site", "table", "retention", "columns"):
        tables.add_column(col)
    for site_name, run in runs.items():
        for rt in run.store:
            cols = ", ".join(f"{n} {k}" for n, k in rt.table.columns)
            days = rt.table.retention_seconds / 86400
            tables.add_row(site_name, rt.table.name, f"{days:g} d", cols)
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


def shown_sites(topo: Topology) -> list[str]:
    """The sites ``validate`` shows: every site, and one member of each fleet."""
    members = {m for fleet in topo.fleets.values() for m in fleet.names}
    examples = [fleet.names[0] for fleet in topo.fleets.values() if fleet.members]
    return [s for s in topo.sites if s not in members] + examples


def fleet_lines(topo: Topology) -> list[str]:
    """Per fleet: its members (counted), an example, what differs, the labels' values."""
    out = []
    for name, fleet in topo.fleets.items():
        if not fleet.members:
            out.append(f"fleet [bold]{name}[/]: no members yet")
            continue
        flat = [_flatten(topo.sites[m].model_dump(mode="json")) for m in fleet.names]
        differ = sorted({k for f in flat for k in f if any(g.get(k) != f.get(k) for g in flat)})
        labels: dict[str, dict[str, int]] = {}
        for member in fleet.members:
            for key, value in member.labels.items():
                labels.setdefault(key, {}).setdefault(value, 0)
                labels[key][value] += 1
        text = "; ".join(
            f"{k}: " + ", ".join(f"{v} {n}" for v, n in sorted(vs.items()))
            for k, vs in sorted(labels.items())
        )
        link = f", each linked to {fleet.link.target}" if fleet.link else ""
        source = f" from {fleet.inventory}" if fleet.inventory else ""
        out.append(
            f"fleet [bold]{name}[/]: {len(fleet.members)} members{source} (e.g. "
            f"{fleet.names[0]}){link}; members differ in: {', '.join(differ) or 'nothing'}"
            + (f"; labels {text}" if text else "")
        )
    return out


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def compact_topics(topo: Topology, topics: list[TopicSpec]) -> list[tuple[str, int, int]]:
    """(name, partitions, how many) with every member's ``<member>.<topic>`` as one row."""
    members = {m for fleet in topo.fleets.values() for m in fleet.names}
    rows: dict[str, tuple[int, int]] = {}
    for t in topics:
        member, _, rest = t.name.partition(".")
        name = f"<member>.{rest}" if member in members else t.name
        _, count = rows.get(name, (t.partitions, 0))
        rows[name] = (t.partitions, count + 1)
    return [(name, parts, count) for name, (parts, count) in rows.items()]


def _plan_document(topology: Path, runs: dict[str, SiteRun]) -> dict[str, Any]:
    """The plan ``validate`` prints, as one JSON document (secrets masked)."""
    plan = next(iter(runs.values())).plan
    topo = plan.topology
    runtimes = {rt.plan.name: rt for run in runs.values() for rt in [*run.process, *run.store]}
    usecases = {}
    for uc in plan.usecases.values():
        rt = runtimes.get(uc.name)
        model = rt.model if rt is not None else None
        usecases[uc.name] = {
            "sites": dict(uc.sites),
            "dispatch": uc.usecase.dispatch.kind,
            "reduction": uc.usecase.reduction.kind,
            "features": list(uc.features),
            "model": None
            if model is None
            else {
                "name": model.name,
                "version": model.version,
                "inputs": [
                    {"input": f.spec.describe(), "columns": list(f.columns), "batch": f.spec.batch}
                    for f in model.feeds
                ],
                "outputs": [model.signature.output(o).describe() for o in model.outputs],
                "providers": list(model.signature.providers),
                "notes": list(model.signature.notes),
            },
            "topics": {
                "raw": uc.raw_topic,
                "predictions": uc.predictions_topic,
                "deadletter": uc.deadletter_topic,
                "samples": uc.samples_topic,
                "feedback": uc.feedback_topic,
                **({"profiles": uc.profiles_topic} if uc.profiled else {}),
            },
            "table": uc.table,
        }
    return {
        "ok": True,
        "topology": topo.name,
        "file": str(topology),
        "sites": {
            name: {
                "kafka": mask_url(site.kafka.bootstrap),
                "security": site.kafka.security.protocol,
                "sample_store": mask_url(site.sample_store),
                "state_dir": site.state_dir,
                "topics": [
                    {"name": t.name, "partitions": t.partitions} for t in plan.topics_at(name)
                ],
            }
            for name, site in topo.sites.items()
        },
        "fleets": {
            name: {
                "members": list(fleet.names),
                "inventory": fleet.inventory,
                "link": fleet.link.target if fleet.link else None,
            }
            for name, fleet in topo.fleets.items()
        },
        "usecases": usecases,
    }


def _print_models(runs: dict[str, SiteRun]) -> None:
    """Each served model's signature: what feeds which input, what it gives, where it runs."""
    models = Table(
        title="models (the signature is the contract: docs/models.md)", title_justify="left"
    )
    for col in ("use case", "inputs ← columns", "outputs", "runs on"):
        models.add_column(col)
    seen: set[str] = set()
    for run in runs.values():
        for rt in [*run.process, *run.store]:
            if rt.plan.name in seen:
                continue
            seen.add(rt.plan.name)
            model = rt.model
            sig = model.signature
            feeds = "\n".join(
                f"{f.spec.describe()} ← {', '.join(f.columns)}"
                + (f" (served in pieces of {f.spec.batch})" if f.spec.batch else "")
                for f in model.feeds
            )
            outs = "\n".join(sig.output(o).describe() for o in model.outputs)
            where = ", ".join(p.removesuffix("ExecutionProvider") for p in sig.providers)
            if sig.notes:
                where += "\n" + "\n".join(f"note: {n}" for n in sig.notes)
            models.add_row(rt.plan.name, feeds, outs, where)
    if models.row_count:
        console.print(models)


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
