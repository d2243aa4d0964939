"""Reduction: the deterministic step that shapes a dispatch's records for the model.

- identity: the records go to the model as they are (per-record models);
- aggregate: per key and group (window) each declared field is aggregated by a polars
  expression; the reduced row's columns are ``<field>_<aggregation>`` and its id is
  ``<usecase>:<key>:<group>``;
- python: a packaged ``module:function`` turns the dispatch's records (a polars
  DataFrame) into reduced rows;
- onnx: a pre-model maps every record's fields to new columns;
- stateful (on top of any of them): per key, across dispatches, an EWMA of columns and
  the difference from the key's previous dispatch — :class:`StatefulReduceLogic`,
  snapshotted by bytewax and so recovered after a restart.

Standard deviations are population ones (``ddof=0``) and empty statistics (the slope
of one point, the band energy of one sample) are 0, so the model never sees a missing
value it cannot take. ``band_energy(lo, hi)`` is the sum of ``|rfft(x)|² / n`` over
the frequencies in ``[lo, hi)`` Hz, the sampling rate taken from the records' event
times.
"""

from __future__ import annotations

import importlib
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import polars as pl
from bytewax.operators import StatefulBatchLogic

from mlexec.errors import RecordError
from mlexec.operators.dispatch import Dispatched, Request
from mlexec.operators.packages import PackageError, activate
from mlexec.operators.records import Records
from mlexec.topologies.plan import SEQUENCE_COLUMN
from mlexec.topologies.schema import aggregation_column, parse_aggregation

#: Per reduced row of a sequence reduction: the ids of its records (into predictions).
MEMBERS_COLUMN = "__records"

__all__ = [
    "MEMBERS_COLUMN",
    "Reduced",
    "Reducer",
    "ReductionError",
    "StatefulReduceLogic",
    "aggregate_expression",
    "band_energy",
    "load_entrypoint",
]


class ReductionError(RecordError, ValueError):
    """A reduction that cannot run as declared (entry point, pre-model, output)."""


@dataclass
class Reduced:
    """Reduced rows of one dispatch, with what the dispatch said about them."""

    records: Records
    correction: bool = False
    request: Request | None = None


def _simple(name: str, params: tuple[float, ...], c: pl.Expr) -> pl.Expr | None:
    # seconds from the group's first record: epoch seconds (~2e9) leave a 1 s spread
    # 7 significant digits after the mean is taken off, integer milliseconds all 16
    t = (pl.col("time") - pl.col("time").min()).cast(pl.Float64) / 1000.0
    match name:
        case "mean":
            return c.mean()
        case "std":
            return c.std(ddof=0)
        case "min":
            return c.min()
        case "max":
            return c.max()
        case "sum":
            return c.sum()
        case "count":
            return c.count().cast(pl.Float64)
        case "first":
            return c.first()
        case "last":
            return c.last()
        case "rms":
            return (c * c).mean().sqrt()
        case "ptp":
            return c.max() - c.min()
        case "delta":
            return c.last() - c.first()
        case "quantile":
            return c.quantile(params[0], interpolation="linear")
        case "slope":
            dt = t - t.mean()
            return ((dt * (c - c.mean())).sum() / (dt * dt).sum()).fill_nan(0.0)
        case "zero_crossings":
            return (c < 0).cast(pl.Int8).diff().abs().sum().cast(pl.Float64)
    return None  # computed outside polars (band_energy)


def aggregate_expression(spec: str, column: str) -> pl.Expr | None:
    """The polars aggregation of ``spec`` over ``column`` (``None``: computed in numpy)."""
    name, params = parse_aggregation(spec)
    expr = _simple(name, params, pl.col(column).cast(pl.Float64))
    return None if expr is None else expr.alias(aggregation_column(column, spec))


def band_energy(values: np.ndarray, times_ms: np.ndarray, lo: float, hi: float) -> float:
    """Spectral energy of ``values`` (sampled at ``times_ms``) in ``[lo, hi)`` Hz."""
    n = len(values)
    span = (float(times_ms[-1]) - float(times_ms[0])) / 1000.0 if n else 0.0
    if n < 2 or span <= 0:
        return 0.0
    rate = (n - 1) / span
    power = np.abs(np.fft.rfft(values)) ** 2 / n
    freqs = np.fft.rfftfreq(n, d=1.0 / rate)
    return float(power[(freqs >= lo) & (freqs < hi)].sum())


