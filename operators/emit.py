"""Encoding of what the flow publishes: predictions, samples and dead letters.

Predictions are JSON objects with the record (or window) id, key, event time, model
name, version and variant, the outputs and the inference latency — the contract in
DESIGN.md. Dead letters keep the original bytes as the message value; where they came
from and why travel in headers (the Kafka Connect DLQ convention).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import orjson

from operators.infer import Predictions
from operators.records import DeadLetter

__all__ = ["deadletter_headers", "prediction_values", "sample_values"]


def _output_lists(pred: Predictions) -> dict[str, list[object]]:
    return {name: arr.tolist() for name, arr in pred.outputs.items()}


def prediction_values(
    pred: Predictions, model: str, version: str, variant: str = "production"
) -> list[bytes]:
    """One JSON prediction per record of ``pred``.

    The fields shared by the whole batch are serialised once and spliced onto each
    record's own part: per-record dict building is the cost of this step.
    """
    recs = pred.records
    shared = orjson.dumps(
        {
            "model": model,
            "version": version,
            "variant": variant,
            "latency_ms": round(pred.latency_ms, 4),
            "batch": len(recs),
        }
    )
    tail = b"," + shared[1:]
    outputs = _output_lists(pred)
    if len(outputs) == 1:
        ((name, column),) = outputs.items()
        per_record = [{name: v} for v in column]
    else:
        names = list(outputs)
        per_record = [
            dict(zip(names, vals, strict=True)) for vals in zip(*outputs.values(), strict=True)
        ]
    dumps = orjson.dumps
    return [
        dumps({"id": rid, "key": key, "time": t, "outputs": out})[:-1] + tail
        for rid, key, t, out in zip(
            recs.record_ids, recs.keys, recs.times.tolist(), per_record, strict=True
        )
    ]


def sample_values(
    pred: Predictions,
    keep: np.ndarray,
    reasons: np.ndarray,
    features: Sequence[str],
    model: str,
    version: str,
    variant: str = "production",
) -> list[bytes]:
    """The sample rows (JSON) for the kept predictions: ids, inputs, outputs, why kept."""
    positions = np.flatnonzero(keep)
    if not len(positions):
        return []
    recs = pred.records
    now = int(time.time() * 1000)
    latency = pred.latency_ms
    feats = {f: recs.columns[f][positions].tolist() for f in features}
    outs = {n: a[positions].tolist() for n, a in pred.outputs.items()}
    rows = []
    for j, i in enumerate(positions.tolist()):
        row: dict[str, object] = {
            "record_id": recs.record_ids[i],
            "key": recs.keys[i],
            "event_time": int(recs.times[i]),
            "model": model,
            "model_version": version,
            "variant": variant,
            "sample_reason": str(reasons[i]),
            "inference_ms": latency,
            "sampled_at": now,
        }
        for f, values in feats.items():
            row[f] = values[j]
        for n, values in outs.items():
            row[n] = values[j]
        rows.append(orjson.dumps(row))
    return rows


def deadletter_headers(dead: DeadLetter) -> list[tuple[str, bytes]]:
    """Headers that say where a dead letter came from and why it is one."""
    return [
        ("mlexec.reason", dead.reason.encode()),
        ("mlexec.stage", dead.stage.encode()),
        ("mlexec.topic", dead.topic.encode()),
        ("mlexec.partition", str(dead.partition).encode()),
        ("mlexec.offset", str(dead.offset).encode()),
    ]
