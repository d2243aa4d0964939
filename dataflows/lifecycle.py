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
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import polars as pl

from mlexec.connectors.kafka import produce_records
from mlexec.connectors.samplestore import SampleStore
from mlexec.models import change_routing, current_routing, publish_model, read_registry
from mlexec.operators.monitor import (
    accuracy_sql,
    feedback_table,
    grid_ks,
    sql_time,
    training_sql,
    variants_sql,
)
from mlexec.operators.reduce import ReductionError, load_entrypoint
from mlexec.operators.registry import Assembler, RegistryError, Routing
from mlexec.topologies.errors import MlexecError
from mlexec.topologies.plan import ALERTS_TOPIC, Plan, UseCasePlan

__all__ = ["Trained", "apply_policy", "compare", "lifecycle_event", "next_version", "train"]

_log = logging.getLogger(__name__)


def _accuracy(uc: UseCasePlan) -> Any:
    mon = uc.usecase.monitoring
    if mon is None or mon.accuracy is None:
        msg = f"{uc.name}: comparing versions needs monitoring.accuracy (output and metric)"
        raise MlexecError(msg)
    return mon.accuracy


def compare(store: SampleStore, uc: UseCasePlan, start: datetime, end: datetime) -> pl.DataFrame:
    """Per version and variant in ``[start, end)``: samples, latency, distance, errors."""
    acc = _accuracy(uc)
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
    metric = _accuracy(uc).metric
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


# ----------------------------------------------------------------------- training


@dataclass(frozen=True)
class Trained:
    """What a training run made and how it compared."""

    version: str
    rows: int
    holdout: int
    metric: str
    candidate_error: float
    production_version: str
    production_error: float
    published: bool
    change: str


def next_version(registry: Assembler, uc: UseCasePlan) -> str:
    """One more than the highest numeric version known, else a time stamp."""
    known = [v for (u, v) in registry.manifests if u == uc.name] + [uc.usecase.model.version]
    numbers = [int(v) for v in known if re.fullmatch(r"\d+", v)]
    return str(max(numbers) + 1) if numbers else time.strftime("%Y%m%d%H%M%S", time.gmtime())


def _onnx_bytes(made: Any) -> bytes:
    if isinstance(made, bytes | bytearray):
        return bytes(made)
    if isinstance(made, str | Path):
        return Path(made).read_bytes()
    if hasattr(made, "SerializeToString"):
        return bytes(made.SerializeToString())
    msg = f"a training entry point returns an ONNX model (ModelProto, bytes or a path), found {type(made).__name__}"
    raise MlexecError(msg)


def _errors(
    model: bytes | Path, frame: pl.DataFrame, uc: UseCasePlan, output: str, metric: str
) -> float:
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    name = uc.usecase.model.input_name or session.get_inputs()[0].name
    x = frame.select(list(uc.model_inputs)).to_numpy().astype(np.float32)
    outputs = {o.name: i for i, o in enumerate(session.get_outputs())}
    predicted = np.asarray(session.run(None, {name: x})[outputs[output]]).reshape(len(frame), -1)[
        :, 0
    ]
    label = frame["label"].to_numpy()
    if metric == "mae":
        return float(np.mean(np.abs(predicted - label)))
    if metric == "rmse":
        return float(np.sqrt(np.mean((predicted - label) ** 2)))
    return float(np.mean(predicted != label))


def _production_model(
    registry: Assembler, uc: UseCasePlan, routing: Routing
) -> tuple[str, bytes | Path]:
    version = routing.production or uc.usecase.model.version
    if (uc.name, version) in registry.manifests:
        return version, registry.artifact(uc.name, version)
    return version, Path(uc.usecase.model.path)


def train(
    plan: Plan,
    site: str,
    store: SampleStore,
    conf: dict[str, Any],
    uc: UseCasePlan,
    *,
    version: str | None = None,
    record_reference: Any = None,
) -> Trained:
    """Train, evaluate against production on the holdout, publish when better."""
    life = uc.usecase.lifecycle
    if life is None or life.training is None:
        msg = f"{uc.name} declares no lifecycle.training (entrypoint)"
        raise MlexecError(msg)
    spec = life.training
    acc = _accuracy(uc)
    db = f"`{store.database}`"
    feedback = f"{db}.`{feedback_table(uc)}`"
    frame = store.query(training_sql(f"{db}.`{uc.table}`", feedback, list(uc.features)))
    if frame.height < spec.min_rows:
        msg = f"{uc.name}: {frame.height} labelled samples; training needs {spec.min_rows}"
        raise MlexecError(msg)
    cut = int(frame.height * (1 - spec.holdout))
    fit_on, held_out = frame.head(cut), frame.tail(frame.height - cut)
    try:
        fit = load_entrypoint(spec.entrypoint)
    except ReductionError as exc:
        raise MlexecError(str(exc)) from exc
    data = _onnx_bytes(fit(fit_on.drop("record_id")))
    registry = read_registry(conf)
    routing = current_routing(registry, uc)
    new = version or next_version(registry, uc)
    prod_version, prod_model = _production_model(registry, uc, routing)
    candidate_error = _errors(data, held_out, uc, acc.output, acc.metric)
    production_error = _errors(prod_model, held_out, uc, acc.output, acc.metric)
    better = candidate_error < production_error
    change = f"not published: {acc.metric} {candidate_error:.4g} ≥ production {prod_version}'s {production_error:.4g}"
    if better:
        path = (
            Path(plan.topology.sites[site].state_dir)
            / "models"
            / "trained"
            / uc.name
            / f"{new}.onnx"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        stage, share = ("canary", spec.canary) if spec.canary > 0 else ("candidate", 0.0)
        try:
            _, published = publish_model(plan, conf, uc, path, new, stage, share)
        except RegistryError as exc:
            msg = f"the trained model cannot be published: {exc}"
            raise MlexecError(msg) from exc
        change = published.change
        if record_reference is not None:
            try:  # the new version's monitoring reference: its training data
                record_reference(uc, fit_on, f"model:{new}")
            except MlexecError as exc:
                _log.warning("%s: the training data of %s is not recorded: %s", uc.name, new, exc)
    return Trained(
        version=new,
        rows=fit_on.height,
        holdout=held_out.height,
        metric=acc.metric,
        candidate_error=candidate_error,
        production_version=prod_version,
        production_error=production_error,
        published=better,
        change=change,
    )
