"""The connectors of a site: one :class:`ConnectorRunner` per declared connector, in threads.

``mlexec connect`` runs every connector of the use cases whose ``connectors`` stage
is placed on the site. Each checkpoints under
``<state_dir>/connectors/<topology>/<usecase>.<name>.json``.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

from mlexec.connectors.kafka import client_config
from mlexec.connectors.runner import Checkpoint, ConnectorRunner, ConnectorStatus, SiteParts
from mlexec.connectors.sources import open_source
from mlexec.topologies.plan import Plan, TopicSpec

__all__ = ["SiteConnectors", "prepare_connectors", "run_connectors"]


#: The runners of a site's connectors and the topics they write.
SiteConnectors = SiteParts[ConnectorRunner]


def prepare_connectors(
    plan: Plan, site: str, usecase: str | None = None, *, once: bool = False
) -> SiteConnectors:
    """Build (without starting) the runners of ``site``'s connectors."""
    topology = plan.topology
    settings = topology.sites[site]
    conf = client_config(settings.kafka)
    state_dir = Path(settings.state_dir) / "connectors" / topology.name
    runners: list[ConnectorRunner] = []
    topics: dict[str, TopicSpec] = {}
    for uc in plan.chosen_at(site, usecase, "connectors"):
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
    return SiteParts("connector", site, runners, list(topics.values()), conf)


def run_connectors(
    connectors: SiteConnectors, stop: threading.Event | None = None, *, once: bool = False
) -> None:
    """Run every connector until ``stop`` is set, or with ``once`` until each is caught up."""
    connectors.run(stop, once=once)
