"""Shared fixtures: a real Tansu broker on a free loopback port, chDB directories, models."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlexec.connectors.broker import LocalBroker


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


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real Mosquitto MQTT broker on a free loopback port: ``(host, port)``."""
    import shutil
    import socket
    import subprocess
    import time

    from mlexec.connectors.broker import free_port

    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed: `make test` installs Debian's mosquitto package")
    port = free_port()
    conf = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                proc.kill()
                pytest.fail(f"mosquitto did not start: {err}")
            time.sleep(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(10)
