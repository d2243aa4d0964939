"""Shared fixtures: a real Tansu broker on a free loopback port, chDB directories, models."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlexec.connectors.broker import LocalBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """One local Tansu broker for the session (memory storage, 127.0.0.1, free port)."""
    with LocalBroker() as running:
        yield running


@pytest.fixture(params=["1 worker", "2 workers"])
def entry_point(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Run a bytewax flow on one worker, and as a cluster of two (as bytewax's own suite does).

    A flow-level test takes this fixture and runs once on each: keyed state then lives
    on both workers and records cross between them, so a test of one worker only cannot
    hide an exchange that loses, repeats or reorders what a key sees.
    """
    from bytewax.testing import cluster_main, run_main

    if request.param == "1 worker":
        return run_main
    return lambda flow, **kw: cluster_main(flow, [], 0, worker_count_per_proc=2, **kw)


@pytest.fixture
def uid() -> str:
    """A short unique name for this test's topics, tables and directories."""
    return uuid.uuid4().hex[:8]


def write_topology(path: Path, text: str) -> Path:
    """Write dedented topology YAML to ``path``."""
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real Mosquitto MQTT broker on a free loopback port: ``(host, port)``."""
    from mlexec.connectors.broker import BrokerError, local_mosquitto

    try:
        with local_mosquitto(tmp_path_factory.mktemp("mosquitto")) as port:
            yield "127.0.0.1", port
    except BrokerError as exc:
        pytest.fail(str(exc))
