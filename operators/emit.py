"""Encoding of what the flow publishes: predictions, samples and dead letters.

Predictions are JSON objects with the record (or window) id, key, event time, model
name, version and variant, the outputs and the inference latency — the contract in
DESIGN.md. Dead letters keep the original bytes as the message value; where they came
from and why travel in headers (the Kafka Connect DLQ convention).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from mlexec.operators.dispatch import Reply, Request
from mlexec.operators.infer import Predictions
from mlexec.operators.records import DeadLetter, Records
from mlexec.operators.reduce import MEMBERS_COLUMN, Reduced

__all__ = [
    "DEADLETTER_MAX_BYTES",
    "deadletter_headers",
    "deadletter_value",
    "error_reply",
    "prediction_values",
    "read_reduced",
    "reduced_value",
    "reply_value",
    "sample_values",
]


def _output_lists(pred: Predictions) -> dict[str, list[object]]:
    return {name: arr.tolist() for name, arr in pred.outputs.items()}


def prediction_values(
    pred: Predictions,
    model: str,
    version: str,
    variant: str = "production",
    *,
    correction: bool = False,
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
            **({"correction": True} if correction else {}),
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
    members = recs.columns.get(MEMBERS_COLUMN)
    if members is not None:  # a sequence: the ids of the records the prediction is about
        return [
            dumps({"id": rid, "key": key, "time": t, "outputs": out, "records": ids})[:-1] + tail
            for rid, key, t, out, ids in zip(
                recs.record_ids, recs.keys, recs.times.tolist(), per_record, members, strict=True
            )
        ]
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


#: The largest dead-letter value produced: Kafka's default message limit is 1 MB
#: (librdkafka's ``message.max.bytes``, a topic's ``max.message.bytes``), and a record
#: too large to re-produce must not halt the flow at its offset.
DEADLETTER_MAX_BYTES = 512 * 1024


def deadletter_value(dead: DeadLetter) -> bytes:
    """The dead letter's bytes: the original, cut to :data:`DEADLETTER_MAX_BYTES`."""
    value = dead.value or b""
    return value if len(value) <= DEADLETTER_MAX_BYTES else value[:DEADLETTER_MAX_BYTES]


def deadletter_headers(dead: DeadLetter) -> list[tuple[str, bytes]]:
    """Headers that say where a dead letter came from and why it is one.

    A value cut to the limit says so, with its original size: the whole original stays
    at ``mlexec.topic`` / ``mlexec.partition`` / ``mlexec.offset`` while its retention lasts.
    """
    size = len(dead.value or b"")
    reason = dead.reason
    if size > DEADLETTER_MAX_BYTES:
        reason += (
            f" (the value of {size:,} bytes is cut to its first {DEADLETTER_MAX_BYTES:,}; "
            "the original is at the source topic, partition and offset)"
        )
    headers = [
        ("mlexec.reason", reason[:4096].encode()),
        ("mlexec.stage", dead.stage.encode()),
        ("mlexec.topic", dead.topic.encode()),
        ("mlexec.partition", str(dead.partition).encode()),
        ("mlexec.offset", str(dead.offset).encode()),
    ]
    if size > DEADLETTER_MAX_BYTES:
        headers += [("mlexec.truncated", b"true"), ("mlexec.original_size", str(size).encode())]
    return headers


def reply_value(request: Request, predictions: list[bytes]) -> bytes:
    """The answer to a request: its id and its predictions (JSON objects)."""
    head = orjson.dumps({"request_id": request.request_id, "ok": True})[:-1]
    return head + b',"predictions":[' + b",".join(predictions) + b"]}"


def error_reply(reply: Reply) -> bytes:
    """The answer to a request that could not be scored: its id and why."""
    return orjson.dumps({"request_id": reply.request.request_id, "ok": False, "error": reply.error})


def reduced_value(reduced: Reduced, columns: Sequence[str]) -> bytes:
    """One dispatch's reduced rows as one ``<uc>.reduced`` message (column-wise JSON).

    A message per dispatch keeps what the dispatch said — a request to answer, a
    correction — with its rows, so inference on another site runs the same batches.
    """
    recs = reduced.records
    request = reduced.request
    return orjson.dumps(
        {
            "correction": reduced.correction,
            "request": None
            if request is None
            else {"request_id": request.request_id, "reply_to": request.reply_to},
            "record_id": recs.record_ids,
            "id": recs.ids,
            "key": recs.keys,
            "time": recs.times,
            "columns": {c: _jsonable(recs.columns[c]) for c in columns},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def _jsonable(column: np.ndarray) -> Any:
    return column.tolist() if column.dtype == object else column


def _column(values: list[Any]) -> np.ndarray:
    """A reduced column back from JSON: numbers (``null`` is NaN) or text."""
    if any(isinstance(v, str) for v in values):
        return np.asarray(values, dtype=object)
    return np.asarray(values, dtype=np.float64)


def read_reduced(batch: Any, columns: Sequence[str]) -> tuple[list[Reduced], list[DeadLetter]]:
    """``<uc>.reduced`` messages back into :class:`Reduced`; unreadable ones are dead letters."""
    out: list[Reduced] = []
    dead: list[DeadLetter] = []
    for offset, key, value in zip(batch.offsets, batch.keys, batch.values, strict=True):
        try:
            doc = orjson.loads(value or b"")
            ids, keys = list(doc["record_id"]), [str(k) for k in doc["key"]]
            times = np.asarray(doc["time"], dtype=np.int64)
            numeric = np.asarray(doc["id"], dtype=np.uint64)
            cols = {c: _column(doc["columns"][c]) for c in columns}
            lengths = {len(keys), len(times), len(numeric), *(len(v) for v in cols.values())}
            if lengths != {len(ids)}:
                msg = "columns of different lengths"
                raise ValueError(msg)
            req = doc.get("request")
            request = None if req is None else Request(req["request_id"], req["reply_to"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            reason = f"not a reduced batch with columns {list(columns)}: {exc!r}"
            dead.append(DeadLetter.of_message(batch, offset, key, value, reason, "infer"))
            continue
        records = Records(ids, numeric, keys, times, cols)
        out.append(Reduced(records, correction=bool(doc.get("correction")), request=request))
    return out, dead
