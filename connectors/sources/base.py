"""What every data connector shares: the record it yields, the source contract, the shaper.

A source reads the outside world from a resumable *state* (a JSON-able dict: file
identity and offset, cursor value, ETag, ...). Each :class:`SourceRecord` carries a
*position*, unique within its connector and the same when the source re-reads from an
earlier state, so the runner can recognise records it already produced before a crash.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol

import orjson

__all__ = ["RecordShaper", "Source", "SourceRecord", "json_default"]


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One record read from a source, shaped for the raw topic, or refused with a reason.

    ``position`` identifies it within the connector (stable on re-read); ``where`` says
    where it is for a person (``orders.csv line 12``). A refused record keeps the
    original bytes in ``value`` and the reason in ``error``.
    """

    position: str
    where: str
    key: bytes | None
    value: bytes | None
    error: str | None = None
    #: Where it goes instead of the use case's raw topic (the mirror: ``<site>.<topic>``),
    #: to which partition, and headers to carry along.
    topic: str | None = None
    partition: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


class Source(Protocol):
    """A connector's reading side, driven by :class:`connectors.runner.ConnectorRunner`."""

    #: Where the source reads from, for people and dead-letter headers.
    origin: str
    #: What ``behind`` counts: ``bytes``, ``rows``, ``messages`` or ``pages``.
    behind_unit: str

    def read(self, limit: int) -> list[SourceRecord]:
        """Up to ``limit`` records available now; ``[]`` when caught up."""
        ...

    def state(self) -> dict[str, Any]:
        """The position after the last record returned, to resume from."""
        ...

    def behind(self) -> int | None:
        """How much of the source is not read yet (``None``: unknown)."""
        ...

    def wait(self) -> float:
        """Seconds until reading again is worth it, after a ``read`` came back empty."""
        ...

    def close(self) -> None: ...


def json_default(value: Any) -> Any:
    """Write values databases return (Decimal, bytes) as JSON; the orjson fallback."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    msg = f"cannot write {type(value).__name__} as JSON"
    raise TypeError(msg)


_TRUE = {"true", "t", "yes", "y", "1", "on"}
_FALSE = {"false", "f", "no", "n", "0", "off"}


class RecordShaper:
    """Turn a source's fields into the use case's JSON record and key.

    Fields the schema declares are coerced to their type (text from files and typed
    values from JSON and databases alike); a field that is missing or does not fit is
    an error naming the field. Other fields pass through. ``constants`` are added first
    (a source's own value wins).
    """

    def __init__(
        self,
        schema: Mapping[str, str],
        key: str,
        constants: Mapping[str, Any] | None = None,
        nullable: Collection[str] = (),
    ) -> None:
        self.schema = dict(schema)
        self.key = key
        self.constants = dict(constants or {})
        #: Fields that may lack a value (an empty cell, ``null``): written as ``null``.
        self.nullable = frozenset(nullable)

    def shape(self, fields: Mapping[str, Any]) -> tuple[bytes, bytes]:
        """``(key, JSON value)``; raises ``ValueError`` with the reason."""
        record = {**self.constants, **fields} if self.constants else dict(fields)
        for name, kind in self.schema.items():
            value = record.get(name)
            if value is None or value == "":
                if name in self.nullable:
                    record[name] = None
                    continue
                msg = f"field {name!r}: expected {kind}, found nothing"
                raise ValueError(msg)
            try:
                record[name] = _COERCE[kind](value)
            except (ValueError, TypeError, OverflowError) as exc:
                msg = f"field {name!r}: {exc}"
                raise ValueError(msg) from None
        key = record[self.key]
        return str(key).encode(), orjson.dumps(record, default=json_default)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        msg = f"expected float, found bool {value!r}"
        raise ValueError(msg)
    if isinstance(value, str):
        try:
            out = float(value)
        except ValueError:
            msg = f"expected float, found {_short(value)}"
            raise ValueError(msg) from None
    elif isinstance(value, int | float | Decimal):
        out = float(value)
    else:
        msg = f"expected float, found {type(value).__name__} {_short(value)}"
        raise ValueError(msg)
    if not math.isfinite(out):
        msg = f"expected a finite float, found {_short(value)}"
        raise ValueError(msg)
    return out


def _int(value: Any) -> int:
    if isinstance(value, bool):
        msg = f"expected int, found bool {value!r}"
        raise ValueError(msg)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            msg = f"expected int, found {_short(value)}"
            raise ValueError(msg) from None
    if isinstance(value, float | Decimal) and value == int(value):
        return int(value)
    msg = f"expected int, found {type(value).__name__} {_short(value)}"
    raise ValueError(msg)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    msg = f"expected bool (true/false, yes/no, 1/0), found {_short(value)}"
    raise ValueError(msg)


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return str(value)
    msg = f"expected str, found {type(value).__name__} {_short(value)}"
    raise ValueError(msg)


def _timestamp(value: Any) -> int | float | str:
    """Epoch numbers stay numbers (in the use case's unit); ISO 8601 stays text."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.isoformat()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == int(value) else float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            try:
                datetime.fromisoformat(text)
            except ValueError:
                msg = f"expected an epoch number or ISO 8601 timestamp, found {_short(value)}"
                raise ValueError(msg) from None
            return text
        if not math.isfinite(number):
            msg = f"expected a finite epoch number, found {_short(value)}"
            raise ValueError(msg)
        return number
    msg = f"expected a timestamp, found {type(value).__name__} {_short(value)}"
    raise ValueError(msg)


_COERCE = {"float": _float, "int": _int, "bool": _bool, "str": _str, "timestamp": _timestamp}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
