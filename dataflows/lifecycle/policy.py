"""Closing the loop: compare the serving versions, act on the policy, train new ones.

- :func:`compare` — per model version and variant over a window of the sample store:
  samples, inference latency, the distance between its prediction distribution and
  production's (KS, from SQL quantile grids), and its error against the labels.
- :func:`apply_policy` — with a canary serving: roll it back when it is worse than
  production by more than the topology allows (or its predictions drift too far from
  production's), promote it when it is better by enough; each act is recorded on
  ``mlexec.alerts`` (kind ``lifecycle``).
- :func:`train` — the use case's packaged training entry point on the labelled samples,
  evaluated on the latest rows held out against the production version; a better model
  is published (as a canary when the topology says so) and its training data recorded as
  the monitoring reference of its version.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

import orjson
import polars as pl

from mlexec.connectors.kafka import produce_records
from mlexec.connectors.samplestore import SampleStore
from mlexec.errors import MlexecError
from mlexec.lifecycle.registry import change_routing, current_routing, read_registry
from mlexec.monitoring.sql import (
    accuracy_sql,
    feedback_table,
    grid_ks,
    sql_time,
    variants_sql,
)
from mlexec.topologies.plan import ALERTS_TOPIC, UseCasePlan

__all__ = [
    "accuracy_spec",
    "compare_latest",
    "apply_policy",
    "compare",
    "lifecycle_event",
]

_log = logging.getLogger(__name__)


def accuracy_spec(uc: UseCasePlan) -> Any:
    """The use case's ``monitoring.accuracy``; comparing and training need one."""
    mon = uc.usecase.monitoring
    if mon is None or mon.accuracy is None:
        msg = f"{uc.name}: comparing versions needs monitoring.accuracy (output and metric)"
        raise MlexecError(msg)
    return mon.accuracy


def compare(store: SampleStore, uc: UseCasePlan, start: datetime, end: datetime) -> pl.DataFrame:
    """Per version and variant in ``[start, end)``: samples, latency, distance, errors."""
    acc = accuracy_spec(uc)
    db = f"`{store.database}`"
    where = f"event_time >= {sql_time(start)} AND event_time < {sql_time(end)}"
    samples, feedback = f"{db}.`{uc.table}`", f"{db}.`{feedback_table(uc)}`"
    stats = store.query(variants_sql(samples, acc.output, where))
    errors = store.query(accuracy_sql(samples, feedback, acc.output, where))
    if not stats.height:
        return pl.DataFrame()
    production = stats.filter(pl.col("variant") == "production")
    reference = production["grid"][0].to_list() if production.height else []
    rows = []
    for row in stats.iter_rows(named=True):
        err = errors.filter(
            (pl.col("version") == row["version"]) & (pl.col("variant") == row["variant"])
        )
        labelled = int(err["labelled"][0]) if err.height else 0
        rows.append(
            {
                "version": row["version"],
                "variant": row["variant"],
                "samples": row["samples"],
                "latency_p50_ms": row["latency_p50_ms"],
                "latency_p99_ms": row["latency_p99_ms"],
                "mean_output": row["mean_output"],
                "ks_vs_production": grid_ks(row["grid"], reference) if reference else None,
                "labelled": labelled,
                acc.metric: float(err[acc.metric][0]) if labelled else None,
            }
        )
    return pl.DataFrame(rows)


def compare_latest(store: SampleStore, uc: UseCasePlan, window: timedelta) -> pl.DataFrame:
    """:func:`compare` over the ``window`` of samples that ends with the newest one."""
    newest = store.query(f"SELECT max(event_time) AS t FROM `{store.database}`.`{uc.table}`")
    end = newest["t"][0] if newest.height else None
    if end is None:
        msg = f"{uc.name} has no samples yet: nothing to compare"
        raise MlexecError(msg)
    return compare(store, uc, end - window, end + timedelta(milliseconds=1))


def lifecycle_event(
    conf: dict[str, Any], site: str, uc: UseCasePlan, severity: str, message: str
) -> None:
    """Record a life-cycle act (promotion, rollback, training) on ``mlexec.alerts``."""
    _log.warning("%s", message)
    event = {
        "kind": "lifecycle",
        "usecase": uc.name,
        "site": site,
        "severity": severity,
        "message": message,
        "at": int(time.time() * 1000),
    }
    produce_records(conf, ALERTS_TOPIC, [(uc.name.encode(), orjson.dumps(event))])


def apply_policy(
    store: SampleStore,
    conf: dict[str, Any],
    site: str,
    uc: UseCasePlan,
    start: datetime,
    end: datetime,
) -> str | None:
    """Promote or roll back the use case's canary as its lifecycle says; what was done."""
    life = uc.usecase.lifecycle
    if life is None:
        return None
    routing = current_routing(read_registry(conf), uc)
    if routing.canary is None or routing.production is None:
        return None
    canary, production = routing.canary[0], routing.production
    metric = accuracy_spec(uc).metric
    table = compare(store, uc, start, end)
    if not table.height:
        return None

    def row(version: str, variant: str) -> dict[str, Any] | None:
        hit = table.filter((pl.col("version") == version) & (pl.col("variant") == variant))
        return hit.row(0, named=True) if hit.height else None

    mine, theirs = row(canary, "canary"), row(production, "production")
    if mine is None or theirs is None:
        return None
    done: str | None = None
    distance = mine["ks_vs_production"]
    if (
        life.rollback_when_distance_above is not None
        and min(mine["samples"], theirs["samples"]) >= life.min_samples
        and distance is not None
        and distance > life.rollback_when_distance_above
    ):
        done = (
            f"canary {canary}'s predictions are {distance:.3f} (KS) from production {production}'s"
        )
        change_routing(conf, uc, lambda r: r.retire(canary))
        lifecycle_event(
            conf, site, uc, "warning", f"{uc.name}: {done}: rolled back, {canary} retired"
        )
        return f"rolled back {canary}"
    if min(mine["labelled"], theirs["labelled"]) < life.min_labels:
        return None
    gap = mine[metric] - theirs[metric]  # > 0: the canary errs more
    text = f"{metric} {mine[metric]:.4g} against production {production}'s {theirs[metric]:.4g}"
    if life.rollback_when_worse_by is not None and gap > life.rollback_when_worse_by:
        change_routing(conf, uc, lambda r: r.retire(canary))
        lifecycle_event(
            conf, site, uc, "warning", f"{uc.name}: canary {canary} {text}: rolled back, retired"
        )
        done = f"rolled back {canary}"
    elif life.promote_when_better_by is not None and -gap >= life.promote_when_better_by:
        change_routing(conf, uc, lambda r: r.promote(canary))
        lifecycle_event(
            conf, site, uc, "info", f"{uc.name}: canary {canary} {text}: promoted to production"
        )
        done = f"promoted {canary}"
    return done
