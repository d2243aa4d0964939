"""The connectors of a site: one :class:`ConnectorRunner` per declared connector, in threads.

``mlexec connect`` runs every connector of the use cases whose ``connectors`` stage
is placed on the site. Each checkpoints under
``<state_dir>/connectors/<topology>/<usecase>.<name>.json``.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

from connectors.kafka import client_config, ensure_topics
from connectors.runner import Checkpoint, ConnectorRunner, ConnectorStatus, run_all
from connectors.sources import open_source
from topologies.errors import TopologyError
from topologies.plan import Plan, TopicSpec

__all__ = ["SiteConnectors", "prepare_connectors", "run_connectors"]


@dataclass(frozen=True)
class SiteConnectors:
    """The runners of one site's connectors and the topics they write."""

    site: str
    runners: list[ConnectorRunner]
    topics: list[TopicSpec]
    kafka_conf: dict[str, object]

    @property
    def statuses(self) -> list[ConnectorStatus]:
        return [r.status for r in self.runners]


def prepare_connectors(
    plan: Plan, site: str, usecase: str | None = None, *, once: bool = False
) -> SiteConnectors:
    """Build (without starting) the runners of ``site``'s connectors."""
    plan.require_site(site)
    topology = plan.topology
    if usecase is not None and usecase not in plan.usecases:
        msg = f"no use case {usecase!r} in topology {topology.name!r}; use cases: {sorted(plan.usecases)}"
        raise TopologyError(msg)
    settings = topology.sites[site]
    conf = client_config(settings.kafka)
    state_dir = Path(settings.state_dir) / "connectors" / topology.name
    runners: list[ConnectorRunner] = []
    topics: dict[str, TopicSpec] = {}
    for uc in plan.usecases.values():
        if (usecase is not None and uc.name != usecase) or uc.site("connectors") != site:
            continue
        for config in uc.usecase.connectors:
            name = config.name or config.kind
            runners.append(
                ConnectorRunner(
                    connector_id=f"{topology.name}/{uc.name}/{name}",
                    status=ConnectorStatus(uc.name, name, config.kind, origin=""),
                    open_source=functools.partial(
                        open_source, config, uc.usecase.input, kafka_conf=conf, once=once
                    ),
                    conf=conf,
                    raw_topic=uc.raw_topic,
                    deadletter_topic=uc.deadletter_topic,
                    checkpoint=Checkpoint(state_dir / f"{uc.name}.{name}.json"),
                    batch=config.batch,
                )
            )
            topics.setdefault(uc.raw_topic, TopicSpec(uc.raw_topic, uc.usecase.input.partitions))
            topics.setdefault(uc.deadletter_topic, TopicSpec(uc.deadletter_topic, 1))
    return SiteConnectors(site, runners, list(topics.values()), conf)


def run_connectors(
    connectors: SiteConnectors, stop: threading.Event | None = None, *, once: bool = False
) -> None:
    """Run every connector until ``stop`` is set, or with ``once`` until each is caught up.

    With ``once`` the first connector error is raised after all have stopped; running
    continuously, a failing connector retries from its checkpoint with backoff.
    """
    if not connectors.runners:
        msg = f"site {connectors.site!r} has no connectors to run"
        raise TopologyError(msg)
    ensure_topics(dict(connectors.kafka_conf), connectors.topics)
    run_all(connectors.runners, stop or threading.Event(), once=once, kind="connector")