def load_entrypoint(spec: str) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """Import ``module:function`` from an installed package."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"cannot import module {module_name!r} of entry point {spec!r}: {exc}"
        raise ReductionError(msg) from exc
    func = getattr(module, attr, None)
    if not callable(func):
        msg = f"module {module_name!r} has no function {attr!r} (entry point {spec!r})"
        raise ReductionError(msg)
    return func  # type: ignore[no-any-return]


def _polars_column(column: np.ndarray) -> object:
    """A column polars reads as its type: text (an object array) as a list of str."""
    return column.tolist() if column.dtype == object else column


def _ids_of(record_ids: list[str]) -> np.ndarray:
    return np.fromiter(
        ((zlib.crc32(r.encode()) << 32) | zlib.crc32(r[::-1].encode()) for r in record_ids),
        dtype=np.uint64,
        count=len(record_ids),
    )


class Reducer:
    """Reduce a :class:`Dispatched` batch to the rows the model sees.

    Exactly one of ``fields`` (aggregate), ``entrypoint`` (python) or ``premodel``
    (onnx) may be given; none means identity.
    """

    def __init__(
        self,
        usecase: str,
        fields: Mapping[str, Sequence[str]] | None = None,
        *,
        entrypoint: str | None = None,
        package: str | None = None,
        sha256: str | None = None,
        premodel: str | None = None,
        inputs: Sequence[str] = (),
        columns: Sequence[str] = (),
        input_name: str | None = None,
        sequence: tuple[Sequence[str], int, float] | None = None,
    ) -> None:
        self.usecase = usecase
        self.fields = {k: list(v) for k, v in (fields or {}).items()}
        #: (fields, length, pad) of a sequence reduction.
        self._sequence = sequence
        if package is not None:
            try:
                activate(package, sha256)
            except PackageError as exc:
                raise ReductionError(str(exc)) from exc
        self._func = load_entrypoint(entrypoint) if entrypoint else None
        self._inputs = list(inputs)
        self._premodel = None
        if premodel is not None:
            try:
                self._premodel = ort.InferenceSession(premodel, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types
                msg = f"cannot load the ONNX pre-model {premodel}: {exc}"
                raise ReductionError(msg) from exc
            self._pre_input = input_name or self._premodel.get_inputs()[0].name
        if self.fields:
            self.columns = [
                aggregation_column(f, a) for f, aggs in self.fields.items() for a in aggs
            ]
        else:
            self.columns = list(columns)
        self._exprs = [
            e
            for f, aggs in self.fields.items()
            for a in aggs
            if (e := aggregate_expression(a, f)) is not None
        ]
        self._bands = [
            (f, aggregation_column(f, a), parse_aggregation(a)[1])
            for f, aggs in self.fields.items()
            for a in aggs
            if parse_aggregation(a)[0] == "band_energy"
        ]

    def __call__(self, batch: Dispatched) -> Reduced | None:
        records = batch.records
        if records is None or len(records) == 0:
            return None
        if self._sequence is not None:
            out = self._sequences(records, batch, *self._sequence)
        elif self.fields:
            out = self._aggregate(records, batch)
        elif self._func is not None:
            out = self._python(records, batch)
        elif self._premodel is not None:
            out = self._onnx(records)
        else:
            out = records
        return Reduced(out, correction=batch.correction, request=batch.request)

    # ------------------------------------------------------------ grouping

    def _groups(self, records: Records, batch: Dispatched) -> tuple[np.ndarray, np.ndarray]:
        """Per row: its group and the group's event time (``-1`` = the group's first time)."""
        n = len(records)
        if batch.per_record:
            return np.arange(n, dtype=np.int64), records.times
        if batch.groups is None:
            return np.full(n, -1, np.int64), np.full(n, -1, np.int64)
        times = batch.group_times if batch.group_times is not None else batch.groups
        return batch.groups, times

    def _frame(self, records: Records, batch: Dispatched, names: Iterable[str]) -> pl.DataFrame:
        groups, group_times = self._groups(records, batch)
        return pl.DataFrame(
            {
                "record_id": records.record_ids,
                "key": records.keys,
                "group": groups,
                "group_time": group_times,
                "time": records.times,
                **{f: _polars_column(records.columns[f]) for f in names},
            }
        ).sort(["group"] if batch.per_record else ["key", "group", "time"], maintain_order=True)

    def _rows(
        self, keys: list[str], groups: np.ndarray, times: np.ndarray, columns: dict[str, np.ndarray]
    ) -> Records:
        record_ids = [f"{self.usecase}:{k}:{g}" for k, g in zip(keys, groups.tolist(), strict=True)]
        return Records(
            record_ids=record_ids,
            ids=_ids_of(record_ids),
            keys=keys,
            times=times.astype(np.int64),
            columns=columns,
        )

    # ------------------------------------------------------------ kinds

    def _aggregate(self, records: Records, batch: Dispatched) -> Records:
        frame = self._frame(records, batch, self.fields)
        lists = [pl.col(f).alias(f"__list_{f}") for f in {f for f, _, _ in self._bands}]
        out = frame.group_by(["key", "group"], maintain_order=True).agg(
            pl.col("time").min().alias("first_time"),
            pl.col("group_time").first(),
            pl.col("record_id").first(),
            *self._exprs,
            *lists,
            *([pl.col("time").alias("__times")] if self._bands else []),
        )
        for field_name, column, (lo, hi) in self._bands:
            values = out[f"__list_{field_name}"].to_list()
            stamps = out["__times"].to_list()
            energy = [
                band_energy(np.asarray(v, np.float64), np.asarray(t, np.int64), lo, hi)
                for v, t in zip(values, stamps, strict=True)
            ]
            out = out.with_columns(pl.Series(column, energy, dtype=pl.Float64))
        keys = out["key"].to_list()
        group_times = out["group_time"].to_numpy()
        times = np.where(group_times >= 0, group_times, out["first_time"].to_numpy())
        groups = out["group"].to_numpy()
        if batch.per_record:
            ids = out["record_id"].to_list()
            cols = {c: out[c].to_numpy().astype(np.float64) for c in self.columns}
            return Records(ids, _ids_of(ids), keys, times.astype(np.int64), cols)
        groups = np.where(groups >= 0, groups, times)
        return self._rows(
            keys, groups, times, {c: out[c].to_numpy().astype(np.float64) for c in self.columns}
        )

    def _sequences(
        self, records: Records, batch: Dispatched, fields: Sequence[str], length: int, pad: float
    ) -> Records:
        """Per key and group, the latest ``length`` records by event time as ``[length, F]``.

        Padded with ``pad`` at the start; the ids of all the group's records go along.
        """
        frame = self._frame(records, batch, fields)
        out = frame.group_by(["key", "group"], maintain_order=True).agg(
            pl.col("time").min().alias("first_time"),
            pl.col("group_time").first(),
            pl.col("record_id").alias("__members"),
            *(pl.col(f).cast(pl.Float64).tail(length).alias(f"__seq_{f}") for f in fields),
        )
        groups = len(out)
        seq = np.full((groups, length, len(fields)), pad, dtype=np.float64)
        for j, f in enumerate(fields):
            for g, values in enumerate(out[f"__seq_{f}"].to_list()):
                if values:
                    seq[g, length - len(values) :, j] = values
        members = np.empty(groups, dtype=object)
        for g, ids in enumerate(out["__members"].to_list()):
            members[g] = ids
        group_times = out["group_time"].to_numpy()
        times = np.where(group_times >= 0, group_times, out["first_time"].to_numpy())
        ids = out["group"].to_numpy()
        ids = np.where(ids >= 0, ids, times)
        return self._rows(
            out["key"].to_list(), ids, times, {SEQUENCE_COLUMN: seq, MEMBERS_COLUMN: members}
        )

    def _python(self, records: Records, batch: Dispatched) -> Records:
        assert self._func is not None
        frame = self._frame(records, batch, records.columns)
        try:
            out = self._func(frame)
        except Exception as exc:
            msg = (
                f"the reduction entry point failed on a dispatch of {len(records)} records: {exc!r}"
            )
            raise ReductionError(msg) from exc
        if not isinstance(out, pl.DataFrame):
            msg = f"the reduction entry point returned {type(out).__name__}, not a polars DataFrame"
            raise ReductionError(msg)
        missing = [c for c in ("key", "time", *self.columns) if c not in out.columns]
        if missing:
            msg = f"the reduction entry point's result lacks columns {missing} (has {out.columns})"
            raise ReductionError(msg)
        times = out["time"].cast(pl.Int64).to_numpy()
        groups = out["group"].cast(pl.Int64).to_numpy() if "group" in out.columns else times
        columns = {c: out[c].cast(pl.Float64).to_numpy() for c in self.columns}
        return self._rows(out["key"].cast(pl.Utf8).to_list(), groups, times, columns)

    def _onnx(self, records: Records) -> Records:
        assert self._premodel is not None
        x = records.matrix(self._inputs)
        try:
            (y,) = self._premodel.run(None, {self._pre_input: x})[:1]
        except Exception as exc:  # onnxruntime raises its own exception types
            msg = f"the ONNX pre-model failed on {len(records)} records of {self._inputs}: {exc}"
            raise ReductionError(msg) from exc
        y = np.asarray(y, dtype=np.float64).reshape(len(records), -1)
        if y.shape[1] != len(self.columns):
            msg = (
                f"the ONNX pre-model gives {y.shape[1]} values per record, the reduction "
                f"declares {len(self.columns)} columns {self.columns}"
            )
            raise ReductionError(msg)
        return Records(
            record_ids=records.record_ids,
            ids=records.ids,
            keys=records.keys,
            times=records.times,
            columns={c: np.ascontiguousarray(y[:, j]) for j, c in enumerate(self.columns)},
        )


# ------------------------------------------------------------------ stateful


@dataclass
class _KeyState:
    ewma: dict[str, float]
    previous: dict[str, float]


class StatefulReduceLogic(StatefulBatchLogic[Reduced, Reduced, "OrderedDict[str, _KeyState]"]):
    """Per key across dispatches: ``<c>_ewma`` and ``<c>_diff`` columns, bounded in keys.

    The first dispatch of a key has EWMA equal to its value and a difference of 0.
    Corrections and on-request dispatches read the state but do not move it, so a
    re-emitted window or a query never shifts the stream's history.
    """

    def __init__(
        self,
        ewma: Sequence[str],
        alpha: float,
        diff: Sequence[str],
        max_keys: int,
        resume: OrderedDict[str, _KeyState] | None = None,
    ) -> None:
        self._ewma = list(ewma)
        self._alpha = alpha
        self._diff = list(diff)
        self._max_keys = max_keys
        self._keys: OrderedDict[str, _KeyState] = OrderedDict(resume or {})

    def on_batch(self, values: list[Reduced]) -> tuple[Iterable[Reduced], bool]:
        return [self._apply(v) for v in values], StatefulBatchLogic.RETAIN

    def _apply(self, reduced: Reduced) -> Reduced:
        recs = reduced.records
        moves = not reduced.correction and reduced.request is None
        n = len(recs)
        ewma = {c: np.empty(n) for c in self._ewma}
        diff = {c: np.empty(n) for c in self._diff}
        for i in np.argsort(recs.times, kind="stable").tolist():
            key = recs.keys[i]
            state = self._keys.get(key)
            new = (
                _KeyState({}, {})
                if state is None
                else _KeyState(dict(state.ewma), dict(state.previous))
            )
            for c in self._ewma:
                x = float(recs.columns[c][i])
                before = new.ewma.get(c)
                new.ewma[c] = x if before is None else self._alpha * x + (1 - self._alpha) * before
                ewma[c][i] = new.ewma[c]
            for c in self._diff:
                x = float(recs.columns[c][i])
                before = new.previous.get(c)
                diff[c][i] = 0.0 if before is None else x - before
                new.previous[c] = x
            if moves:
                self._keys.pop(key, None)
                self._keys[key] = new
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        columns = dict(recs.columns)
        columns.update({f"{c}_ewma": v for c, v in ewma.items()})
        columns.update({f"{c}_diff": v for c, v in diff.items()})
        out = Records(recs.record_ids, recs.ids, recs.keys, recs.times, columns)
        return Reduced(out, correction=reduced.correction, request=reduced.request)

    def snapshot(self) -> OrderedDict[str, _KeyState]:
        return OrderedDict(self._keys)
