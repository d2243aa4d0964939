"""What the infrastructure needs, rendered from a topology: MirrorMaker 2 properties, Grafana.

Pure text, no I/O: ``mlexec render TOPOLOGY mm2`` writes it. One properties file per
link, for MirrorMaker 2 in dedicated mode (``connect-mirror-maker.sh``): both clusters
with their security, and both replication flows with allowlists derived from the
placement — nothing the other side does not need. Exactly-once source support is on
(Kafka ≥ 3.5), so a restarted MirrorMaker neither loses nor re-sends records, and
consumer offsets are checkpointed and synced.
"""

from __future__ import annotations

import re

from mlexec.topologies.plan import Plan
from mlexec.topologies.schema import KafkaSettings, TransferLink

__all__ = [
    "GRAFANA_DATASOURCE",
    "grafana_panels",
    "grafana_site_query",
    "render_grafana",
    "render_mm2",
]

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
    up, down = plan.transfer(a, b), plan.transfer(b, a)
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


# ------------------------------------------------------------------- Grafana

#: The datasource every rendered panel queries (the ClickHouse plugin's type).
GRAFANA_DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "mlexec-clickhouse"}


def _panel(
    pid: int, title: str, sql: str, x: int, y: int, kind: str = "timeseries", w: int = 12
) -> dict[str, object]:
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": GRAFANA_DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": 8},
        "targets": [
            {
                "refId": "A",
                "datasource": GRAFANA_DATASOURCE,
                "editorType": "sql",
                "queryType": "timeseries" if kind == "timeseries" else "table",
                "format": 0 if kind == "timeseries" else 1,
                "rawSql": sql,
            }
        ],
    }


def grafana_site_query(database: str) -> str:
    """What the dashboard's ``$site`` variable offers: every site that reports health here."""
    return f"SELECT DISTINCT site FROM `{database}`.mlexec_metrics ORDER BY site"


def grafana_panels(database: str) -> list[dict[str, object]]:
    """The monitoring dashboard's panels; ``$usecase``, ``$statistic``, ``$site`` its variables.

    ``$site`` picks the sites whose health and alerts are shown: a fleet's members, say.
    """
    db = f"`{database}`"
    uc = "usecase = '${usecase}'"
    sites = "site IN (${site:singlequote})"

    def metric(names: str) -> str:
        return (
            f"SELECT time, concat(site, ' ', name) AS series, max(value) AS value "
            f"FROM {db}.mlexec_metrics WHERE {uc} AND {sites} AND name IN ({names}) "
            "AND $__timeFilter(time) GROUP BY time, series ORDER BY time"
        )

    return [
        _panel(
            1,
            "Drift per watched value ($statistic)",
            f"SELECT time, column, value FROM {db}.mlexec_drift WHERE {uc} "
            "AND statistic = '${statistic}' AND $__timeFilter(time) ORDER BY time",
            0,
            0,
        ),
        _panel(
            2,
            "Data quality (missing and out-of-range shares)",
            f"SELECT time, concat(column, ' ', statistic) AS series, value FROM {db}.mlexec_drift "
            f"WHERE {uc} AND statistic IN ('null_rate', 'out_of_range') AND $__timeFilter(time) "
            "ORDER BY time",
            12,
            0,
        ),
        _panel(
            3,
            "Accuracy per model version / variant",
            f"SELECT time, concat(column, ' ', statistic) AS series, value FROM {db}.mlexec_drift "
            f"WHERE {uc} AND statistic IN ('mae', 'rmse', 'error_rate') AND $__timeFilter(time) "
            "ORDER BY time",
            0,
            8,
        ),
        _panel(4, "Inference latency (ms)", metric("'latency_p50_ms', 'latency_p99_ms'"), 12, 8),
        _panel(
            5,
            "Throughput (records/s)",
            metric("'records_in_per_s', 'predictions_per_s', 'deadletters_per_s'"),
            0,
            16,
        ),
        _panel(
            6, "Lag and sample-store backlog (records)", metric("'lag', 'store_backlog'"), 12, 16
        ),
        _panel(
            7,
            "Alerts",
            f"SELECT time, severity, kind, site, message FROM {db}.mlexec_alerts WHERE {uc} "
            f"AND {sites} AND $__timeFilter(time) ORDER BY time DESC LIMIT 200",
            0,
            24,
            kind="table",
            w=24,
        ),
    ]


def render_grafana(plan: Plan, site: str) -> dict[str, str]:
    """Grafana provisioning for ``site``'s ClickHouse server: relative path → file text.

    A datasource (password from ``$CLICKHOUSE_PASSWORD`` in Grafana's environment, never
    written), a dashboard provider, and the dashboard: drift, quality, accuracy,
    latency, throughput, lag and alerts of the use cases stored there.
    """
    import json
    from urllib.parse import unquote, urlparse

    url = urlparse(plan.topology.sites[site].sample_store)
    if url.scheme not in ("clickhouse", "clickhouses"):
        msg = f"sites.{site}.sample_store: Grafana reads a ClickHouse server; found {url.scheme}://"
        raise ValueError(msg)
    database = url.path.strip("/") or "mlexec"
    datasource = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": f"mlexec {site}",
                **GRAFANA_DATASOURCE,
                "access": "proxy",
                "isDefault": True,
                "jsonData": {
                    "host": url.hostname,
                    "port": url.port or 8123,
                    "protocol": "http",
                    "secure": url.scheme == "clickhouses",
                    "username": unquote(url.username or "default"),
                    "defaultDatabase": database,
                },
                "secureJsonData": {"password": "${CLICKHOUSE_PASSWORD}"},
            }
        ],
    }
    provider = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "mlexec",
                "type": "file",
                "options": {"path": "/var/lib/grafana/dashboards"},
            }
        ],
    }
    stored = [uc.name for uc in plan.chosen_at(site, stage="store")]
    statistics = ["psi", "ks", "js", "wasserstein", "mean_shift", "quantile_shift"]
    dashboard = {
        "uid": f"mlexec-{plan.topology.name}-{site}",
        "title": f"mlexec · {plan.topology.name} · {site}",
        "schemaVersion": 39,
        "time": {"from": "now-24h", "to": "now"},
        "refresh": "1m",
        "templating": {
            "list": [
                {
                    "name": "usecase",
                    "type": "custom",
                    "query": ",".join(stored),
                    "current": {"text": stored[0], "value": stored[0]} if stored else {},
                },
                {
                    "name": "statistic",
                    "type": "custom",
                    "query": ",".join(statistics),
                    "current": {"text": "psi", "value": "psi"},
                },
                {
                    # the site itself and every site reporting to it (a fleet's members)
                    "name": "site",
                    "type": "query",
                    "datasource": GRAFANA_DATASOURCE,
                    "query": grafana_site_query(database),
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "panels": grafana_panels(database),
    }
    return {
        "grafana/provisioning/datasources/mlexec.yaml": json.dumps(datasource, indent=2),
        "grafana/provisioning/dashboards/mlexec.yaml": json.dumps(provider, indent=2),
        f"grafana/dashboards/mlexec-{site}.json": json.dumps(dashboard, indent=2),
    }
