"""The monitoring tables' Arrow columns and the helpers every monitoring module shares."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from mlexec.errors import MlexecError
from mlexec.topologies.plan import UseCasePlan
from mlexec.topologies.schema import (
    Monitoring,
)

__all__ = [
    "ALERT_COLUMNS",
    "DRIFT_COLUMNS",
    "FEEDBACK_COLUMNS",
    "METRIC_COLUMNS",
    "SERVING_COLUMNS",
    "MS_TIME",
    "REFERENCE_COLUMNS",
    "MonitorError",
    "arrow_table",
    "monitoring_of",
    "ms",
    "now_utc",
    "num",
]


MS_TIME = pa.timestamp("ms", tz="UTC")


class MonitorError(MlexecError):
    """A reference or an evaluation cannot be made; the message says what to do."""


def now_utc() -> datetime:
    """The current moment, in UTC."""
    return datetime.now(UTC)


def ms(moment: datetime) -> int:
    """A moment as epoch milliseconds."""
    return int(moment.timestamp() * 1000)


def monitoring_of(uc: UseCasePlan) -> Monitoring:
    """The use case's ``monitoring`` section; an error if it declares none."""
    mon = uc.usecase.monitoring
    if mon is None:
        msg = f"use case {uc.name} declares no monitoring"
        raise MonitorError(msg)
    return mon


def num(value: Any) -> float:
    """A SQL value as a float (NULL as NaN)."""
    return float("nan") if value is None else float(value)


def arrow_table(rows: list[dict[str, Any]], columns: dict[str, pa.DataType]) -> pa.Table:
    """Rows (times in epoch ms) as an Arrow table of ``columns``."""
    arrays = {}
    for name, kind in columns.items():
        values = [r[name] for r in rows]
        arrays[name] = (
            pa.array(values, pa.int64()).cast(kind) if kind == MS_TIME else pa.array(values, kind)
        )
    return pa.table(arrays)


_STR, _F64, _U64 = pa.string(), pa.float64(), pa.uint64()
FEEDBACK_COLUMNS = {
    "record_id": _STR,
    "key": _STR,
    "event_time": MS_TIME,
    "label": _F64,
    "received_at": MS_TIME,
}
METRIC_COLUMNS = {
    "time": MS_TIME,
    "site": _STR,
    "part": _STR,
    "usecase": _STR,
    "name": _STR,
    "value": _F64,
}
SERVING_COLUMNS = {
    "time": MS_TIME,
    "site": _STR,
    "part": _STR,
    "topology": _STR,
    "models": _STR,
}
REFERENCE_COLUMNS = {
    "usecase": _STR,
    "reference": _STR,
    "column": _STR,
    "rows": _U64,
    "n": _U64,
    "mean": _F64,
    "std": _F64,
    "min": _F64,
    "max": _F64,
    "edges": pa.list_(_F64),
    "counts": pa.list_(_U64),
    "grid": pa.list_(_F64),
    "created_at": MS_TIME,
}
DRIFT_COLUMNS = {
    "time": MS_TIME,
    "usecase": _STR,
    "column": _STR,
    "segment": _STR,
    "statistic": _STR,
    "value": _F64,
    "severity": _STR,
    "rows": _U64,
    "window_start": MS_TIME,
    "window_end": MS_TIME,
    "reference": _STR,
    "warning": _F64,
    "critical": _F64,
}
ALERT_COLUMNS = {
    "time": MS_TIME,
    "usecase": _STR,
    "site": _STR,
    "kind": _STR,
    "subject": _STR,
    "statistic": _STR,
    "value": _F64,
    "threshold": _F64,
    "severity": _STR,
    "window_start": MS_TIME,
    "window_end": MS_TIME,
    "reference": _STR,
    "message": _STR,
}
