"""A site on Kubernetes: the manifests ``mlexec render TOPOLOGY k8s --site S`` writes.

What runs where (``kubectl apply -k <out>``):

- the topology, as written (``${VARS}`` unexpanded), in a ConfigMap mounted at
  ``/etc/mlexec``; every ``${VAR}`` it names without a default comes from the Secret
  ``<name>-secrets`` (key ``VAR``) as an environment variable — never inline; a
  ``${VAR:-default}`` takes its default in the pod, as it did where the manifests were
  rendered (mount paths are read from the topology so expanded);
- the pipeline as a StatefulSet of bytewax processes with a headless Service for its
  peers (``podManagementPolicy: Parallel``: a cluster starts together). Each pod finds
  its process id from its name and its peers by counting the Service's pods
  (``MLEXEC_PEERS``), and restarts itself when that count changes, so a change of
  replicas goes through a rescale from recovery; the recovery state is on one volume
  every pipeline pod mounts (``ReadWriteMany``);
- the store as a StatefulSet of one (its chDB directory on its own volume; a ClickHouse
  server store needs none), hosting the monitoring;
- connectors, outputs and the mirror of each link from this site as Deployments;
- resource requests, liveness and readiness from each process's metrics endpoint,
  Prometheus scrape annotations and a scrape job (a ConfigMap: ``scrape.yml``) that
  labels each series with its ``site`` and ``part``, and a HorizontalPodAutoscaler of
  the pipeline on its lag (``mlexec_lag{site, part="pipeline"}``, an External metric,
  e.g. from prometheus-adapter).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import yaml

from mlexec.topologies.plan import Plan
from mlexec.topologies.secrets import required_variables

__all__ = ["BYTEWAX_PORT", "METRICS_PORT", "render_k8s"]

#: The port bytewax processes talk on, and the one every process serves metrics on.
BYTEWAX_PORT = 2101
METRICS_PORT = 9100
_MOUNT = "/etc/mlexec"
_WORKDIR = "/srv/mlexec"


def _dns(text: str) -> str:
    """A Kubernetes name: lower case, digits and dashes, at most 52 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:52].rstrip("-") or "mlexec"


def _absolute(path: str) -> str:
    return path if path.startswith("/") else str(PurePosixPath(_WORKDIR) / path)


