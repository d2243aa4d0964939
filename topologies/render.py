"""What the infrastructure needs, rendered from a topology: MirrorMaker 2 properties.

Pure text, no I/O: ``mlexec render TOPOLOGY mm2`` writes it. One properties file per
link, for MirrorMaker 2 in dedicated mode (``connect-mirror-maker.sh``): both clusters
with their security, and both replication flows with allowlists derived from the
placement — nothing the other side does not need. Exactly-once source support is on
(Kafka ≥ 3.5), so a restarted MirrorMaker neither loses nor re-sends records, and
consumer offsets are checkpointed and synced.
"""

from __future__ import annotations

import re

from topologies.plan import Plan, Transfer
from topologies.schema import KafkaSettings, TransferLink

__all__ = ["render_mm2"]

_JAAS = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def _escape(value: str) -> str:
    """A value for a Java properties file (backslashes doubled)."""
    return value.replace("\\", "\\\\")


def _allowlist(topics: tuple[str, ...]) -> str:
    """MM2 ``topics`` is a list of regexes: match each name exactly."""
    return ", ".join(_escape(re.escape(t)) for t in topics)


def _cluster(alias: str, kafka: KafkaSettings) -> list[str]:
    sec = kafka.security
    lines = [
        f"{alias}.bootstrap.servers = {kafka.bootstrap}",
        f"{alias}.security.protocol = {sec.protocol.upper()}",
    ]
    if sec.ca:
        lines += [
            f"{alias}.ssl.truststore.type = PEM",
            f"{alias}.ssl.truststore.location = {sec.ca}",
        ]
    if sec.cert and sec.key:
        # PEM keystore contents, read from the files by the directory config provider
        lines.append(f"{alias}.ssl.keystore.type = PEM")
        for name, path in (("certificate.chain", sec.cert), ("key", sec.key)):
            folder, _, file = path.rpartition("/")
            lines.append(f"{alias}.ssl.keystore.{name} = ${{dir:{folder or '.'}:{file}}}")
    if sec.sasl is not None:
        module = _JAAS[sec.sasl.mechanism]
        password = sec.sasl.password.get_secret_value().replace('"', '\\"')
        lines += [
            f"{alias}.sasl.mechanism = {sec.sasl.mechanism}",
            f'{alias}.sasl.jaas.config = {module} required username="{sec.sasl.username}" '
            f'password="{_escape(password)}";',
        ]
    return lines


def render_mm2(plan: Plan, link: TransferLink) -> str:
    """MirrorMaker 2 properties for ``link``: both clusters, both flows, their allowlists."""
    topology = plan.topology
    a, b = link.source, link.target
    flows: dict[tuple[str, str], Transfer] = {
        (t.source, t.target): t for t in plan.transfers() if {t.source, t.target} == {a, b}
    }
    up, down = flows[(a, b)], flows[(b, a)]
    lines = [
        f"# MirrorMaker 2 for the link {a} -> {b} of topology {topology.name!r}, rendered by",
        "# `mlexec render`; run with connect-mirror-maker.sh. Remote topics are named",
        "# <source site>.<topic>. Holds credentials when the sites use SASL: keep it private.",
        f"clusters = {a}, {b}",
        "",
        *_cluster(a, topology.sites[a].kafka),
        *_cluster(b, topology.sites[b].kafka),
        "",
        f"# up: what the placement needs on {b}, and alerts",
        f"{a}->{b}.enabled = true",
        f"{a}->{b}.topics = {_allowlist(up.topics)}",
        f"# down: models (and what the placement needs on {a})",
        f"{b}->{a}.enabled = true",
        f"{b}->{a}.topics = {_allowlist(down.topics)}",
        "",
        "replication.policy.class = org.apache.kafka.connect.mirror.DefaultReplicationPolicy",
        "replication.policy.separator = .",
        "exactly.once.source.support = enabled",
        "sync.topic.configs.enabled = true",
        "sync.group.offsets.enabled = true",
        "emit.checkpoints.enabled = true",
        "emit.heartbeats.enabled = true",
        "refresh.topics.interval.seconds = 30",
        "offset-syncs.topic.location = target",
        "# one broker per site in the compose stack; raise to 3 on real clusters",
        "replication.factor = 1",
        "checkpoints.topic.replication.factor = 1",
        "heartbeats.topic.replication.factor = 1",
        "offset-syncs.topic.replication.factor = 1",
        "offset.storage.replication.factor = 1",
        "status.storage.replication.factor = 1",
        "config.storage.replication.factor = 1",
        "config.providers = dir",
        "config.providers.dir.class = org.apache.kafka.common.config.provider.DirectoryConfigProvider",
    ]
    return "\n".join(lines) + "\n"
