"""Helpers for connector tests: a one-use-case topology around given connectors, topic reads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import yaml

from mlexec.connectors.broker import LocalBroker
from mlexec.connectors.reading import read_topic
from mlexec.connectors.runner import HEADER_POSITION
from mlexec.runtime.connect import SiteConnectors, prepare_connectors, run_connectors
from mlexec.topologies import load_topology, plan_topology
from mlexec.topologies.plan import Plan, UseCasePlan

SCHEMA = {"machine": "str", "ts": "timestamp", "value": "float"}


def topology(
    tmp_path: Path,
    broker: LocalBroker,
    connectors: list[dict[str, Any]],
    *,
    uid: str,
    schema: dict[str, str] | None = None,
    time: str = "ts",
) -> tuple[Path, Plan]:
    """Write a topology with one use case fed by ``connectors``; return its path and plan."""
    doc = {
        "name": f"t{uid}",
        "sites": {
            "edge": {
                "kafka": {"bootstrap": broker.bootstrap},
                "sample_store": f"chdb://{tmp_path}/chdb",
                "state_dir": str(tmp_path / "state"),
            }
        },
        "usecases": {
            f"u{uid}": {
                "input": {
                    "topic": f"raw-{uid}",
                    "partitions": 2,
                    "key": "machine",
                    "time": time,
                    "schema": schema or SCHEMA,
                },
                "connectors": connectors,
                "dispatch": {"kind": "microbatch"},
                "model": {"name": "m", "version": "1", "path": str(tmp_path / "m.onnx")},
            }
        },
    }
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, plan_topology(load_topology(path), str(path))


def only(plan: Plan) -> UseCasePlan:
    """The plan of the topology's one use case (named ``u<uid>``, so its topics are the test's own)."""
    (uc,) = plan.usecases.values()
    return uc


def connect_once(plan: Plan) -> SiteConnectors:
    """One pass of every connector of the site ``edge``."""
    prepared = prepare_connectors(plan, "edge", once=True)
    run_connectors(prepared, once=True)
    return prepared


@contextmanager
def connecting(plan: Plan) -> Iterator[SiteConnectors]:
    """The site's connectors running continuously in a thread for the ``with`` block."""
    prepared = prepare_connectors(plan, "edge")
    stop = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            run_connectors(prepared, stop)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield prepared
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "connectors did not stop"
    assert not failure, failure


def messages(broker: LocalBroker, topic: str) -> list[dict[str, Any]]:
    """Every message of ``topic``: value (parsed when JSON), key, headers."""
    out = []
    for key, value, headers, partition, offset in read_topic(
        {"bootstrap.servers": broker.bootstrap}, topic
    ):
        try:
            parsed = orjson.loads(value) if value is not None else None
        except orjson.JSONDecodeError:
            parsed = value
        out.append(
            {
                "key": key,
                "value": parsed,
                "raw": value,
                "headers": {k: v.decode() for k, v in headers},
                "at": (partition, offset),
            }
        )
    return out


def positions(msgs: list[dict[str, Any]]) -> list[str]:
    return [m["headers"][HEADER_POSITION] for m in msgs]
