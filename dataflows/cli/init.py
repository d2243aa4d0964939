"""``mlexec init``: a starter topology from a CSV (and a model), that validates and runs.

The schema is inferred from the file's first rows with polars: numbers, booleans, text
and timestamps (ISO 8601 with or without a zone, or epoch seconds / milliseconds in a
time-like column), the columns with empty cells (``nullable``), the key (a text column
of few distinct values, preferring an id-like name) and the event time. Without a
model, a placeholder that averages the numeric fields is written beside the topology,
so that everything runs from the first minute; replace it with yours.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from mlexec.cli.app import app, console
from mlexec.errors import MlexecError, TopologyError

__all__ = ["infer_schema", "init"]

_TIME_NAMES = re.compile(r"(?i)^(ts|time|timestamp|datetime|date|event_?time|created(_at)?|at)$")
_KEY_NAMES = re.compile(r"(?i)(id|key|name|machine|sensor|device|pump|asset|host|unit|station)")


def infer_schema(
    path: Path,
    *,
    key: str | None = None,
    time: str | None = None,
    delimiter: str = ",",
    decimal_comma: bool = False,
    null_values: list[str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The ``input`` section for the CSV at ``path`` and notes on what was guessed."""
    import polars as pl

    try:
        frame = pl.read_csv(
            path,
            separator=delimiter,
            n_rows=10_000,
            infer_schema_length=10_000,
            try_parse_dates=True,
            decimal_comma=decimal_comma,
            null_values=null_values or None,
        )
    except Exception as exc:  # noqa: BLE001 - polars raises many kinds; the reason is said
        msg = f"{path}: cannot read it as CSV: {exc}"
        raise MlexecError(msg) from exc
    if frame.height == 0:
        msg = f"{path}: no rows under the header to infer a schema from"
        raise MlexecError(msg)
    notes: list[str] = []
    schema: dict[str, str] = {}
    unit = "ms"
    for name, dtype in frame.schema.items():
        column = frame[name]
        if dtype in (pl.Datetime, pl.Date) or isinstance(dtype, pl.Datetime):
            schema[name] = "timestamp"
        elif dtype == pl.Boolean:
            schema[name] = "bool"
        elif dtype.is_numeric():
            values = column.drop_nulls()
            epoch = _epoch_unit(values) if _TIME_NAMES.match(name) and dtype.is_integer() else None
            if epoch is not None:
                schema[name], unit = "timestamp", epoch
            else:
                schema[name] = "float"  # integers too: a later 20.5 is no dead letter
        else:
            schema[name] = "str"
    times = [n for n, k in schema.items() if k == "timestamp"]
    if time is None:
        if not times:
            msg = (
                f"{path}: no column looks like the event time (ISO 8601 timestamps, or epoch "
                f"numbers in a column named like ts/time/timestamp); columns: {list(schema)}. "
                "Name it with --time"
            )
            raise TopologyError(msg)
        time = times[0]
    if time not in schema:
        msg = f"{path}: no column {time!r} for --time; columns: {list(schema)}"
        raise TopologyError(msg)
    if schema[time] != "timestamp":
        schema[time] = "timestamp"
    for other in times:
        if other != time:
            schema[other] = "str"  # a second time column travels as text
    dtype = frame.schema[time]
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        notes.append(
            f"{time}: timestamps without a zone are read as UTC; give --timezone if they are local"
        )
    if key is None:
        key = _guess_key(frame, schema, time)
        if key is None:
            notes.append("no text column to key the records by: every record has key 'all'")
    elif key not in schema:
        msg = f"{path}: no column {key!r} for --key; columns: {list(schema)}"
        raise TopologyError(msg)
    else:
        schema[key] = "str"
    nullable = [
        n for n in schema if n not in (key, time) and frame[n].null_count() > 0
    ]  # fmt: skip
    section: dict[str, Any] = {"key": key or "key", "time": time}
    if schema[time] == "timestamp" and frame.schema[time].is_integer():
        section["time_unit"] = unit
    section["schema"] = schema if key else {"key": "str", **schema}
    if nullable:
        section["nullable"] = nullable
        notes.append(f"empty cells in {', '.join(nullable)}: nullable (NaN for the model)")
    return section, notes


def _epoch_unit(values: Any) -> str | None:
    if values.is_empty():
        return None
    low, high = float(values.min()), float(values.max())
    if 1e11 <= low and high < 1e14:
        return "ms"
    if 1e8 <= low and high < 1e11:
        return "s"
    return None


