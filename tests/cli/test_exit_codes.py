"""The one exit-code rule, for every kind of failure a command meets (no broker needed)."""

from __future__ import annotations

import signal

import pytest
import yaml
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.cli import site as site_commands
from mlexec.errors import MlexecError
from tests.dataflows.spine import spine_topology

runner = CliRunner()


@pytest.fixture
def topology(tmp_path):
    return spine_topology(
        tmp_path,
        "127.0.0.1:1",
        "codes",
        dispatch="{kind: microbatch}",
        reduction="{kind: identity}",
        sampling="{rate: 0.1}",
    )


def _run(*args: str) -> tuple[int, str]:
    done = runner.invoke(app, list(args))
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return done.exit_code, " ".join(done.output.split())


def test_configuration_and_usage_errors_exit_2(topology, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nsites: {}\nusecases: {}\n")
    assert _run("status", str(topology), "--site", "nowhere")[0] == 2  # a name it does not have
    assert _run("validate", str(broken))[0] == 2
    assert _run("query", str(topology))[0] == 2  # click: a missing argument
    two = tmp_path / "two.yaml"
    doc = yaml.safe_load(topology.read_text())
    doc["sites"]["there"] = dict(doc["sites"]["here"], state_dir=str(tmp_path / "there"))
    for uc in doc["usecases"].values():
        uc["placement"] = dict.fromkeys(("connectors", "dispatch", "infer", "store"), "here")
    two.write_text(yaml.safe_dump(doc))
    code, text = _run("status", str(two))  # several sites and none named
    assert code == 2 and "name one with --site" in text and "'there'" in text


def test_runtime_failures_exit_1_with_one_line(topology, monkeypatch):
    code, text = _run("status", str(topology), "--site", "here")
    assert code == 1 and "has not been started with `mlexec up`" in text

    def denied(*_args: object) -> None:
        raise PermissionError(13, "Permission denied", "/var/lib/mlexec/state")

    monkeypatch.setattr(site_commands.Site, "load", denied)
    code, text = _run("reset", str(topology), "--site", "here")
    assert code == 1 and "Permission denied" in text and "Traceback" not in text


def test_an_interrupt_exits_130(topology, monkeypatch):
    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(site_commands.Site, "load", interrupted)
    assert _run("status", str(topology), "--site", "here")[0] == 130


def test_an_error_message_keeps_its_brackets(topology, monkeypatch):
    def refused(*_args: object) -> None:
        raise MlexecError("input 'seq' must be [rows, features], found [bold]x[/]")

    monkeypatch.setattr(site_commands.Site, "load", refused)
    code, text = _run("up", str(topology), "--site", "here")
    assert code == 1 and "must be [rows, features], found [bold]x[/]" in text


def test_a_broker_that_is_not_there_is_one_line_and_exit_1(tmp_path):
    from mlexec.connectors.broker import free_port

    path = spine_topology(
        tmp_path,
        f"127.0.0.1:{free_port()}",  # nothing listens there
        "nobroker",
        dispatch="{kind: microbatch}",
        reduction="{kind: identity}",
        sampling="{rate: 0.1}",
    )
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code, text = _run("run", str(path), "--site", "here", "--until-end")
    finally:  # a run installs its stop handlers: this test process keeps its own
        for sig, handler in kept.items():
            signal.signal(sig, handler)
    assert code == 1, text
    assert "site here's Kafka broker at 127.0.0.1:" in text and "does not answer" in text
    assert "`mlexec broker` starts a local one" in text
    assert text.count("error:") == 1 and "Traceback" not in text
