"""The commands as a user runs them: demo, query, run, broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from mlexec.connectors.broker import _port_free, free_port

MLEXEC = [sys.executable, "-m", "mlexec.cli"]
ROOT = Path(__file__).resolve().parents[2]


def _tansu_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "tansu"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.mark.integration
def test_demo_reports_and_leaves_nothing_running_then_query_reads_its_store(tmp_path):
    before = _tansu_pids()
    work = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "200"}
    started = time.monotonic()
    done = subprocess.run(
        [*MLEXEC, "demo", "--work-dir", str(work), "--machines", "6", "--seconds", "300"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    out = done.stdout
    for words in (
        "1,800",
        "readings",
        "windows",
        "dead letters",
        "samples",
        "30 days",
        "7 days",
        "monitoring",
        "output alarms",
    ):
        assert words in out, (words, out)
    assert _tansu_pids() <= before, "the demo left a broker running"
    alarms = [
        orjson.loads(line) for f in (work / "alarms").glob("*.jsonl") for line in f.open("rb")
    ]
    assert alarms and all(a["outputs"]["label"] == 1 for a in alarms)
    # the debounce (every: 1m of wall clock) lets a machine alarm once per started minute
    per_machine = max(sum(1 for a in alarms if a["key"] == k) for k in {a["key"] for a in alarms})
    assert per_machine <= 1 + int((time.monotonic() - started) // 60)

    env["MLEXEC_DEMO_DIR"] = str(work)
    query = subprocess.run(
        [
            *MLEXEC,
            "query",
            str(ROOT / "topologies/demo.yaml"),
            "--site",
            "edge",
            "--json",
            "SELECT count() AS windows, uniqExact(key) AS machines FROM mlexec.samples_windows FINAL",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert query.returncode == 0, query.stderr
    row = orjson.loads(query.stdout.splitlines()[0])
    assert row == {"windows": 6 * 30, "machines": 6}  # rate 1.0: every 10 s window of every machine


def test_query_with_bad_sql_fails_cleanly(tmp_path):
    env = {**os.environ, "MLEXEC_DEMO_DIR": str(tmp_path)}
    done = subprocess.run(
        [*MLEXEC, "query", str(ROOT / "topologies/demo.yaml"), "--site", "edge", "SELEC 1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 1
    assert "error:" in done.stderr and "Traceback" not in done.stderr


def test_unknown_site_is_named():
    done = subprocess.run(
        [*MLEXEC, "query", str(ROOT / "topologies/demo.yaml"), "--site", "moon", "SELECT 1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2  # a usage / configuration error, as validate's
    assert "no site 'moon'" in done.stderr and "['edge']" in done.stderr


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_broker_command_serves_until_interrupted(stop):
    port = free_port()
    proc = subprocess.Popen(
        [*MLEXEC, "broker", "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line
        from confluent_kafka.admin import AdminClient

        assert (
            AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
            is not None
        )
    finally:
        proc.send_signal(stop)
        assert proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _port_free(port):
        time.sleep(0.1)
    assert _port_free(port)


def test_one_exit_code_rule_configuration_2_runtime_1(tmp_path):
    """The same topology error exits 2 from every command; a runtime failure exits 1."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (ROOT / "topologies/demo.yaml").read_text().replace("kind: tumbling", "kind: tumblin")
    )
    for args in (
        ["validate"],
        ["run", "--site", "edge"],
        ["status", "--site", "edge"],
        ["up", "--site", "edge"],
    ):
        done = subprocess.run(
            [*MLEXEC, args[0], str(broken), *args[1:]], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, (args, done.stderr)
        assert "dispatch" in done.stderr and "Traceback" not in done.stderr


def test_an_error_message_prints_whole_markup_and_secrets_aside(capsys):
    from mlexec.cli import fail
    from mlexec.connectors.samplestore import SampleStoreError
    from mlexec.errors import MlexecError, StoreError

    text = "input 'seq' must be [rows, features], found ['N', 'T', 3] at [bold]x[/]"
    assert fail(MlexecError(text)).exit_code == 1
    assert text in " ".join(capsys.readouterr().err.split())
    err = SampleStoreError("clickhouse://u:hunter2@h/db refused")
    assert isinstance(err, StoreError) and fail(err).exit_code == 1
    assert "hunter2" not in capsys.readouterr().err
