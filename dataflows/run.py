"""Run a site: create its topics and tables, then execute its dataflow(s).

Continuous runs execute one dataflow holding every stage placed on the site.
``until_end`` runs (batch jobs, tests, the demo) go in two phases — first the use
cases' pipelines until every raw partition is read to its end, then the store until
every samples partition is — because the store can only know where the samples end
once the pipelines have stopped writing them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from connectors.kafka import client_config, ensure_topics
from connectors.samplestore import open_store
from dataflows.site import build_flow
from dataflows.usecase import UseCaseRuntime
from topologies.errors import TopologyError
from topologies.plan import Plan

__all__ = ["SiteRun", "prepare_site", "run_site"]

_log = logging.getLogger(__name__)


@dataclass
class SiteRun:
    """What a site runs: its use cases' pipelines and stores, checked and loaded."""

    plan: Plan
    site: str
    process: list[UseCaseRuntime]
    store: list[UseCaseRuntime]


def prepare_site(
    plan: Plan, site: str, usecase: str | None = None, source: str = "<topology>"
) -> SiteRun:
    """Load and check every use case the site runs (no side effects)."""
    plan.require_site(site)
    chosen = plan.usecases_at(site)
    if usecase is not None:
        if usecase not in plan.usecases:
            msg = f"no use case {usecase!r} in topology; use cases: {sorted(plan.usecases)}"
            raise TopologyError(msg)
        chosen = [uc for uc in chosen if uc.name == usecase]
    process, store = [], []
    for uc in chosen:
        on_site = {stage for stage, s in uc.sites if s == site}
        if not ({"dispatch", "infer", "store"} & on_site):
            continue
        rt = UseCaseRuntime.build(uc, source)
        if "dispatch" in on_site or "infer" in on_site:
            if not {"dispatch", "infer"} <= on_site:
                msg = (
                    f"{source}: usecases.{uc.name}.placement: dispatch on {uc.site('dispatch')!r} "
                    f"and infer on {uc.site('infer')!r} — running them on different sites needs "
                    "the <uc>.reduced hand-over, which this version does not run yet"
                )
                raise TopologyError(msg)
            process.append(rt)
        if "store" in on_site:
            store.append(rt)
    return SiteRun(plan=plan, site=site, process=process, store=store)


def _recovery(state_dir: Path, flow: Dataflow) -> RecoveryConfig:
    db_dir = state_dir / "recovery" / flow.flow_id
    if not db_dir.exists():
        db_dir.mkdir(parents=True)
        init_db_dir(db_dir, 1)
    return RecoveryConfig(db_dir)


def _execute(flow: Dataflow, state_dir: Path | None, workers: int, epoch: timedelta) -> None:
    recovery = _recovery(state_dir, flow) if state_dir is not None else None
    cli_main(flow, workers_per_process=workers, epoch_interval=epoch, recovery_config=recovery)


def run_site(
    run: SiteRun,
    *,
    until_end: bool = False,
    workers: int = 1,
    recovery: bool = True,
    epoch: timedelta = timedelta(seconds=2),
    batch_size: int = 1000,
) -> None:
    """Create topics and tables, then run the site's dataflow(s) in this process."""
    site = run.plan.topology.sites[run.site]
    conf = client_config(site.kafka)
    ensure_topics(conf, run.plan.topics_at(run.site))
    if run.store:
        with open_store(site.sample_store) as store:
            for rt in run.store:
                store.ensure_table(rt.table)
    state_dir = Path(site.state_dir) if recovery else None
    name = f"{run.plan.topology.name}-{run.site}"
    if not until_end:
        flow = build_flow(
            name,
            conf,
            process=run.process,
            store=run.store,
            store_url=site.sample_store,
            batch_size=batch_size,
            producers=workers,
        )
        _execute(flow, state_dir, workers, epoch)
        return
    if run.process:
        flow = build_flow(
            f"{name}-process",
            conf,
            process=run.process,
            until_end=True,
            batch_size=batch_size,
            producers=workers,
        )
        _execute(flow, state_dir, workers, epoch)
    if run.store:
        flow = build_flow(
            f"{name}-store", conf, store=run.store, store_url=site.sample_store, until_end=True
        )
        _execute(flow, state_dir, 1, epoch)
