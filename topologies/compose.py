"""A fleet's members as Docker Compose projects: one file per member kind, an env file each.

``mlexec render TOPOLOGY compose`` writes, per fleet, ``compose-<fleet>.yml`` — what
every member runs — and ``<fleet>/<member>.env``, what tells one member from another::

    docker-compose --env-file plants/plant-017.env -f compose-plants.yml up -d

A member runs its local Kafka (KRaft, one node), ``mlexec run --site <member>`` (its
pipeline, and its store when the fleet keeps one), ``mlexec connect`` and ``mlexec act``
when the use cases place connectors and outputs on the fleet, and MirrorMaker 2 with
the member's own link properties (``mlexec render TOPOLOGY mm2``). One MirrorMaker 2
per member, at the member: it dials out to the cloud (members sit behind NAT more often
than not), keeps its own offsets, and a member offline stalls nobody else's link. The
environment variables the topology names without a default are passed through from
the member's environment, never written into these files.
"""

from __future__ import annotations

from typing import Any

import yaml

from mlexec.topologies.plan import Plan
from mlexec.topologies.secrets import required_variables

__all__ = ["KAFKA_IMAGE", "render_fleet_compose"]

KAFKA_IMAGE = "apache/kafka:3.9.1"
_MOUNT = "/etc/mlexec"
_SITE = "${MLEXEC_SITE:?set MLEXEC_SITE: the member this project runs}"


def _kafka() -> dict[str, Any]:
    return {
        "image": KAFKA_IMAGE,
        "environment": {
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
            "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_LOG_DIRS": "/var/lib/kafka/data",
        },
        "volumes": ["kafka-data:/var/lib/kafka/data"],
        "restart": "unless-stopped",
    }


def render_fleet_compose(
    plan: Plan, topology_text: str, *, topology_file: str, image: str = "mlexec:latest"
) -> dict[str, str]:
    """``compose-<fleet>.yml`` and ``<fleet>/<member>.env`` for every fleet: name → text."""
    topology = plan.topology
    files: dict[str, str] = {}
    env = {var: f"${{{var}:?set {var}}}" for var in required_variables(topology_text)}
    mounts = [f"./{topology_file}:{_MOUNT}/{topology_file}:ro"]
    for fleet_name, fleet in topology.fleets.items():
        if fleet.inventory and not fleet.inventory.startswith("/"):
            mounts.append(f"./{fleet.inventory}:{_MOUNT}/{fleet.inventory}:ro")
        if not fleet.members:
            continue
        example = plan.usecases_at(fleet.names[0])
        member = fleet.names[0]
        stages = {stage for uc in example for stage, s in uc.sites if s == member}
        app = {
            "image": image,
            "environment": {**env, "MLEXEC_METRICS_ADDRESS": "0.0.0.0"},  # noqa: S104 - in the container
            "volumes": [*mounts, "state:${MLEXEC_STATE_DIR:?set MLEXEC_STATE_DIR}"],
            "depends_on": ["kafka"],
            "restart": "unless-stopped",
        }
        path = f"{_MOUNT}/{topology_file}"
        services: dict[str, Any] = {"kafka": _kafka()}
        if stages & {"dispatch", "infer", "store"}:
            services["pipeline"] = {**app, "command": ["mlexec", "run", path, "--site", _SITE]}
        if "connectors" in stages and any(uc.usecase.connectors for uc in example):
            services["connect"] = {**app, "command": ["mlexec", "connect", path, "--site", _SITE]}
        if "act" in stages and any(uc.usecase.outputs for uc in example):
            services["act"] = {**app, "command": ["mlexec", "act", path, "--site", _SITE]}
        if fleet.link is not None:
            target = fleet.link.target
            services["mirror-maker"] = {
                "image": KAFKA_IMAGE,
                "command": [
                    "/opt/kafka/bin/connect-mirror-maker.sh",
                    f"/etc/mm2/mm2-${{MLEXEC_SITE:?set MLEXEC_SITE}}-{target}.properties",
                ],
                "volumes": ["./deploy:/etc/mm2:ro"],
                "depends_on": ["kafka"],
                "restart": "unless-stopped",
            }
        doc = {
            "version": "3.8",
            "services": services,
            "volumes": {"kafka-data": {}, "state": {}},
        }
        header = (
            f"# fleet {fleet_name}: what each of its {len(fleet.members)} members runs.\n"
            f"# docker-compose --env-file {fleet_name}/<member>.env -f compose-{fleet_name}.yml up -d\n"
        )
        files[f"compose-{fleet_name}.yml"] = header + yaml.safe_dump(doc, sort_keys=False)
        for m in fleet.names:
            state = topology.sites[m].state_dir
            files[f"{fleet_name}/{m}.env"] = (
                f"COMPOSE_PROJECT_NAME=mlexec-{m}\nMLEXEC_SITE={m}\nMLEXEC_STATE_DIR={state}\n"
            )
    return files
