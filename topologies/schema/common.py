"""What every section shares: durations, names, field types, aggregations, the base model."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)

__all__ = [
    "AGGREGATIONS",
    "ByteRate",
    "FieldType",
    "aggregation_column",
    "parse_aggregation",
    "parse_duration",
    "parse_rate",
]


_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> object:
    """Read ``"250ms"``, ``"10s"``, ``"5m"``, ``"2h"``, ``"30d"`` or a number of seconds.

    Anything else is handed on to pydantic's own timedelta parsing (ISO 8601), so its
    error message names what was expected.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        number, unit = match.groups()
        return timedelta(seconds=float(number) * _UNIT_SECONDS[unit])
    if isinstance(value, str) and not value.strip().upper().startswith("P"):
        msg = f"a duration like 250ms, 10s, 5m, 2h, 30d or ISO 8601 (PT10S), found {value!r}"
        raise ValueError(msg)
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|kbit|Mbit|Gbit)/s\s*$")
_RATE_BYTES = {
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
    "kbit": 125,
    "Mbit": 125_000,
    "Gbit": 125_000_000,
}


def parse_rate(value: object) -> object:
    """Read a byte rate — ``"256KiB/s"``, ``"2Mbit/s"`` — as bytes per second."""
    if isinstance(value, str):
        match = _RATE.match(value)
        if match is None:
            msg = f"a rate like 256KiB/s, 1MB/s or 2Mbit/s, found {value!r}"
            raise ValueError(msg)
        return float(match.group(1)) * _RATE_BYTES[match.group(2)]
    return value


#: Bytes per second, written as ``256KiB/s`` or ``2Mbit/s``.
ByteRate = Annotated[float, Field(gt=0), BeforeValidator(parse_rate)]
Name = Annotated[str, Field(pattern=_NAME)]

FieldType = Literal["float", "int", "bool", "str", "timestamp"]

#: Aggregations a reduction may declare per field; the polars expression for each
#: lives in ``operators.reduce``.
AGGREGATIONS = (
    "mean",
    "std",
    "min",
    "max",
    "sum",
    "count",
    "first",
    "last",
    "rms",
    "ptp",
    "delta",
    "slope",
    "zero_crossings",
    "quantile",
    "band_energy",
)
#: How many parameters each parameterised aggregation takes: ``quantile(0.95)``,
#: ``band_energy(1, 5)`` (Hz); the others take none.
_AGGREGATION_ARITY = {"quantile": 1, "band_energy": 2}
_AGGREGATION = re.compile(r"^\s*([a-z_]+)\s*(?:\(([^()]*)\))?\s*$")


def parse_aggregation(spec: str) -> tuple[str, tuple[float, ...]]:
    """``"quantile(0.95)"`` → ``("quantile", (0.95,))``; refuses unknown names and bad parameters."""
    match = _AGGREGATION.match(spec)
    name = match.group(1) if match else None
    if match is None or name not in AGGREGATIONS:
        msg = f"an aggregation of {list(AGGREGATIONS)} (quantile(q), band_energy(lo_hz, hi_hz)), found {spec!r}"
        raise ValueError(msg)
    raw = match.group(2)
    try:
        params = tuple(float(p) for p in raw.split(",")) if raw and raw.strip() else ()
    except ValueError:
        params = None  # type: ignore[assignment]
    arity = _AGGREGATION_ARITY.get(name, 0)
    if params is None or len(params) != arity:
        msg = f"{name} takes {arity} numeric parameter(s), found {spec!r}"
        raise ValueError(msg)
    if name == "quantile" and not 0.0 <= params[0] <= 1.0:
        msg = f"quantile(q) with q in [0, 1], found {spec!r}"
        raise ValueError(msg)
    if name == "band_energy" and not 0.0 <= params[0] < params[1]:
        msg = f"band_energy(lo_hz, hi_hz) with 0 <= lo < hi, found {spec!r}"
        raise ValueError(msg)
    return name, params


def aggregation_column(field: str, spec: str) -> str:
    """The reduced column of ``spec`` over ``field``: ``temp_quantile_0_95``, ``temp_mean``."""
    name, params = parse_aggregation(spec)
    suffix = "".join(f"_{p:g}" for p in params)
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{field}_{name}{suffix}")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
