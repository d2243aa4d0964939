"""`mlexec render TOPOLOGY k8s`: manifests that pass the Kubernetes API schemas offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from mlexec.runtime.cluster import cluster_from
from mlexec.topologies import load_topology, plan_topology
from mlexec.topologies.kubernetes import BYTEWAX_PORT, render_k8s

ROOT = Path(__file__).resolve().parents[2]
#: The Kubernetes version the manifests are checked against (strict: no unknown field).
VERSION = "1.33.0"
SECRET = "s3cr3t-not-for-manifests"


def _rendered(name: str, site: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("MLEXEC_EDGE_PASSWORD", SECRET)
    monkeypatch.setenv("MLEXEC_CLOUD_PASSWORD", SECRET)
    monkeypatch.setenv("MLEXEC_PLANT_PASSWORD", SECRET)
    path = ROOT / "topologies" / name
    plan = plan_topology(load_topology(path))
    return render_k8s(plan, site, path.read_text(), topology_file=name, namespace="plant")


def _invalid(doc: dict) -> str | None:
    try:
        kubernetes_validate.validate(doc, VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(
    ("name", "site"),
    [
        ("demo.yaml", "edge"),
        ("edge-cloud.yaml", "edge"),
        ("edge-cloud.yaml", "cloud"),
        ("fleet.yaml", "plant-004"),  # a fleet's member, as any site
        ("fleet.yaml", "cloud"),
    ],
)
def test_every_rendered_manifest_passes_the_api_schema(name, site, monkeypatch):
    files = _rendered(name, site, monkeypatch)
    kustomization = yaml.safe_load(files.pop("kustomization.yaml"))
    assert sorted(kustomization["resources"]) == sorted(files)
    kinds = set()
    for file, text in files.items():
        doc = yaml.safe_load(text)
        assert _invalid(doc) is None, (file, _invalid(doc))
        kinds.add(doc["kind"])
        assert SECRET not in text  # secrets are references, never inline
    assert {"ConfigMap", "PersistentVolumeClaim"} <= kinds
    if name == "edge-cloud.yaml" and site == "edge":  # infers, connects, mirrors up
        assert {"StatefulSet", "Service", "HorizontalPodAutoscaler", "Deployment"} <= kinds
        pipeline = yaml.safe_load(files["pipeline.yaml"])
        env = {e["name"]: e for e in pipeline["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert (
            env["MLEXEC_EDGE_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"]
            == "MLEXEC_EDGE_PASSWORD"
        )
        assert "mirror-cloud.yaml" in files and "connect.yaml" in files


def test_the_pipeline_pod_finds_its_cluster_from_what_the_statefulset_gives_it(monkeypatch):
    files = _rendered("edge-cloud.yaml", "edge", monkeypatch)
    sts = yaml.safe_load(files["pipeline.yaml"])
    container = sts["spec"]["template"]["spec"]["containers"][0]
    name = sts["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    env["BYTEWAX_POD_NAME"] = f"{name}-2"  # what the downward API fills in for pod 2
    service = yaml.safe_load(files["pipeline-service.yaml"])
    assert service["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == name
    cluster = cluster_from(None, None, env, resolve=lambda host: 3 if host == name else 0)
    assert cluster is not None and cluster.process_id == 2
    assert cluster.addresses == tuple(f"{name}-{i}.{name}:{BYTEWAX_PORT}" for i in range(3))
    assert container["args"][:2] == ["run", "/etc/mlexec/edge-cloud.yaml"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["port"] == "metrics" and env["MLEXEC_METRICS_ADDRESS"] == "0.0.0.0"


def test_a_manifest_broken_on_purpose_fails_the_check(monkeypatch):
    files = _rendered("edge-cloud.yaml", "edge", monkeypatch)
    sts = yaml.safe_load(files["pipeline.yaml"])
    sts["spec"]["replicas"] = "two"
    assert _invalid(sts) is not None
    sts = yaml.safe_load(files["pipeline.yaml"])
    sts["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}  # a typo
    assert "livenessProbes" in (_invalid(sts) or "")
    hpa = yaml.safe_load(files["pipeline-autoscaler.yaml"])
    del hpa["spec"]["scaleTargetRef"]["name"]
    assert _invalid(hpa) is not None


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_command_writes_a_directory_kustomize_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("MLEXEC_EDGE_PASSWORD", SECRET)
    monkeypatch.setenv("MLEXEC_CLOUD_PASSWORD", SECRET)
    topology = ROOT / "topologies" / "edge-cloud.yaml"
    argv = [sys.executable, "-m", "mlexec.cli", "render", str(topology), "k8s", "--site", "edge"]
    subprocess.run([*argv, "--out", str(tmp_path), "--namespace", "plant"], check=True)
    built = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path / "edge")], check=True, capture_output=True, text=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(built) if d]
    listed = yaml.safe_load((tmp_path / "edge" / "kustomization.yaml").read_text())["resources"]
    assert len(docs) == len(listed) == 8 and all(
        d["metadata"]["namespace"] == "plant" for d in docs
    )
    assert all(_invalid(d) is None for d in docs)
    assert SECRET not in built
