"""Tools for a use case's topics: ``tail`` to look, ``produce`` and ``feedback`` to write.

They talk Kafka with the client mlexec itself uses (confluent-kafka), so they work with
the embedded broker where Debian's ``kcat`` does not. Each acts on the site where the
topic is written — raw records where the connectors run, predictions and dead letters
where the use case dispatches and infers, labels and alerts where its store is — unless
``--site`` names another (then the topic's mirrored ``<site>.<topic>`` is read).
"""

from __future__ import annotations

import csv
import re
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from mlexec.cli.app import TopologyArg, app, console, interrupt_on, load
from mlexec.errors import MlexecError, TopologyError
from mlexec.topologies.plan import ALERTS_TOPIC, Plan, UseCasePlan, remote_name

__all__ = ["feedback", "produce", "tail"]

#: What ``tail`` reads → (the use case's topic attribute, the stage whose site writes it).
TOPICS = {
    "predictions": ("predictions_topic", "infer"),
    "deadletters": ("deadletter_topic", "dispatch"),
    "raw": ("raw_topic", "connectors"),
    "samples": ("samples_topic", "infer"),
    "profiles": ("profiles_topic", "infer"),
    "feedback": ("feedback_topic", "store"),
    "replies": ("replies_topic", "infer"),
    "alerts": ("", "store"),
}

UsecaseOpt = Annotated[
    str | None,
    typer.Option("--usecase", "-u", help="The use case (default: the topology's only one)."),
]
TopicSiteOpt = Annotated[
    str | None,
    typer.Option(
        "--site", "-s", help="Read or write on this site (default: where the topic is written)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON lines, not a table.")]


def pick_usecase(plan: Plan, usecase: str | None) -> UseCasePlan:
    """The named use case, or the only one; a clear error otherwise."""
    if usecase is None:
        if len(plan.usecases) == 1:
            return next(iter(plan.usecases.values()))
        msg = f"the topology has use cases {sorted(plan.usecases)}: name one with --usecase"
        raise TopologyError(msg)
    if usecase not in plan.usecases:
        msg = f"no use case {usecase!r}; use cases: {sorted(plan.usecases)}"
        raise TopologyError(msg)
    return plan.usecases[usecase]


def _where(plan: Plan, uc: UseCasePlan, what: str, site: str | None) -> tuple[str, str]:
    """(site, topic name there) for ``what`` of ``uc``."""
    attribute, stage = TOPICS[what]
    topic = ALERTS_TOPIC if what == "alerts" else getattr(uc, attribute)
    written = uc.site(stage)
    if site is None:
        return written, topic
    plan.require_site(site)
    return site, topic if site == written else remote_name(written, topic)


def _conf(plan: Plan, site: str) -> dict[str, Any]:
    from mlexec.connectors.kafka import client_config

    return client_config(plan.topology.sites[site].kafka)


# ------------------------------------------------------------------------- tail


def _headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in headers or []}


def _message(what: str, m: Any) -> dict[str, Any]:
    """One message as ``tail`` shows it: position, parsed value; a dead letter's origin and reason."""
    key, value, headers = m.key(), m.value(), m.headers()
    out: dict[str, Any] = {"partition": m.partition(), "offset": m.offset()}
    try:
        out["value"] = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        out["value"] = (value or b"").decode("utf-8", "replace")
    out["key"] = (key or b"").decode("utf-8", "replace")
    if what == "deadletters":
        h = _headers(headers)
        out["reason"] = h.get("mlexec.reason", "")
        out["stage"] = h.get("mlexec.stage", "")
        out["origin"] = (
            f"{h.get('mlexec.topic', '?')}:{h.get('mlexec.partition', '?')}:{h.get('mlexec.offset', '?')}"
        )
    return out


def _short(value: Any, width: int = 70) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def _row(what: str, m: dict[str, Any]) -> list[str]:
    value = m["value"]
    if what == "deadletters":
        return [m["origin"], m["stage"], m["reason"], _short(value, 50)]
    if what == "predictions" and isinstance(value, dict):
        at = value.get("time")
        when = (
            datetime.fromtimestamp(at / 1000, UTC).isoformat(timespec="milliseconds")
            if isinstance(at, int | float)
            else ""
        )
        version = f"{value.get('version', '')} {value.get('variant', '')}".strip()
        return [
            str(value.get("id", "")),
            str(value.get("key", "")),
            when,
            version,
            _short(value.get("outputs")),
        ]
    return [f"{m['partition']}:{m['offset']}", m["key"], _short(value)]


_COLUMNS = {
    "deadletters": ["came from", "stage", "reason", "value"],
    "predictions": ["id", "key", "event time", "version", "outputs"],
}


