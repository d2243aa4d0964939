"""Training: the use case's packaged entry point on the labelled samples, published if better.

The model is evaluated on the latest rows held out against the production version; a
better model is published (as a canary when the topology says so) and its training data
recorded as the monitoring reference of its version.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mlexec.connectors.samplestore import SampleStore
from mlexec.errors import MlexecError
from mlexec.lifecycle.policy import accuracy_spec
from mlexec.lifecycle.protocol import Assembler, RegistryError, Routing
from mlexec.lifecycle.registry import current_routing, publish_model, read_registry
from mlexec.monitoring.sql import (
    feedback_table,
    training_sql,
)
from mlexec.operators.infer import model_for
from mlexec.operators.records import Records
from mlexec.operators.reduce import ReductionError, load_entrypoint
from mlexec.topologies.plan import Plan, UseCasePlan

__all__ = [
    "Trained",
    "next_version",
    "train",
]

_log = logging.getLogger(__name__)


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
    with tempfile.TemporaryDirectory(prefix="mlexec-eval-") as tmp:
        path = model if isinstance(model, Path) else Path(tmp) / "model.onnx"
        if isinstance(model, bytes):
            path.write_bytes(model)
        served = model_for(uc, path)
        rows = len(frame)
        records = Records(
            record_ids=[str(i) for i in range(rows)],
            ids=np.arange(rows, dtype=np.uint64),
            keys=[""] * rows,
            times=np.zeros(rows, dtype=np.int64),
            columns={c: frame[c].to_numpy() for c in served.features},
        )
        predicted = np.asarray(served(records).outputs[output]).reshape(rows, -1)[:, 0]
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
    acc = accuracy_spec(uc)
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
