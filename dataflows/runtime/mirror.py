"""``mlexec mirror``: a link's transfer on one machine, keeping MirrorMaker 2's contract.

Both directions of a link run as connector runners: a :class:`MirrorSource` reads the
topics the placement moves (plus alerts up and models down) on one site and the runner
produces them to ``<site>.<topic>`` on the other, partition for partition, with the
source's key, value and headers plus provenance headers. Each direction checkpoints
in the link source site's state directory and, like every connector, scans what it
already produced after its checkpoint — so a restart, or a cloud that was unreachable
for a while, neither loses nor re-sends a record. The edge's own dataflows never wait
for the link.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import Any

from mlexec.connectors.kafka import client_config, ensure_topics
from mlexec.connectors.runner import Checkpoint, ConnectorRunner, ConnectorStatus, run_all
from mlexec.connectors.sources.kafka import MirrorSource, priority_of
from mlexec.errors import MlexecError, TopologyError
from mlexec.topologies.plan import Plan, TopicSpec, remote_name

__all__ = ["LinkHealth", "SiteMirror", "prepare_mirror", "run_mirror"]

_log = logging.getLogger(__name__)


class SiteMirror:
    """The two directions of one link, ready to run."""

    def __init__(self, runners: list[ConnectorRunner], prepare: list[tuple[dict, list[TopicSpec]]]):
        self.runners = runners
        self._prepare = prepare

    @property
    def statuses(self) -> list[ConnectorStatus]:
        return [r.status for r in self.runners]

    def ensure_topics(self) -> None:
        """Create the remote topics (as many partitions as their sources) on both sides."""
        for conf, specs in self._prepare:
            ensure_topics(conf, specs)


def prepare_mirror(plan: Plan, link: str, *, once: bool = False) -> SiteMirror:
    """Runners for ``link`` given as ``SOURCE:TARGET`` (a link of the topology)."""
    topology = plan.topology
    source, _, target = link.partition(":")
    if not any(lk.source == source and lk.target == target for lk in topology.links):
        known = [f"{lk.source}:{lk.target}" for lk in topology.links]
        msg = f"no link {link!r} in topology {topology.name!r}; links: {known or 'none'}"
        raise TopologyError(msg)
    state_dir = Path(topology.sites[source].state_dir) / "mirror" / topology.name
    declared = next(lk for lk in topology.links if lk.source == source and lk.target == target)
    runners: list[ConnectorRunner] = []
    prepare: list[tuple[dict, list[TopicSpec]]] = []
    for transfer in plan.transfers():
        if {transfer.source, transfer.target} != {source, target}:
            continue
        src_conf = client_config(topology.sites[transfer.source].kafka)
        dst_conf = client_config(topology.sites[transfer.target].kafka)
        specs = [plan.topic_spec(t) for t in transfer.topics]
        remote = [
            TopicSpec(remote_name(transfer.source, s.name), s.partitions, s.config) for s in specs
        ]
        prepare.append((dst_conf, remote))
        name = f"{transfer.source}->{transfer.target}"
        runners.append(
            ConnectorRunner(
                connector_id=f"{topology.name}/mirror/{name}",
                status=ConnectorStatus("mirror", name, "mirror", origin=""),
                open_source=functools.partial(
                    MirrorSource,
                    transfer.source,
                    src_conf,
                    sorted(transfer.topics, key=priority_of),
                    once=once,
                    bandwidth=declared.bandwidth,
                    # a budget on what waits to go up, not on the models coming down
                    backlog=declared.backlog if transfer.source == declared.source else None,
                    target=transfer.target,
                ),
                conf=dst_conf,
                raw_topic=remote[0].name,
                deadletter_topic=None,
                checkpoint=Checkpoint(state_dir / f"{transfer.source}-{transfer.target}.json"),
                topics=[r.name for r in remote],
            )
        )
    return SiteMirror(runners, prepare)


class LinkHealth:
    """A link's health as the site at its start sees it, for ``mlexec.metrics``.

    Per snapshot (part ``mirror``): ``link_backlog`` (records waiting to go to the other
    side), ``link_sent`` and ``link_errors`` (since the process started) and their
    per-second rates. The link carries the snapshot up, so the cloud sees a member's
    backlog grow while its link is thin, and hears it again once a link is back.
    """

    def __init__(self, site: str, statuses: list[ConnectorStatus]) -> None:
        self.site = site
        self._up = [s for s in statuses if s.connector.startswith(f"{site}->")]
        self._last: tuple[float, dict[str, float]] | None = None

    def values(self) -> dict[str, float]:
        out = {"link_backlog": 0.0, "link_sent": 0.0, "link_errors": 0.0}
        for status in self._up:
            with status.lock:
                out["link_backlog"] += float(status.behind or 0)
                out["link_sent"] += float(status.produced)
                out["link_errors"] += float(status.errors)
        return out

    def report(self) -> dict[str, Any]:
        now = time.time()
        values = self.values()
        rows = [{"usecase": "", "name": n, "value": v} for n, v in values.items()]
        if self._last is not None:
            then, before = self._last
            span = max(now - then, 1e-3)
            for name in ("link_sent", "link_errors"):
                rate = max(0.0, values[name] - before[name]) / span
                rows.append({"usecase": "", "name": f"{name}_per_s", "value": rate})
        self._last = (now, values)
        return {"time": int(now * 1000), "site": self.site, "part": "mirror", "rows": rows}


def run_mirror(
    mirror: SiteMirror,
    stop: threading.Event | None = None,
    *,
    once: bool = False,
    health: tuple[str, dict[str, Any], float] | None = None,
) -> None:
    """Run both directions until ``stop`` is set, or with ``once`` until both caught up.

    ``health``: (this site, its client settings, seconds) — send the link's health
    (:class:`LinkHealth`) to the site's ``mlexec.metrics`` that often.
    """
    stop = stop or threading.Event()
    reporter = None
    if health is not None:
        from mlexec.runtime.health import Reporter

        site, conf, every = health
        reporter = Reporter(LinkHealth(site, mirror.statuses), conf, every=every).start()
    try:
        _run_mirror(mirror, stop, once=once)
    finally:
        if reporter is not None:
            reporter.stop()


def _run_mirror(mirror: SiteMirror, stop: threading.Event, *, once: bool) -> None:
    delay = 0.5
    while not stop.is_set():  # the other side may be unreachable for now: wait for it
        try:
            mirror.ensure_topics()
            break
        except MlexecError as exc:
            if once:
                raise
            _log.warning(
                "mirror: cannot prepare the remote topics (%s); again in %.0fs", exc, delay
            )
            stop.wait(delay)
            delay = min(delay * 2, 30.0)
    run_all(mirror.runners, stop, once=once, kind="mirror")
