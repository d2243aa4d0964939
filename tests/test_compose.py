"""docker-compose.yml renders, and its site service runs a topology that fits the stack."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from topologies import load_topology

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (make test installs it)",
)
def test_compose_file_renders_with_docker_compose_config():
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    assert set(rendered["services"]) == {
        "kafka",
        "clickhouse",
        "edge-site",
        "edge-connectors",
        "edge-act",
    }
    for service in rendered["services"].values():
        for port in service.get("ports", []):
            published = (
                port if isinstance(port, str) else f"{port.get('host_ip')}:{port.get('published')}"
            )
            assert published.startswith("127.0.0.1:"), port


@pytest.mark.parametrize("service", ["edge-site", "edge-connectors", "edge-act"])
def test_the_site_services_topology_points_at_the_stack(monkeypatch, service):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    site = compose["services"][service]
    command = " ".join(site["command"])
    topology = next(word for word in command.split() if word.endswith(".yaml"))
    for name, value in site["environment"].items():
        monkeypatch.setenv(name, value.replace("${CLICKHOUSE_PASSWORD:-mlexec}", "mlexec"))
    topo = load_topology(ROOT / topology)
    edge = topo.sites["edge"]
    assert edge.kafka.bootstrap == "kafka:9092"
    assert edge.sample_store == "clickhouse://mlexec:mlexec@clickhouse:8123/mlexec"
    assert edge.state_dir == "/state"
    assert all(uc.model.path.startswith("/models/") for uc in topo.usecases.values())
    if service == "edge-connectors":
        assert "connect" in command
        assert any(uc.connectors for uc in topo.usecases.values())
    if service == "edge-act":
        assert " act " in command
        assert any(uc.outputs for uc in topo.usecases.values())
