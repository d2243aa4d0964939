"""Parse and validate a consumed batch against the use case's declared schema.

The fast path decodes a whole batch in one native pass straight into typed rows
(msgspec, with a row type made from the schema: it checks every field's type as it
reads) and builds each column in one C-level pass over them; only a batch that fails
it is re-read record by record (orjson) to find which records are bad and why. Bad
records become :class:`DeadLetter` s with the original bytes and the reason — the
flow goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

import msgspec
import numpy as np
import orjson

from mlexec.operators.records import DeadLetter, Records

__all__ = ["ParseResult", "RecordParser", "parse_time"]

_NUMERIC_TYPES: dict[str, frozenset[type]] = {
    "float": frozenset({float, int}),
    "int": frozenset({int}),
    "bool": frozenset({bool}),
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MS_PER_UNIT = {"s": 1000.0, "ms": 1.0, "us": 0.001, "ns": 0.000001}
_KEY_TYPES: dict[str, set[type]] = {
    "str": {str},
    "int": {int},
    "float": {float},
    "bool": {bool},
    "timestamp": {str},
}


@dataclass(frozen=True)
class ParseResult:
    """The valid records of a batch and the dead letters of the rest."""

    source: str
    records: Records | None
    dead: list[DeadLetter]


class RecordParser:
    """Turns a raw batch into :class:`Records` plus dead letters.

    ``schema`` maps field → type (``float``, ``int``, ``bool``, ``str``, ``timestamp``);
    timestamps are epoch numbers in ``time_unit`` (default milliseconds) or ISO 8601
    strings. Numeric fields
    other than key and time become float64 columns.
    """

    def __init__(
        self,
        schema: Mapping[str, str],
        key: str,
        time: str,
        time_unit: str = "ms",
        *,
        earliest_ms: int = 0,
        max_ahead_ms: int = 86_400_000,
        keep_raw: bool = False,
        now_ms: Callable[[], int] | None = None,
        nullable: Collection[str] = (),
    ) -> None:
        self.schema = dict(schema)
        #: Fields that may be missing or null: NaN for a number, ``None`` for a text.
        self.nullable = frozenset(nullable)
        #: Event times before this or more than ``max_ahead_ms`` past the wall clock are
        #: implausible: such a record is a dead letter and never moves a watermark.
        self.earliest_ms = earliest_ms
        self.max_ahead_ms = max_ahead_ms
        self.keep_raw = keep_raw
        self._now_ms = now_ms or _wall_ms
        self.time_unit = time_unit
        self.ms_per_unit = self._ms_per_unit = _MS_PER_UNIT[time_unit]
        self.key = key
        self.time = time
        self.numeric = [
            name
            for name, kind in self.schema.items()
            if kind in _NUMERIC_TYPES and name not in (key, time)
        ]
        self._key_of = itemgetter(key)
        self._time_of = itemgetter(time)
        self._groups: list[tuple[str, list[str], Callable[[Any], Any]]] = []
        for kind in _NUMERIC_TYPES:
            names = [n for n in self.numeric if self.schema[n] == kind and n not in self.nullable]
            if names:
                self._groups.append((kind, names, itemgetter(*names)))
        #: Nullable numbers, one column each (``dict.get``: a missing one is None → NaN).
        self._nullable_numbers = [
            (self.schema[n], n, _getter(n)) for n in self.numeric if n in self.nullable
        ]
        self._block_names = tuple(n for _, names, _ in self._groups for n in names) + tuple(
            n for _, n, _ in self._nullable_numbers
        )
        self._texts: list[tuple[str, Callable[[Any], Any], frozenset[type]]] = [
            (n, _getter(n) if n in self.nullable else itemgetter(n),
             _TEXT_OR_NONE if n in self.nullable else _TEXT)
            for n, k in self.schema.items()
            if k == "str" and n != key
        ]  # fmt: skip

        self._typed = _TypedRows.of(self) if not {key, time} & self.nullable else None

    # The batch is anything with topic, partition, offsets, keys and values (RawBatch).
    def __call__(self, batch: Any) -> ParseResult:
        source = f"{batch.topic}:{batch.partition}"
        if self._typed is not None:
            columns = self._typed.columns(batch.values)
        else:
            rows = self._parse_all(batch.values)
            columns = self._columnar(rows) if rows is not None else None
        if columns is not None:
            return ParseResult(source, self._records(batch, columns, range(len(batch.values))), [])
        return self._parse_each(batch, source)

    # -------------------------------------------------------------- fast path

    @staticmethod
    def _parse_all(values: list[bytes | None]) -> list[Any] | None:
        try:
            rows = orjson.loads(b"[" + b",".join(values) + b"]")  # type: ignore[arg-type]
        except (orjson.JSONDecodeError, TypeError):
            return None
        return rows if len(rows) == len(values) else None

    def _columnar(self, rows: list[Any]) -> _Columns | None:
        """Extract and type-check every column in C-level passes; ``None`` if any record is bad.

        ``itemgetter`` raises KeyError for a missing field and TypeError for a record
        that is not an object; ``set(map(type, …))`` checks types without a Python loop.
        """
        n = len(rows)
        try:
            keys = list(map(self._key_of, rows))
            times_raw = list(map(self._time_of, rows))
            blocks = []
            for kind, names, getter in self._groups:
                values = list(map(getter, rows))
                if len(names) > 1:
                    if not set(map(type, chain.from_iterable(values))) <= _NUMERIC_TYPES[kind]:
                        return None
                    flat = np.fromiter(chain.from_iterable(values), np.float64, n * len(names))
                else:
                    if not set(map(type, values)) <= _NUMERIC_TYPES[kind]:
                        return None
                    flat = np.fromiter(values, np.float64, n)
                block = flat.reshape(n, len(names))
                if kind == "float" and not bool((np.abs(block) <= _FLOAT32_MAX).all()):
                    return None
                blocks.append(block)
            for kind, _, getter in self._nullable_numbers:
                values = list(map(getter, rows))
                if not set(map(type, values)) <= _NUMERIC_TYPES[kind] | _NONE:
                    return None
                column = np.array(values, dtype=np.float64).reshape(n, 1)  # None → NaN
                if kind == "float" and bool((np.abs(column) > _FLOAT32_MAX).any()):
                    return None
                blocks.append(column)
            texts = {}
            for name, getter, allowed in self._texts:
                values = list(map(getter, rows))
                if not set(map(type, values)) <= allowed:
                    return None
                texts[name] = np.array(values, dtype=object)
        except (KeyError, TypeError):
            return None
        key_types = set(map(type, keys))
        if key_types != _KEY_TYPES[self.schema[self.key]]:
            return None
        return self._finish(keys, times_raw, blocks, texts, n)

    def _finish(
        self,
        keys: list[Any],
        times_raw: list[Any],
        blocks: list[np.ndarray],
        texts: dict[str, np.ndarray],
        n: int,
    ) -> _Columns | None:
        """The columns of checked fields: keys as text, event times in ms within bounds."""
        if self.schema[self.key] != "str":
            keys = list(map(str, keys))
        time_types = set(map(type, times_raw))
        if time_types <= {int, float}:
            floats = np.array(times_raw, dtype=np.float64) * self._ms_per_unit
        elif time_types <= {int, float, str}:  # ISO strings, or a mix with epoch numbers
            try:
                floats = np.array([self._time_ms(t) for t in times_raw], dtype=np.float64)
            except (ValueError, OverflowError):
                return None
        else:
            return None
        low, high = self._bounds()
        if not bool(((floats >= low) & (floats <= high)).all()):  # also false for NaN
            return None
        times = floats.astype(np.int64)
        block = blocks[0] if len(blocks) == 1 else np.hstack(blocks) if blocks else np.empty((n, 0))
        return _Columns(keys, times, block, texts)

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
        records = None
        if good_rows:
            columns = self._columnar(good_rows)
            if columns is None:
                # Never raise on data: read the rows that pass alone one by one, and
                # dead-letter any that still cannot be read with the others.
                kept_rows, kept_at = [], []
                for row, i in zip(good_rows, good_at, strict=True):
                    if self._columnar([row]) is None:
                        reason = "record passed the field checks but could not be read as columns"
                        dead.append(DeadLetter.of_message(
                            batch, batch.offsets[i], batch.keys[i], batch.values[i], reason, "parse"
                        ))  # fmt: skip
                    else:
                        kept_rows.append(row)
                        kept_at.append(i)
                columns = self._columnar(kept_rows) if kept_rows else None
                good_at = kept_at
            if columns is not None:
                records = self._records(batch, columns, good_at)
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
                if name in self.nullable:
                    continue
                return None, f"field {name!r}: expected {kind}, found nothing"
            reason = _field_problem(kind, row[name])
            if reason:
                return None, f"field {name!r}: {reason}"
        problem = self._time_problem(row[self.time])
        return (None, problem) if problem else (row, "")

    def _time_ms(self, value: Any) -> float:
        """An event time (epoch number in ``time_unit``, or ISO 8601) in epoch ms."""
        if type(value) is str:
            return float(_epoch_ms(value))
        return float(value) * self._ms_per_unit

    def _bounds(self) -> tuple[float, float]:
        return float(self.earliest_ms), float(self._now_ms() + self.max_ahead_ms)

    def _time_problem(self, value: Any) -> str:
        """Why an event time is implausible (before ``earliest``, too far ahead), or ``""``."""
        try:
            at = self._time_ms(value)
        except (ValueError, OverflowError):
            return f"field {self.time!r}: not a usable event time: {_short(value)}"
        low, high = self._bounds()
        if at >= low and at <= high:
            return ""
        return (
            f"field {self.time!r}: event time {_short(value)} is outside the plausible range "
            f"[{_iso(low)}, {_iso(high)}] (input.earliest_time, input.max_ahead; "
            "a wrong unit or a broken clock?)"
        )

    # ------------------------------------------------------------- columns

    def _records(self, batch: Any, columns: _Columns, at: Any) -> Records:
        offsets = batch.offsets
        idx = [offsets[i] for i in at]
        prefix = f"{getattr(batch, 'label', '') or batch.topic}:{batch.partition}:"
        values = batch.values
        return Records(
            raw=[values[i] for i in at] if self.keep_raw else None,
            record_ids=[prefix + str(o) for o in idx],
            ids=(np.uint64(batch.partition) << np.uint64(48)) | np.asarray(idx, dtype=np.uint64),
            keys=columns.keys,
            times=columns.times,
            columns={
                **{name: columns.block[:, j] for j, name in enumerate(self._block_names)},
                **columns.texts,
            },
            block=columns.block,
            block_names=self._block_names,
        )


_ROW_TYPES: dict[str, Any] = {
    "float": float,
    "int": int,
    "bool": bool,
    "str": str,
    "timestamp": int | float | str,
}


@dataclass(frozen=True)
class _TypedRows:
    """The fast path: a batch decoded in one native pass into rows of the schema's types.

    A row type is made from the schema (fields renamed from ``c0``, ``c1``… so any
    JSON name works); msgspec then checks every declared field's type while it reads
    — a float field takes a JSON number, never a bool or a string; a missing field or
    a null where none is allowed fails the batch — and ignores undeclared fields.
    """

    parser: RecordParser
    decoder: msgspec.json.Decoder[Any]
    key: Callable[[Any], Any]
    time: Callable[[Any], Any]
    groups: list[tuple[str, int, Callable[[Any], Any]]]
    nullable: list[tuple[str, Callable[[Any], Any]]]
    texts: list[tuple[str, Callable[[Any], Any]]]

    @classmethod
    def of(cls, parser: RecordParser) -> _TypedRows:
        attr = {name: f"c{i}" for i, name in enumerate(parser.schema)}
        fields = [
            (attr[n], _ROW_TYPES[k] | None, None) if n in parser.nullable else (attr[n], _ROW_TYPES[k])
            for n, k in parser.schema.items()
        ]  # fmt: skip
        row = msgspec.defstruct(
            "Row", fields, rename={a: n for n, a in attr.items()}, kw_only=True, gc=False
        )
        groups: list[tuple[str, int, Callable[[Any], Any]]] = [
            (kind, len(names), attrgetter(*(attr[n] for n in names)))
            for kind, names, _ in parser._groups
        ]
        return cls(
            parser=parser,
            decoder=msgspec.json.Decoder(list[row]),  # type: ignore[valid-type]
            key=attrgetter(attr[parser.key]),
            time=attrgetter(attr[parser.time]),
            groups=groups,
            nullable=[(kind, attrgetter(attr[n])) for kind, n, _ in parser._nullable_numbers],
            texts=[(n, attrgetter(attr[n])) for n, _, _ in parser._texts],
        )

    def columns(self, values: list[bytes | None]) -> _Columns | None:
        """The batch's columns, or ``None`` if any record is bad (the slow path says which)."""
        try:
            rows = self.decoder.decode(b"[" + b",".join(values) + b"]")  # type: ignore[arg-type]
        except (msgspec.DecodeError, TypeError):  # ValidationError is a DecodeError
            return None
        n = len(rows)
        if n != len(values):  # a value held more than one JSON document
            return None
        blocks = []
        for kind, width, getter in self.groups:
            if width > 1:
                flat = np.fromiter(chain.from_iterable(map(getter, rows)), np.float64, n * width)
            else:
                flat = np.fromiter(map(getter, rows), np.float64, n)
            block = flat.reshape(n, width)
            if kind == "float" and not bool((np.abs(block) <= _FLOAT32_MAX).all()):
                return None
            blocks.append(block)
        for kind, getter in self.nullable:
            column = np.array(list(map(getter, rows)), dtype=np.float64).reshape(n, 1)  # None → NaN
            if kind == "float" and bool((np.abs(column) > _FLOAT32_MAX).any()):
                return None
            blocks.append(column)
        texts = {
            name: np.array(list(map(getter, rows)), dtype=object) for name, getter in self.texts
        }
        keys, times = list(map(self.key, rows)), list(map(self.time, rows))
        return self.parser._finish(keys, times, blocks, texts, n)


@dataclass(frozen=True)
class _Columns:
    keys: list[str]
    times: np.ndarray
    block: np.ndarray
    #: Text fields (other than the key), as object arrays.
    texts: dict[str, np.ndarray]


_NONE: frozenset[type] = frozenset({type(None)})
_TEXT: frozenset[type] = frozenset({str})
_TEXT_OR_NONE: frozenset[type] = _TEXT | _NONE


def _getter(name: str) -> Callable[[Any], Any]:
    """``row.get(name)``, raising TypeError (as ``itemgetter`` does) for a non-object."""

    def get(row: Any) -> Any:
        if type(row) is not dict:
            raise TypeError(name)
        return row.get(name)

    return get


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


def _wall_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _iso(epoch_ms: float) -> str:
    try:
        return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return f"{epoch_ms:.0f} ms"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_time(value: Any, parser: RecordParser) -> int:
    """An event time as ``parser``'s records carry it (epoch in its unit, or ISO 8601) → ms."""
    if isinstance(value, bool) or value is None:
        msg = f"expected epoch {parser.time_unit} or an ISO 8601 timestamp, found {value!r}"
        raise ValueError(msg)
    if isinstance(value, int | float):
        return int(value * parser.ms_per_unit)
    return _epoch_ms(value)