def _show(what: str, messages: list[dict[str, Any]], json_lines: bool) -> None:
    if json_lines:
        for m in messages:
            sys.stdout.write(orjson.dumps(m).decode() + "\n")
        sys.stdout.flush()
        return
    table = Table(show_lines=False)
    for col in _COLUMNS.get(what, ["at", "key", "value"]):
        table.add_column(col, overflow="fold")
    for m in messages:
        table.add_row(*_row(what, m))
    console.print(table)


@app.command()
def tail(
    topology: TopologyArg,
    what: Annotated[
        str,
        typer.Argument(
            help="predictions, deadletters, raw, samples, profiles, feedback, replies or alerts."
        ),
    ] = "predictions",
    usecase: UsecaseOpt = None,
    site: TopicSiteOpt = None,
    last: Annotated[
        int, typer.Option("--last", "-n", min=0, help="How many of the latest to show.")
    ] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep showing new ones until interrupted.")
    ] = False,
    json_lines: JsonOpt = False,
) -> None:
    """Show a use case's latest predictions, dead letters (with their reasons) or other messages."""
    from confluent_kafka import OFFSET_BEGINNING

    from mlexec.connectors.reading import TopicReader

    if what not in TOPICS:
        msg = f"tail shows one of {', '.join(TOPICS)}, found {what!r}"
        raise TopologyError(msg)
    _topo, plan = load(topology)
    uc = pick_usecase(plan, usecase)
    where, topic = _where(plan, uc, what, site)
    conf = _conf(plan, where)
    with TopicReader(conf, "mlexec-tail") as reader:
        parts = reader.partitions(topic, timeout=10.0)
        if not parts:
            msg = f"no topic {topic!r} on site {where!r} yet (nothing written to it)"
            raise MlexecError(msg)
        reader.assign((topic, p, OFFSET_BEGINNING) for p in parts)
        seen = reader.read_to_end(60.0, repr(topic))
        latest = (
            sorted(seen, key=lambda m: (m.timestamp()[1], m.partition(), m.offset()))[-last:]
            if last
            else []
        )
        _show(
            what,
            [_message(what, m) for m in latest],
            json_lines,
        )
        if not follow:
            return
        interrupt_on(signal.SIGINT, signal.SIGTERM)
        try:
            while True:
                fresh = reader.poll(500, 0.5)
                if fresh:
                    _show(
                        what,
                        [_message(what, m) for m in fresh],
                        json_lines,
                    )
        except KeyboardInterrupt:
            return


# ---------------------------------------------------------------------- produce


def _rows(path: Path, delimiter: str) -> Iterator[tuple[int, bytes, dict[str, Any] | None, str]]:
    """(line, original bytes, fields or None, why not) per record of a CSV or JSON-lines file."""
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        with path.open("rb") as f:
            for number, line in enumerate(f, start=1):
                raw = line.rstrip(b"\r\n")
                if not raw.strip():
                    continue
                try:
                    doc = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    yield number, raw, None, f"not valid JSON: {exc}"
                    continue
                if isinstance(doc, dict):
                    yield number, raw, doc, ""
                else:
                    yield number, raw, None, f"expected a JSON object, found {type(doc).__name__}"
        return
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
        for row in reader:
            number = reader.line_num
            raw = delimiter.join(row).encode()
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield (
                    number,
                    raw,
                    None,
                    f"expected {len(header)} fields ({', '.join(header)}), found {len(row)}",
                )
                continue
            yield number, raw, dict(zip(header, row, strict=True)), ""


@app.command()
def produce(
    topology: TopologyArg,
    file: Annotated[Path, typer.Argument(help="CSV (with a header) or JSON lines (.jsonl).")],
    usecase: UsecaseOpt = None,
    site: TopicSiteOpt = None,
    delimiter: Annotated[str, typer.Option(help="The CSV delimiter.")] = ",",
) -> None:
    """Produce a file's records into a use case's raw topic, shaped as its connectors shape them.

    Each row's fields are coerced to the schema (text from CSV, values from JSON); a row
    that does not fit goes to the use case's dead-letter topic with the reason and its
    line, and the command exits 1 when there were any.
    """
    from mlexec.connectors.delivery import ReliableProducer
    from mlexec.connectors.kafka import ensure_topics
    from mlexec.connectors.sources.base import RecordShaper

    _topo, plan = load(topology)
    uc = pick_usecase(plan, usecase)
    if not file.is_file():
        msg = f"{file}: no such file"
        raise MlexecError(msg)
    where, topic = _where(plan, uc, "raw", site)
    dead_topic = uc.deadletter_topic
    conf = _conf(plan, where)
    ensure_topics(
        conf, [s for s in plan.topics_at(where) if s.name in (topic, dead_topic)], site=where
    )
    schema = uc.usecase.input
    shaper = RecordShaper(schema.schema_, schema.key, nullable=schema.nullable)
    good = bad = 0
    reasons: dict[str, int] = {}
    producer = ReliableProducer(conf, what=f"producing {file} to {topic!r}")
    try:  # the producer is closed (flushed) on the way out, also after a bad file
        for number, raw, fields, problem in _rows(file, delimiter):
            if fields is not None:
                try:
                    key, value = shaper.shape(fields)
                except ValueError as exc:
                    problem = str(exc)
                else:
                    producer.produce(topic, value, key=key)
                    good += 1
                    continue
            headers = [
                ("mlexec.reason", problem.encode()),
                ("mlexec.stage", b"produce"),
                ("mlexec.source", f"{file}:{number}".encode()),
            ]
            producer.produce(dead_topic, raw, headers=headers)
            bad += 1
            first = problem.split(":")[0]
            reasons[first] = reasons.get(first, 0) + 1
    finally:
        producer.close()
    console.print(f"produced {good:,} records of {file} to {topic} on site {where}")
    if bad:
        listed = "; ".join(
            f"{n} × {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]
        )
        console.print(
            f"[yellow]{bad:,} rows did not fit the schema[/]: to {dead_topic} ({listed}); "
            f"`mlexec tail {topology} deadletters` shows them"
        )
        raise typer.Exit(1)


