"""Parse and validate a consumed batch against the use case's declared schema.

The fast path parses a whole batch with one ``orjson.loads`` and checks each column's
Python types in one pass; only a batch that fails it is re-read record by record to
find which records are bad and why. Bad records become :class:`DeadLetter` s with the
original bytes and the reason — the flow goes on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from operators.records import DeadLetter, Records

__all__ = ["ParseResult", "RecordParser"]

_NUMERIC_TYPES: dict[str, frozenset[type]] = {
    "float": frozenset({float, int}),
    "int": frozenset({int}),
    "bool": frozenset({bool}),
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class ParseResult:
    """The valid records of a batch and the dead letters of the rest."""

    source: str
    records: Records | None
    dead: list[DeadLetter]


class RecordParser:
    """Turns a raw batch into :class:`Records` plus dead letters.

    ``schema`` maps field → type (``float``, ``int``, ``bool``, ``str``, ``timestamp``);
    timestamps are epoch milliseconds (numbers) or ISO 8601 strings. Numeric fields
    other than key and time become float64 columns.
    """

    def __init__(self, schema: Mapping[str, str], key: str, time: str) -> None:
        self.schema = dict(schema)
        self.key = key
        self.time = time
        self.numeric = [
            name
            for name, kind in self.schema.items()
            if kind in _NUMERIC_TYPES and name not in (key, time)
        ]

    # The batch is anything with topic, partition, offsets, keys and values (RawBatch).
    def __call__(self, batch: Any) -> ParseResult:
        source = f"{batch.topic}:{batch.partition}"
        rows = self._parse_all(batch.values)
        if rows is not None and self._columns_ok(rows):
            return ParseResult(source, self._records(batch, rows, range(len(rows))), [])
        return self._parse_each(batch, source)

    # -------------------------------------------------------------- fast path

    @staticmethod
    def _parse_all(values: list[bytes | None]) -> list[Any] | None:
        try:
            rows = orjson.loads(b"[" + b",".join(values) + b"]")  # type: ignore[arg-type]
        except (orjson.JSONDecodeError, TypeError):
            return None
        return rows if len(rows) == len(values) else None

    def _columns_ok(self, rows: list[Any]) -> bool:
        if set(map(type, rows)) != {dict}:
            return False
        for name, kind in self.schema.items():
            found = set(map(type, [r.get(name) for r in rows]))
            if kind in _NUMERIC_TYPES:
                if not found <= _NUMERIC_TYPES[kind]:
                    return False
                if kind == "float" and not _all_finite_float32([r[name] for r in rows]):
                    return False
            elif kind == "str":
                if found != {str}:
                    return False
            elif not (found <= {int, float} or found == {str}):  # timestamp
                return False
        return True

    # -------------------------------------------------------------- slow path

    def _parse_each(self, batch: Any, source: str) -> ParseResult:
        good_rows: list[dict[str, Any]] = []
        good_at: list[int] = []
        dead: list[DeadLetter] = []
        for i, value in enumerate(batch.values):
            row, reason = self._check_one(value)
            if row is None:
                dead.append(
                    DeadLetter(
                        value=value,
                        key=batch.keys[i],
                        reason=reason,
                        topic=batch.topic,
                        partition=batch.partition,
                        offset=batch.offsets[i],
                    )
                )
            else:
                good_rows.append(row)
                good_at.append(i)
        records = self._records(batch, good_rows, good_at) if good_rows else None
        return ParseResult(source, records, dead)

    def _check_one(self, value: bytes | None) -> tuple[dict[str, Any] | None, str]:
        if value is None:
            return None, "empty message (no value)"
        try:
            row = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return None, f"not valid JSON (or not UTF-8): {exc}"
        if not isinstance(row, dict):
            return None, f"expected a JSON object, found {type(row).__name__}"
        for name, kind in self.schema.items():
            if name not in row or row[name] is None:
                return None, f"field {name!r}: expected {kind}, found nothing"
            reason = _field_problem(kind, row[name])
            if reason:
                return None, f"field {name!r}: {reason}"
        return row, ""

    # ------------------------------------------------------------- columns

    def _records(self, batch: Any, rows: list[dict[str, Any]], at: Any) -> Records:
        offsets = batch.offsets
        idx = [offsets[i] for i in at]
        prefix = f"{batch.topic}:{batch.partition}:"
        times_raw = [r[self.time] for r in rows]
        if isinstance(times_raw[0], str) or not set(map(type, times_raw)) <= {int, float}:
            times = np.array([_epoch_ms(t) for t in times_raw], dtype=np.int64)
        else:
            times = np.asarray(times_raw, dtype=np.float64).astype(np.int64)
        key_kind = self.schema[self.key]
        keys = [r[self.key] for r in rows]
        if key_kind != "str":
            keys = [str(k) for k in keys]
        return Records(
            record_ids=[prefix + str(o) for o in idx],
            ids=(np.uint64(batch.partition) << np.uint64(48)) | np.asarray(idx, dtype=np.uint64),
            keys=keys,
            times=times,
            columns={
                name: np.asarray([r[name] for r in rows], dtype=np.float64) for name in self.numeric
            },
        )


def _all_finite_float32(values: list[float | int]) -> bool:
    arr = np.asarray(values, dtype=np.float64)
    return bool(np.all(np.abs(arr) <= _FLOAT32_MAX))


def _field_problem(kind: str, value: Any) -> str:
    found = f"{type(value).__name__} {_short(value)}"
    if kind in _NUMERIC_TYPES:
        if type(value) not in _NUMERIC_TYPES[kind]:
            return f"expected {kind}, found {found}"
        if kind == "float" and not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX):
            return f"expected a finite float within float32 range, found {value!r}"
        return ""
    if kind == "str":
        return "" if type(value) is str else f"expected str, found {found}"
    # timestamp
    if type(value) in (int, float):
        return ""
    if type(value) is str:
        try:
            _epoch_ms(value)
        except ValueError:
            return f"expected an ISO 8601 timestamp or epoch milliseconds, found {found}"
        return ""
    return f"expected an ISO 8601 timestamp or epoch milliseconds, found {found}"


def _epoch_ms(value: Any) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
