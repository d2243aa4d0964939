"""docker-compose.yml renders, and its services fit the two-site topology they run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlexec.topologies import load_topology, plan_topology
from mlexec.topologies.render import render_mm2

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {
    "MLEXEC_EDGE_PASSWORD": "edge-pw",
    "MLEXEC_CLOUD_PASSWORD": "cloud-pw",
    "GRAFANA_ADMIN_PASSWORD": "grafana-pw",
}
MLEXEC_SERVICES = {
    "edge-connectors": ("connect", "edge"),
    "edge-site": ("run", "edge"),
    "cloud-site": ("run", "cloud"),
    "cloud-act": ("act", "cloud"),
}


def _rendered() -> dict:
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **SECRETS},
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (make test installs it)",
)


@needs_compose
def test_compose_file_renders_with_docker_compose_config():
    rendered = _rendered()
    assert set(rendered["services"]) == {
        "kafka-edge",
        "kafka-cloud",
        "mirror-maker",
        "clickhouse",
        "grafana",
        *MLEXEC_SERVICES,
    }
    for service in rendered["services"].values():
        for port in service.get("ports", []):
            published = (
                port if isinstance(port, str) else f"{port.get('host_ip')}:{port.get('published')}"
            )
            assert published.startswith("127.0.0.1:"), port


@needs_compose
def test_compose_refuses_to_start_without_the_secrets():
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode != 0
    assert any(name in done.stderr for name in SECRETS)


@pytest.mark.parametrize("service", sorted(MLEXEC_SERVICES))
def test_each_mlexec_service_runs_its_site_of_the_topology_against_the_stack(monkeypatch, service):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    spec = compose["services"][service]
    command = " ".join(spec["command"])
    verb, site = MLEXEC_SERVICES[service]
    assert f"mlexec {verb} topologies/edge-cloud.yaml --site {site}" in command
    for name, value in spec["environment"].items():
        monkeypatch.setenv(
            name, SECRETS.get(name, str(value).replace("${CLICKHOUSE_PASSWORD:-mlexec}", "mlexec"))
        )
    topo = load_topology(ROOT / "topologies/edge-cloud.yaml")
    plan = plan_topology(topo)
    kafka = topo.sites[site].kafka
    broker = f"kafka-{site}"
    assert kafka.bootstrap == f"{broker}:9093"
    assert broker in spec.get("depends_on", [])
    assert kafka.security.protocol == "sasl_ssl" and kafka.security.ca == "/certs/ca.pem"
    assert kafka.security.sasl is not None
    assert (
        kafka.security.sasl.password.get_secret_value()
        == SECRETS[f"MLEXEC_{site.upper()}_PASSWORD"]
    )
    assert "./deploy/certs:/certs:ro" in spec["volumes"]
    # the service has work on its site
    stages = {"connect": "connectors", "run": None, "act": "act"}[verb]
    uc = plan.usecases["readings"]
    if stages is not None:
        assert uc.site(stages) == site
    else:
        assert site in {uc.site("dispatch"), uc.site("store")}


def test_mirror_maker_runs_the_properties_mlexec_renders(monkeypatch):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mm2 = compose["services"]["mirror-maker"]
    properties = mm2["command"][-1]
    assert mm2["command"][0].endswith("connect-mirror-maker.sh")
    assert "./deploy:/etc/mm2:ro" in mm2["volumes"]
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    plan = plan_topology(load_topology(ROOT / "topologies/edge-cloud.yaml"))
    (link,) = plan.topology.links
    assert properties == f"/etc/mm2/mm2-{link.source}-{link.target}.properties"
    text = render_mm2(plan, link)
    assert "edge.bootstrap.servers = kafka-edge:9093" in text
    assert "cloud.bootstrap.servers = kafka-cloud:9093" in text
    assert 'password="cloud-pw"' in text
    # the brokers trust the same CA and know the same user
    for broker in ("kafka-edge", "kafka-cloud"):
        env = compose["services"][broker]["environment"]
        jaas = env["KAFKA_LISTENER_NAME_SASL__SSL_PLAIN_SASL_JAAS_CONFIG"]
        assert 'user_mlexec="${MLEXEC_' in jaas
        assert env["KAFKA_SSL_KEYSTORE_LOCATION"] == f"/certs/{broker}.pem"


def test_grafana_is_provisioned_with_what_mlexec_renders(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from mlexec.cli import app
    from mlexec.topologies.render import GRAFANA_DATASOURCE

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    assert grafana["environment"]["GF_INSTALL_PLUGINS"] == GRAFANA_DATASOURCE["type"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(
        app, ["render", str(ROOT / "topologies/edge-cloud.yaml"), "grafana", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    source = yaml.safe_load((tmp_path / "grafana/provisioning/datasources/mlexec.yaml").read_text())
    (ds,) = source["datasources"]
    assert (ds["type"], ds["uid"]) == (GRAFANA_DATASOURCE["type"], GRAFANA_DATASOURCE["uid"])
    assert ds["jsonData"]["host"] == "clickhouse" and ds["jsonData"]["port"] == 8123
    assert ds["jsonData"]["defaultDatabase"] == "mlexec"
    # the password is Grafana's own environment variable, which compose sets
    assert ds["secureJsonData"]["password"] == "${CLICKHOUSE_PASSWORD}"
    assert "CLICKHOUSE_PASSWORD" in grafana["environment"]
    provider = yaml.safe_load(
        (tmp_path / "grafana/provisioning/dashboards/mlexec.yaml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    board = yaml.safe_load((tmp_path / "grafana/dashboards/mlexec-cloud.json").read_text())
    assert board["templating"]["list"][0]["query"] == "readings"
    assert {p["datasource"]["uid"] for p in board["panels"]} == {"mlexec-clickhouse"}
    assert (tmp_path / "grafana/dashboards/mlexec-cloud.json").stat().st_mode & 0o777 == 0o644
