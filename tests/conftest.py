"""Shared fixtures: a real Tansu broker on a free loopback port, chDB directories, models."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.broker import LocalBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """One local Tansu broker for the session (memory storage, 127.0.0.1, free port)."""
    with LocalBroker() as running:
        yield running


@pytest.fixture
def uid() -> str:
    """A short unique name for this test's topics, tables and directories."""
    return uuid.uuid4().hex[:8]


def write_topology(path: Path, text: str) -> Path:
    """Write dedented topology YAML to ``path``."""
    path.write_text(textwrap.dedent(text))
    return path