class _Site:
    def __init__(self, plan: Plan, site: str, text: str, image: str, file: str) -> None:
        self.plan, self.site, self.image, self.file = plan, site, image, file
        self.name = _dns(f"{plan.topology.name}-{site}")
        self.labels = {"app.kubernetes.io/part-of": "mlexec", "mlexec/site": _dns(site)}
        self.secrets = required_variables(text)
        self.config = plan.topology.sites[site]
        self.state = _absolute(self.config.state_dir)

    def _meta(self, name: str, part: str) -> dict[str, Any]:
        return {"name": name, "labels": {**self.labels, "mlexec/part": part}}

    def container(self, part: str, args: list[str], cpu: str, memory: str) -> dict[str, Any]:
        env: list[dict[str, Any]] = [
            {"name": "MLEXEC_METRICS_ADDRESS", "value": "0.0.0.0"},  # noqa: S104 - the pod's
            *(
                {
                    "name": var,
                    "valueFrom": {"secretKeyRef": {"name": f"{self.name}-secrets", "key": var}},
                }
                for var in self.secrets
            ),
        ]
        probe = {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 10}
        return {
            "name": part,
            "image": self.image,
            "imagePullPolicy": "IfNotPresent",
            "workingDir": _WORKDIR,
            "args": [*args, "--metrics-port", str(METRICS_PORT)],
            "env": env,
            "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
            "resources": {
                "requests": {"cpu": cpu, "memory": memory},
                "limits": {"memory": _double(memory)},
            },
            "readinessProbe": {**probe, "initialDelaySeconds": 5},
            "livenessProbe": {**probe, "initialDelaySeconds": 60, "failureThreshold": 6},
            "volumeMounts": [
                {"name": "topology", "mountPath": _MOUNT, "readOnly": True},
                {"name": "state", "mountPath": self.state},
            ],
        }

    def pod(self, part: str, containers: list[dict[str, Any]], extra: list[Any]) -> dict[str, Any]:
        return {
            "metadata": {
                "labels": {**self.labels, "mlexec/part": part},
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(METRICS_PORT),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": {
                "terminationGracePeriodSeconds": 60,
                "containers": containers,
                "volumes": [
                    {"name": "topology", "configMap": {"name": f"{self.name}-topology"}},
                    {"name": "state", "persistentVolumeClaim": {"claimName": f"{self.name}-state"}},
                    *extra,
                ],
            },
        }

    def run(self, part: str) -> list[str]:
        return ["run", f"{_MOUNT}/{self.file}", "--site", self.site, "--part", part]

    # ------------------------------------------------------------------ resources

    def topology(self, text: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self._meta(f"{self.name}-topology", "topology"),
            "data": {self.file: text},
        }

    def state_claim(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": self._meta(f"{self.name}-state", "state"),
            "spec": {
                # every pipeline process reads all recovery partitions when it rescales
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "10Gi"}},
            },
        }

    def peers(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self._meta(f"{self.name}-pipeline", "pipeline"),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,  # peers find each other before ready
                "selector": {**self.labels, "mlexec/part": "pipeline"},
                "ports": [
                    {"name": "bytewax", "port": BYTEWAX_PORT},
                    {"name": "metrics", "port": METRICS_PORT},
                ],
            },
        }

    def pipeline(self, replicas: int) -> dict[str, Any]:
        name = f"{self.name}-pipeline"
        workers = self.config.pipeline.workers
        container = self.container(
            "pipeline", [*self.run("pipeline"), "--workers", str(workers)], "1", "1024Mi"
        )
        container["env"] += [
            {"name": "BYTEWAX_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "BYTEWAX_STATEFULSET_NAME", "value": name},
            {"name": "MLEXEC_PEERS", "value": f"{name}:{BYTEWAX_PORT}"},
        ]
        container["ports"].append({"name": "bytewax", "containerPort": BYTEWAX_PORT})
        return {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": self._meta(name, "pipeline"),
            "spec": {
                "serviceName": name,
                "replicas": replicas,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {**self.labels, "mlexec/part": "pipeline"}},
                "template": self.pod("pipeline", [container], []),
            },
        }

    def store(self) -> dict[str, Any]:
        name = f"{self.name}-store"
        container = self.container("store", self.run("store"), "1", "2048Mi")
        spec: dict[str, Any] = {
            "serviceName": name,
            "replicas": 1,  # an embedded chDB store has one owner
            "selector": {"matchLabels": {**self.labels, "mlexec/part": "store"}},
            "template": self.pod("store", [container], []),
        }
        url = self.config.sample_store
        if url.startswith("chdb://"):
            container["volumeMounts"].append(
                {"name": "chdb", "mountPath": _absolute(url.removeprefix("chdb://"))}
            )
            spec["volumeClaimTemplates"] = [
                {
                    "metadata": {"name": "chdb"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "50Gi"}},
                    },
                }
            ]
        return {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": self._meta(name, "store"),
            "spec": spec,
        }

    def deployment(self, part: str, label: str, args: list[str]) -> dict[str, Any]:
        name = f"{self.name}-{label}"
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self._meta(name, label),
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},  # one copy of a part at a time (its lock)
                "selector": {"matchLabels": {**self.labels, "mlexec/part": label}},
                "template": self.pod(label, [self.container(part, args, "250m", "512Mi")], []),
            },
        }

    def scrape(self) -> dict[str, Any]:
        """Prometheus's scrape job for the site's pods.

        Each series gets its pod's ``site`` and ``part``: what the autoscaler and the
        dashboards select on.
        """
        pod = "__meta_kubernetes_pod_"
        job = {
            "job_name": f"mlexec-{self.name}",
            "kubernetes_sd_configs": [{"role": "pod"}],
            "relabel_configs": [
                {
                    "source_labels": [
                        f"{pod}label_app_kubernetes_io_part_of",
                        f"{pod}label_mlexec_site",
                    ],
                    "regex": f"mlexec;{self.labels['mlexec/site']}",
                    "action": "keep",
                },
                {
                    "source_labels": [f"{pod}ip"],
                    "regex": "(.+)",
                    "replacement": f"$1:{METRICS_PORT}",
                    "target_label": "__address__",
                },
                {"source_labels": [f"{pod}label_mlexec_site"], "target_label": "site"},
                {"source_labels": [f"{pod}label_mlexec_part"], "target_label": "part"},
                {"source_labels": [f"{pod}name"], "target_label": "pod"},
            ],
        }
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self._meta(f"{self.name}-prometheus", "prometheus"),
            "data": {"scrape.yml": yaml.safe_dump({"scrape_configs": [job]}, sort_keys=False)},
        }

    def autoscaler(self, most: int) -> dict[str, Any]:
        return {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": self._meta(f"{self.name}-pipeline", "pipeline"),
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": f"{self.name}-pipeline",
                },
                "minReplicas": 1,
                "maxReplicas": most,
                "metrics": [
                    {
                        "type": "External",
                        "external": {
                            "metric": {
                                "name": "mlexec_lag",
                                "selector": {
                                    "matchLabels": {
                                        "site": self.labels["mlexec/site"],
                                        "part": "pipeline",
                                    }
                                },
                            },
                            "target": {"type": "AverageValue", "averageValue": "50000"},
                        },
                    }
                ],
                # a rescale restarts every process: not more often than every 5 minutes
                "behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": 300},
                    "scaleDown": {"stabilizationWindowSeconds": 600},
                },
            },
        }


