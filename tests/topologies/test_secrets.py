"""No secret is ever printed: a password in every secret field, none in any output.

``validate``, ``render`` (except the MirrorMaker 2 properties meant to carry the SASL
login, written mode 0600) and the error output and logs of a command that fails on
the ClickHouse server URL show none of them.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlexec.cli import MaskSecrets, app
from mlexec.operators.testing import make_mlp
from mlexec.topologies.secrets import mask_text, mask_url

SECRETS = {
    "EDGE_SASL": "sasl-edge-Xq1",
    "CLOUD_SASL": "sasl-cloud-Xq2",
    "CH_PASS": "ch-pass-Xq3",
    "SQL_PASS": "sql-pass-Xq4",
    "MQTT_PASS": "mqtt-pass-Xq5",
    "HDR_TOKEN": "hdr-token-Xq6",
    "URL_TOKEN": "url-token-Xq7",
    "OUT_TOKEN": "out-token-Xq8",
    "MQTT_OUT_PASS": "mqtt-out-Xq9",
}


def _topology(tmp: Path) -> Path:
    make_mlp(tmp / "m.onnx", inputs=1, hidden=(2,))
    tls = {"protocol": "sasl_ssl", "ca": str(tmp / "ca.pem")}
    doc = {
        "name": "s",
        "sites": {
            "edge": {
                "kafka": {
                    "bootstrap": "127.0.0.1:1",
                    "security": {
                        **tls,
                        "sasl": {"mechanism": "PLAIN", "username": "u", "password": "${EDGE_SASL}"},
                    },
                },
                "sample_store": f"chdb://{tmp}/edge",
                "state_dir": str(tmp / "edge-state"),
            },
            "cloud": {
                "kafka": {
                    "bootstrap": "127.0.0.1:2",
                    "security": {
                        **tls,
                        "sasl": {
                            "mechanism": "PLAIN",
                            "username": "u",
                            "password": "${CLOUD_SASL}",
                        },
                    },
                },
                "sample_store": "clickhouse://mlexec:${CH_PASS}@127.0.0.1:1/db?password=${CH_PASS}",
                "state_dir": str(tmp / "cloud-state"),
            },
        },
        "links": [{"source": "edge", "target": "cloud"}],
        "usecases": {
            "u": {
                "input": {
                    "key": "k",
                    "time": "ts",
                    "schema": {"k": "str", "ts": "timestamp", "x": "float"},
                },
                "connectors": [
                    {
                        "kind": "sql",
                        "name": "db",
                        "url": "postgresql+psycopg://u:${SQL_PASS}@127.0.0.1/db",
                        "table": "t",
                        "cursor": "id",
                    },
                    {
                        "kind": "mqtt",
                        "name": "mq",
                        "topics": ["a/#"],
                        "broker": {"username": "u", "password": "${MQTT_PASS}"},
                    },
                    {
                        "kind": "http",
                        "name": "web",
                        "url": "http://127.0.0.1:1/api?token=${URL_TOKEN}&page=1",
                        "every": "10s",
                        "headers": {"Authorization": "Bearer ${HDR_TOKEN}"},
                    },
                ],
                "placement": {
                    "connectors": "edge",
                    "dispatch": "edge",
                    "infer": "edge",
                    "store": "cloud",
                    "act": "cloud",
                },
                "dispatch": {"kind": "microbatch"},
                "model": {"name": "m", "version": "1", "path": "m.onnx"},
                "outputs": [
                    {
                        "kind": "http",
                        "url": "http://127.0.0.1:1/hook?sig=${OUT_TOKEN}",
                        "headers": {"X-Key": "${OUT_TOKEN}"},
                    },
                    {
                        "kind": "mqtt",
                        "topic": "alarm/{key}",
                        "broker": {"username": "u", "password": "${MQTT_OUT_PASS}"},
                    },
                ],
            }
        },
    }
    path = tmp / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _leaks(text: str) -> list[str]:
    return [name for name, value in SECRETS.items() if value in text]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return {**SECRETS, "COLUMNS": "300"}


def test_validate_shows_no_secret(tmp_path, env):
    result = CliRunner().invoke(app, ["validate", str(_topology(tmp_path))], env=env)
    assert result.exit_code == 0, result.output
    assert "clickhouse://mlexec:***@127.0.0.1:1/db" in result.output
    assert _leaks(result.output) == []


def test_render_writes_the_sasl_login_only_into_private_files(tmp_path, env):
    path = _topology(tmp_path)
    out = tmp_path / "deploy"
    runner = CliRunner()
    for what in ("mm2", "grafana"):
        result = runner.invoke(app, ["render", str(path), what, "--out", str(out)], env=env)
        assert result.exit_code == 0, result.output
        assert _leaks(result.output) == []
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files
    for f in files:
        found = _leaks(f.read_text())
        if f.name.startswith("mm2-"):
            assert set(found) <= {"EDGE_SASL", "CLOUD_SASL"}
            assert stat.S_IMODE(f.stat().st_mode) == 0o600
        else:
            assert found == [], (f, found)


def test_a_failing_command_prints_and_logs_no_store_password(tmp_path, env, caplog):
    path = _topology(tmp_path)
    caplog.set_level(logging.DEBUG)
    result = CliRunner().invoke(app, ["query", str(path), "--site", "cloud", "SELECT 1"], env=env)
    assert result.exit_code != 0
    assert _leaks(result.output) == [], result.output
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "store %s down", None, None)
    record.args = (f"clickhouse://mlexec:{SECRETS['CH_PASS']}@host/db",)
    MaskSecrets().filter(record)
    assert SECRETS["CH_PASS"] not in record.getMessage()


def test_masking_keeps_what_people_need():
    assert mask_url("clickhouse://u:p@h:8123/db") == "clickhouse://u:***@h:8123/db"
    assert mask_url("http://h/x?token=abc&page=2") == "http://h/x?token=***&page=2"
    assert mask_url("chdb:///tmp/x") == "chdb:///tmp/x"
    assert mask_text("see postgresql://me:pw@db/x now") == "see postgresql://me:***@db/x now"


def test_status_shows_no_secret_and_says_what_it_cannot_measure(tmp_path, env):
    from mlexec.runtime.supervisor import Supervisor
    from mlexec.topologies import load_topology, plan_topology

    path = _topology(tmp_path)
    plan = plan_topology(load_topology(path))
    Supervisor(plan, "edge", path)._write()  # the status `up` keeps, without starting it
    result = CliRunner().invoke(app, ["status", str(path), "--site", "edge"], env=env)
    assert result.exit_code == 0, result.output
    assert _leaks(result.output) == []
    flat = " ".join(result.output.split())
    assert "lag unknown until its first snapshot" in flat  # never a made-up 0
    assert "is not running" in flat  # the supervisor's lock is not held
