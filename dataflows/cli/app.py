"""The ``mlexec`` application object, its one error handler and what every command shares."""

from __future__ import annotations

import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperArgument, TyperGroup

from mlexec.errors import MlexecError, TopologyError
from mlexec.topologies.secrets import MaskSecrets, mask_text

if TYPE_CHECKING:
    from mlexec.connectors.runner import ConnectorStatus
    from mlexec.outputs import OutputStatus
    from mlexec.topologies.plan import Plan
    from mlexec.topologies.schema import Topology

__all__ = [
    "EXIT_CONFIG",
    "EXIT_INTERRUPTED",
    "EXIT_RUNTIME",
    "MaskSecrets",
    "MetricsPortOpt",
    "Part",
    "JsonOpt",
    "SiteOpt",
    "print_json",
    "one_site",
    "TopologyArg",
    "app",
    "console",
    "err_console",
    "fail",
    "interrupt_on",
    "load",
    "print_connectors",
    "print_outputs",
]

#: The one exit-code rule: 0 done; 2 a usage or configuration error (the topology, or a
#: name in the arguments that it does not have — click's own usage errors exit 2 too);
#: 1 a runtime failure; 130 when interrupted (Ctrl-C).
EXIT_CONFIG, EXIT_RUNTIME, EXIT_INTERRUPTED = 2, 1, 130

console = Console()
err_console = Console(stderr=True)


def fail(exc: Exception) -> typer.Exit:
    """The one error handler: the message in one line (no markup, no secret) and the code."""
    err_console.print(
        f"[bold red]error:[/] {escape(mask_text(str(exc)))}", highlight=False, soft_wrap=True
    )
    return typer.Exit(EXIT_CONFIG if isinstance(exc, TopologyError) else EXIT_RUNTIME)


class _Handled(TyperGroup):
    """Every command's errors end here: mlexec's and the operating system's in one line."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context
        try:
            return super().invoke(ctx)
        except (MlexecError, OSError) as exc:  # OSError: a state directory, a file, a port
            raise fail(exc) from exc
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None


def _plain_usage_name(self: TyperArgument) -> str:
    """``TOPOLOGY`` and ``[SQL]`` in a usage line, as Unix tools write them, not ``{sql}``."""
    name = self.display_name_raw.upper()
    name = name if self.required else f"[{name}]"
    return name if self.nargs == 1 else f"{name}..."


def _plain_list_name(self: TyperArgument) -> str:
    """The same name in the list of arguments."""
    name = self.display_name_raw.upper()
    return name if self.nargs == 1 else f"{name}..."


def _no_argument_type(self: TyperArgument, ctx: object) -> None:
    """An argument's help says what it is; typer's ``<path>`` beside it is noise."""


# Typer (pinned) marks a required argument ``{name}`` and appends ``<type>`` to each
# argument's help; the users' report read both as markup residue.
TyperArgument._usage_display_name = _plain_usage_name  # type: ignore[method-assign]
TyperArgument._rich_display_name = _plain_list_name  # type: ignore[method-assign]
TyperArgument.display_type_rich = _no_argument_type  # type: ignore[method-assign, assignment]


app = typer.Typer(
    name="mlexec",
    cls=_Handled,
    help="A machine-learning execution environment for streams: one topology, every site.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help: no "<bool>" type column, no markup residue in the texts
    rich_markup_mode=None,
)


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


TopologyArg = Annotated[
    Path, typer.Argument(help="The topology YAML file.", show_default=False, metavar="TOPOLOGY")
]
SiteOpt = Annotated[
    str | None,
    typer.Option("--site", "-s", help="The site to act for (default: the topology's only site)."),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (one document, or JSON lines), not tables.")
]


def print_json(value: Any) -> None:
    """``value`` as one line of JSON on stdout (dates as ISO 8601, anything else as text)."""
    import orjson

    sys.stdout.write(orjson.dumps(value, default=str).decode() + "\n")
    sys.stdout.flush()


MetricsPortOpt = Annotated[
    int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1 at this port.", min=1)
]


def load(path: Path) -> tuple[Topology, Plan]:
    """The topology at ``path``, validated, and its plan."""
    from mlexec.topologies import load_topology, plan_topology

    topology = load_topology(path)
    return topology, plan_topology(topology, str(path))


def one_site(path: Path, site: str | None) -> str:
    """``site``, or the topology's only site; with several, say which there are."""
    if site is not None:
        return site
    topology, _plan = load(path)
    if len(topology.sites) == 1:
        return next(iter(topology.sites))
    msg = f"{path}: the topology has sites {sorted(topology.sites)}: name one with --site"
    raise TopologyError(msg)


class Part(StrEnum):
    """Which of a site's dataflows ``mlexec run`` runs."""

    all = "all"
    pipeline = "pipeline"
    store = "store"


def print_outputs(statuses: list[OutputStatus]) -> None:
    """The outputs' counts as a table."""
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


def print_connectors(statuses: list[ConnectorStatus]) -> None:
    """The connectors' counts as a table."""
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


def interrupt_on(*signals: signal.Signals) -> None:
    """Turn these signals into KeyboardInterrupt, so foreground commands stop cleanly.

    SIGINT may arrive ignored (a background job), SIGTERM is what supervisors send.
    """

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in signals:
        signal.signal(sig, handler)