# --------------------------------------------------------------------- feedback


_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def _label_rows(path: Path) -> list[dict[str, Any]]:
    import polars as pl

    try:
        frame = (
            pl.read_parquet(path)
            if path.suffix.lower() == ".parquet"
            else pl.read_csv(path, infer_schema_length=10_000)
        )
    except Exception as exc:  # noqa: BLE001 - polars raises many kinds; the reason is said
        msg = f"{path}: cannot read labels: {exc}"
        raise MlexecError(msg) from exc
    return frame.to_dicts()


@app.command()
def feedback(
    topology: TopologyArg,
    file: Annotated[
        Path, typer.Argument(help="CSV or Parquet: record_id (or key and time) and label.")
    ],
    usecase: UsecaseOpt = None,
    site: TopicSiteOpt = None,
) -> None:
    """Send labels from a file to a use case's feedback topic, for accuracy monitoring.

    A row names its prediction by record_id (the prediction's id), or by key and time
    (or the input's own key and time columns; epoch in the input's time unit, or ISO
    8601); label is a number. Rows
    that cannot be sent are listed and the command exits 1.
    """
    from mlexec.connectors.kafka import ensure_topics, produce_records
    from mlexec.operators.parse import RecordParser, parse_time

    _topo, plan = load(topology)
    uc = pick_usecase(plan, usecase)
    if not file.is_file():
        msg = f"{file}: no such file"
        raise MlexecError(msg)
    where, topic = _where(plan, uc, "feedback", site)
    schema = uc.usecase.input
    parser = RecordParser(schema.schema_, schema.key, schema.time, schema.time_unit)
    good: list[tuple[bytes | None, bytes]] = []
    refused: list[str] = []
    for i, row in enumerate(_label_rows(file), start=2):
        label = row.get("label")
        if isinstance(label, bool):
            label = int(label)
        elif isinstance(label, str):  # one stray value makes the whole column text
            try:
                label = float(label)
            except ValueError:
                pass
        record_id = row.get("record_id") or row.get("id")
        problem = ""
        if not isinstance(label, int | float) or label != label:
            problem = f"label must be a number, found {label!r}"
        doc: dict[str, Any] = {"label": label}
        if not problem and record_id:
            doc["record_id"] = str(record_id)
        elif not problem:
            key = row.get("key", row.get(schema.key))
            at = row.get("time", row.get(schema.time))
            if key is None or at is None:
                problem = f"no record_id, nor key and time (or {schema.key} and {schema.time})"
            else:
                if isinstance(at, str) and _NUMBER.fullmatch(at.strip()):
                    at = float(at)  # epoch numbers in a column that also holds ISO text
                try:
                    doc.update(key=str(key), time=parse_time(at, parser))
                except (ValueError, TypeError, OverflowError) as exc:
                    problem = f"time: {exc}"
        if problem:
            refused.append(f"{file} row {i}: {problem}")
            continue
        good.append((str(doc.get("record_id") or doc.get("key")).encode(), orjson.dumps(doc)))
    if good:
        conf = _conf(plan, where)
        ensure_topics(conf, [s for s in plan.topics_at(where) if s.name == topic], site=where)
        produce_records(conf, topic, good)
    console.print(f"sent {len(good):,} labels of {file} to {topic} on site {where}")
    if refused:
        for line in refused[:10]:
            console.print(f"[yellow]not sent[/]: {line}")
        if len(refused) > 10:
            console.print(f"[yellow]… and {len(refused) - 10:,} more[/]")
        raise typer.Exit(1)