def _double(memory: str) -> str:
    return f"{int(memory.removesuffix('Mi')) * 2}Mi"


def render_k8s(
    plan: Plan,
    site: str,
    topology_text: str,
    *,
    topology_file: str = "topology.yaml",
    image: str = "mlexec:latest",
    namespace: str | None = None,
    replicas: int = 1,
    max_replicas: int = 4,
) -> dict[str, str]:
    """The manifests of ``site``: file name → YAML, with a ``kustomization.yaml``."""
    plan.require_site(site)
    s = _Site(plan, site, topology_text, image, topology_file)
    at_site = plan.usecases_at(site)
    resources: dict[str, dict[str, Any]] = {
        "topology.yaml": s.topology(topology_text),
        "state.yaml": s.state_claim(),
        "prometheus.yaml": s.scrape(),
    }
    if any(uc.site("dispatch") == site or uc.site("infer") == site for uc in at_site):
        resources["pipeline-service.yaml"] = s.peers()
        resources["pipeline.yaml"] = s.pipeline(replicas)
        resources["pipeline-autoscaler.yaml"] = s.autoscaler(max_replicas)
    if any(uc.site("store") == site for uc in at_site):
        resources["store.yaml"] = s.store()
    path = f"{_MOUNT}/{topology_file}"
    if any(uc.usecase.connectors and uc.site("connectors") == site for uc in at_site):
        resources["connect.yaml"] = s.deployment(
            "connect", "connect", ["connect", path, "--site", site]
        )
    if any(uc.usecase.outputs and uc.site("act") == site for uc in at_site):
        resources["act.yaml"] = s.deployment("act", "act", ["act", path, "--site", site])
    for link in plan.topology.links:
        if link.source == site:
            label = _dns(f"mirror-{link.target}")
            args = ["mirror", path, "--link", f"{link.source}:{link.target}"]
            resources[f"{label}.yaml"] = s.deployment("mirror", label, args)
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(resources),
    }
    if namespace:
        kustomization["namespace"] = namespace
    files = {name: yaml.safe_dump(doc, sort_keys=False) for name, doc in resources.items()}
    files["kustomization.yaml"] = yaml.safe_dump(kustomization, sort_keys=False)
    return files
