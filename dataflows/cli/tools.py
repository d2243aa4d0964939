"""Commands beside the sites: ``render`` (MirrorMaker 2, Grafana), ``query``, ``broker``, ``demo``."""

from __future__ import annotations

import logging
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from mlexec.cli.app import (
    SiteOpt,
    TopologyArg,
    app,
    console,
    interrupt_on,
    load,
    one_site,
)
from mlexec.errors import TopologyError

#: How many written files ``render`` names before it counts the rest.
_NAMED = 10


class Rendering(StrEnum):
    """What ``mlexec render`` writes."""

    mm2 = "mm2"
    grafana = "grafana"
    k8s = "k8s"
    compose = "compose"


@app.command()
def render(
    topology: TopologyArg,
    what: Annotated[
        Rendering,
        typer.Argument(
            help="mm2: MirrorMaker 2 properties per link; grafana: Grafana provisioning "
            "(ClickHouse datasource and monitoring dashboard) per ClickHouse-server site; "
            "k8s: a site's Kubernetes manifests (kubectl apply -k); compose: per fleet, the "
            "Docker Compose file every member runs and an env file per member."
        ),
    ],
    out: Annotated[Path, typer.Option(help="The directory to write to.")] = Path("deploy"),
    site: SiteOpt = None,
    image: Annotated[
        str, typer.Option(help="k8s: the container image holding mlexec (and the models).")
    ] = "mlexec:latest",
    namespace: Annotated[str | None, typer.Option(help="k8s: the namespace.")] = None,
    replicas: Annotated[
        int, typer.Option(min=1, help="k8s: pipeline processes to start with.")
    ] = 1,
    max_replicas: Annotated[
        int, typer.Option(min=1, help="k8s: the most pipeline processes scaling on lag adds.")
    ] = 4,
) -> None:
    """Write what the infrastructure needs: MirrorMaker 2, Grafana, Kubernetes manifests.

    MirrorMaker 2 properties are private (mode 0600): with SASL they hold the
    credentials. Grafana's files hold none (its password comes from its environment)
    and must be readable by the Grafana container's user; nor do the Kubernetes
    manifests (every environment variable the topology names without a default comes from
    the Secret <name>-secrets).
    """
    from mlexec.topologies.render import render_grafana, render_mm2

    topo, plan = load(topology)
    files: dict[str, str] = {}
    if what is Rendering.k8s:
        from mlexec.topologies.kubernetes import render_k8s

        chosen = one_site(topology, site)
        files = render_k8s(
            plan,
            chosen,
            Path(topology).read_text(),
            topology_file=Path(topology).name,
            image=image,
            namespace=namespace,
            replicas=replicas,
            max_replicas=max(max_replicas, replicas),
        )
        out = out / chosen
    elif what is Rendering.compose:
        from mlexec.topologies.compose import render_fleet_compose

        if not topo.fleets:
            msg = f"{topology}: fleets: no fleet to render member deployments for"
            raise TopologyError(msg)
        files = render_fleet_compose(
            plan, Path(topology).read_text(), topology_file=Path(topology).name, image=image
        )
    elif what is Rendering.mm2:
        if not topo.links:
            msg = f"{topology}: links: no links to render MirrorMaker 2 for"
            raise TopologyError(msg)
        for link in topo.links:
            files[f"mm2-{link.source}-{link.target}.properties"] = render_mm2(plan, link)
    else:
        servers = [
            s for s, site in topo.sites.items() if site.sample_store.startswith("clickhouse")
        ]
        if not servers:
            msg = f"{topology}: sites: no site has a ClickHouse server store for Grafana to read"
            raise TopologyError(msg)
        for name in servers:
            files.update(render_grafana(plan, name))
    for i, (relative, text) in enumerate(files.items()):
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o600 if what is Rendering.mm2 else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        if i < _NAMED or len(files) == _NAMED + 1:
            console.print(f"wrote {path}")
    if len(files) > _NAMED + 1:  # a fleet's hundreds of files: counted, not listed
        console.print(f"... and {len(files) - _NAMED} more files in {out}")


@app.command()
def query(
    topology: TopologyArg,
    sql: Annotated[str, typer.Argument(help="SQL for the site's sample store.")],
    site: SiteOpt = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print JSON lines, not a table.")
    ] = False,
) -> None:
    """Run SQL on a site's sample store (the database is named mlexec)."""
    site = one_site(topology, site)
    from mlexec.connectors.samplestore import open_store

    topo, plan = load(topology)
    plan.require_site(site)
    with open_store(topo.sites[site].sample_store) as store:
        frame = store.query(sql)
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
    interrupt_on(signal.SIGINT, signal.SIGTERM)
    try:
        local.start()
        console.print(
            f"broker listening on [bold]{local.bootstrap}[/] ({storage}); Ctrl-C stops it"
        )
        local.wait()
    except KeyboardInterrupt:
        pass
    finally:
        local.stop()


@app.command()
def demo(
    work_dir: Annotated[
        Path, typer.Option(help="Where the demo keeps its data (wiped first).")
    ] = Path(".mlexec/demo"),
    machines: Annotated[int, typer.Option(min=1, help="Machines in the synthetic park.")] = 20,
    seconds: Annotated[int, typer.Option(min=20, help="Seconds of readings per machine.")] = 1000,
    files: Annotated[
        Path | None,
        typer.Option(
            help="Only write example files to start from (pumps.csv, pumps.onnx, labels.csv) "
            "into this folder: the README's walkthrough."
        ),
    ] = None,
) -> None:
    """From nothing: local broker, models, data, the site dataflow to the end, a report."""
    from mlexec.demo import demo_topology_path, run_demo, write_example

    if files is not None:
        written = write_example(files)
        console.print(f"wrote {', '.join(str(p) for p in written.values())}")
        return

    # the report's table shows the alerts; logged too, they would break into the tables
    logging.getLogger("mlexec.monitoring.alerts").setLevel(logging.ERROR)
    console.rule("[bold]mlexec demo")
    console.print("local broker, synthetic sensor park, two models (scikit-learn → ONNX) …")
    with console.status("running the demo topology to the end"):
        report = run_demo(work_dir, machines=machines, seconds=seconds)

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
    # topologies/demo.yaml's own default is the checkout's .mlexec/demo
    default = (demo_topology_path().parent.parent / ".mlexec" / "demo").resolve()
    where = "" if work_dir.resolve() == default else f"MLEXEC_DEMO_DIR={work_dir.resolve()} "
    console.print(
        f"  {where}mlexec query topologies/demo.yaml --site edge "
        "'SELECT count() FROM mlexec.samples_readings FINAL'",
        highlight=False,
        soft_wrap=True,
    )