def _guess_key(frame: Any, schema: dict[str, str], time: str) -> str | None:
    texts = [n for n, k in schema.items() if k == "str" and n != time]
    scored = []
    for name in texts:
        distinct = frame[name].n_unique()
        if 1 <= distinct <= max(1000, frame.height // 2):
            scored.append((not _KEY_NAMES.search(name), distinct, name))
    return min(scored)[2] if scored else None


def placeholder_model(path: Path, width: int) -> Path:
    """A model that averages its ``width`` inputs: ``y`` per row (NaN-safe: 0 for NaN)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("IsNaN", ["x"], ["missing"]),
            helper.make_node("Where", ["missing", "zero", "x"], ["clean"]),
            helper.make_node("ReduceMean", ["clean", "axes"], ["y"], keepdims=0),
        ],
        "placeholder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        [
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", path.stem).strip("-_") or "usecase"
    return name if name[0].isalpha() else f"uc-{name}"


@app.command()
def init(
    data: Annotated[Path, typer.Argument(help="A CSV file with a header row.")],
    model: Annotated[
        Path | None, typer.Option(help="An ONNX model over the file's numeric columns.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the topology.")] = None,
    name: Annotated[
        str | None, typer.Option(help="The use case's name (default: the file's).")
    ] = None,
    key: Annotated[str | None, typer.Option(help="The column that keys records.")] = None,
    time: Annotated[str | None, typer.Option(help="The column of event times.")] = None,
    timezone: Annotated[
        str | None, typer.Option(help="The zone of timestamps written without one (IANA name).")
    ] = None,
    delimiter: Annotated[str, typer.Option(help="The CSV delimiter.")] = ",",
    decimal_comma: Annotated[
        bool, typer.Option("--decimal-comma", help="Numbers are written 3,14.")
    ] = False,
    null: Annotated[
        list[str] | None, typer.Option(help="A cell that means no value (repeatable), e.g. NA.")
    ] = None,
    bootstrap: Annotated[str, typer.Option(help="The Kafka bootstrap servers.")] = "127.0.0.1:9092",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing topology.")] = False,
) -> None:
    """Write a starter topology for a CSV (and a model), checked as mlexec validate checks."""
    if not data.is_file():
        msg = f"{data}: no such file"
        raise MlexecError(msg)
    usecase = name or _name(data)
    target = out or Path(f"{usecase}.yaml")
    if target.exists() and not force:
        msg = f"{target} exists: choose --out, or --force to overwrite it"
        raise MlexecError(msg)
    section, notes = infer_schema(
        data,
        key=key,
        time=time,
        delimiter=delimiter,
        decimal_comma=decimal_comma,
        null_values=null,
    )
    schema: dict[str, str] = section["schema"]
    numeric = [
        n for n, k in schema.items() if k in ("float", "int", "bool") and n != section["key"]
    ]
    folder = target.resolve().parent
    if model is None:
        if not numeric:
            msg = f"{data}: no numeric column to feed a model; give --model"
            raise TopologyError(msg)
        model = placeholder_model(folder / f"{usecase}-placeholder.onnx", len(numeric))
        notes.append(f"{model.name} averages {', '.join(numeric)}: replace it with your model")
    connector: dict[str, Any] = {"kind": "csv", "path": str(data.resolve())}
    if delimiter != ",":
        connector["delimiter"] = delimiter
    if decimal_comma:
        connector["decimal"] = ","
    if null:
        connector["null_values"] = list(null)
    if timezone:
        connector["timezone"] = timezone
    if section["key"] not in _columns_of(data, delimiter):
        connector["set"] = {section["key"]: "all"}
    state = folder / ".mlexec" / usecase
    doc = {
        "name": usecase,
        "sites": {
            "local": {
                "kafka": {"bootstrap": f"${{MLEXEC_BOOTSTRAP:-{bootstrap}}}"},
                "sample_store": f"chdb://{state}/chdb",
                "state_dir": str(state / "state"),
            }
        },
        "usecases": {
            usecase: {
                "input": {**section, "max_ahead": "3650d"},
                "connectors": [connector],
                "dispatch": {"kind": "microbatch", "max_records": 256},
                "reduction": {"kind": "identity"},
                "model": {
                    "name": usecase,
                    "version": "1",
                    "path": str(model.resolve()),
                    **({"inputs": numeric} if _one_input(model) else {}),
                },
                "sampling": {"rate": 1.0},
                "retention": "30d",
            }
        },
    }
    notes.append(
        "sampling.rate 1.0 keeps every prediction in the sample store: lower it as volumes grow"
    )
    plain = delimiter == "," and not decimal_comma and not null
    if plain:  # polars reads the file as it is: it is the reference monitoring compares with
        doc["usecases"][usecase]["monitoring"] = {  # type: ignore[index]
            "every": "1m",
            "window": "1h",
            "watch": {n: {} for n in numeric},
            "reference": {"kind": "file", "path": str(data.resolve())},
        }
        notes.append(
            f"monitoring watches {', '.join(numeric)} against the file itself as reference"
        )
    text = yaml.safe_dump(doc, sort_keys=False)
    header = "".join(f"# {n}\n" for n in notes)
    target.write_text(f"# written by `mlexec init {data}`\n{header}{text}")
    _check(target)
    console.print(
        f"[bold green]wrote[/] {target}: use case {usecase!r}, key {section['key']!r}, time {section['time']!r}"
    )
    for line in notes:
        console.print(f"  note: {line}")
    console.print(
        f"next: mlexec broker & mlexec connect {target} --once && mlexec run {target} --until-end"
    )


def _one_input(model: Path) -> bool:
    """Whether the model takes one input (fed the numeric columns in the order listed)."""
    from mlexec.operators.signature import read_signature

    return len(read_signature(model).inputs) == 1


def _columns_of(path: Path, delimiter: str) -> list[str]:
    import csv

    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f, delimiter=delimiter), [])
    return [h.strip().lstrip("\ufeff") for h in header]


def _check(path: Path) -> None:
    """Validate what was written as ``mlexec validate`` would (model included)."""
    from mlexec.runtime.run import prepare_site
    from mlexec.topologies import load_topology, plan_topology

    topology = load_topology(path)
    plan = plan_topology(topology, str(path))
    for site in topology.sites:
        prepare_site(plan, site, source=str(path))
