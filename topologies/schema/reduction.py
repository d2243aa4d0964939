"""Reduction (the deterministic pre-model step) and the model."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
)

from mlexec.topologies.schema.common import AGGREGATIONS, Name, _Model, parse_aggregation

__all__ = [
    "Aggregate",
    "Ewma",
    "Identity",
    "Model",
    "OnnxReduction",
    "PythonReduction",
    "Reduction",
    "SequenceReduction",
    "Stateful",
]


class Ewma(_Model):
    """An exponentially weighted mean of reduced columns across a key's dispatches."""

    columns: list[str] = Field(min_length=1)
    alpha: float = Field(gt=0.0, le=1.0)


class Stateful(_Model):
    """Reduction across dispatches, per key, recovered after a restart.

    Adds ``<column>_ewma`` for each ``ewma`` column and ``<column>_diff`` (the change
    from the key's previous dispatch) for each ``diff`` column.
    """

    ewma: Ewma | None = None
    diff: list[str] = []
    #: Keys remembered (the least recently seen are forgotten first).
    max_keys: int = Field(default=100_000, ge=1, le=10_000_000)


class _Reduction(_Model):
    #: Cross-dispatch state per key (EWMA, difference from the previous window).
    stateful: Stateful | None = None
    #: Also write reduced rows to ``<uc>.reduced`` when inference runs on the same site
    #: (it always does when inference runs on another one).
    publish: bool = False


class Identity(_Reduction):
    """The model sees each record's fields as they are (per-record models)."""

    kind: Literal["identity"]


class Aggregate(_Reduction):
    """Per dispatch and key, aggregate fields with polars: ``{field: [mean, max, ...]}``.

    Reduced columns are named ``<field>_<aggregation>`` in the declared order
    (``temp_quantile_0_95`` for ``quantile(0.95)``).
    """

    kind: Literal["aggregate"]
    fields: dict[str, list[str]] = Field(min_length=1)

    @field_validator("fields")
    @classmethod
    def _known(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, aggs in value.items():
            if not aggs:
                msg = f"field {name!r} needs at least one aggregation of {list(AGGREGATIONS)}"
                raise ValueError(msg)
            for spec in aggs:
                try:
                    parse_aggregation(spec)
                except ValueError as exc:
                    msg = f"field {name!r}: {exc}"
                    raise ValueError(msg) from None
        return value


class PythonReduction(_Reduction):
    """A packaged function ``module:function`` (polars DataFrame → DataFrame).

    It receives one row per record (``record_id``, ``key``, ``time``, ``group`` and the
    numeric fields) and returns one row per reduced record: ``key``, ``time``, optionally
    ``group``, and the ``columns`` it declares, all numeric.
    """

    kind: Literal["python"]
    entrypoint: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    columns: list[str] = Field(min_length=1)
    #: The wheel or archive that holds the entry point (else: what is installed),
    #: relative to the topology; made importable from it (``docs/fleets.md``).
    package: str | None = None
    #: The package's sha256: any other bytes are refused.
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")


class SequenceReduction(_Reduction):
    """Per key and dispatch group, the records as one sequence: a ``[groups, T, F]`` input.

    For a model over a window's records (window, count, session, request).
    Records are ordered by event time; a group of more than ``length`` records keeps
    the latest ``length``, one of fewer is padded at the start with ``pad`` (the latest
    record is always the last step). The reduced column is named ``sequence``; each
    prediction lists the ids of the group's records in ``records``.
    """

    kind: Literal["sequence"]
    fields: list[str] = Field(min_length=1)
    length: int = Field(ge=1, le=100_000)
    pad: float = 0.0


class OnnxReduction(_Reduction):
    """An ONNX pre-model applied to every record: ``inputs`` fields → ``columns``."""

    kind: Literal["onnx"]
    path: str
    inputs: list[str] = Field(min_length=1)
    columns: list[str] = Field(min_length=1)
    input_name: str | None = None


Reduction = Annotated[
    Identity | Aggregate | PythonReduction | OnnxReduction | SequenceReduction,
    Field(discriminator="kind"),
]


class Model(_Model):
    """An ONNX model: where it is, which version, which columns feed which input.

    The model's signature is the contract (``docs/models.md``): ``inputs`` is either the
    columns of its one input in order (default: every column the reduction gives), or
    a mapping ``{input: [columns...]}`` for a model with several inputs; without it a
    model with several inputs gets, per input, the column named like it.
    """

    name: Name
    version: str = Field(min_length=1)
    path: str
    inputs: list[str] | dict[str, list[str]] | None = None
    #: Older spelling of ``inputs: {input_name: [columns...]}`` for a one-input model.
    input_name: str | None = None
    #: ONNX output names to publish; default: all.
    outputs: list[str] | None = None
    #: onnxruntime's threads for one inference (intra-op).
    threads: int = Field(default=1, ge=1, le=256)
    #: onnxruntime's graph optimisation level.
    optimization: Literal["all", "extended", "basic", "none"] = "all"
    #: Execution providers in order of preference (``cuda``, ``openvino``, ``tensorrt``,
    #: ... or onnxruntime's full names); those not installed are skipped, and the CPU is
    #: always the last fallback.
    providers: list[str] = Field(default=["cpu"], min_length=1)

    @field_validator("inputs")
    @classmethod
    def _inputs_named(
        cls, value: list[str] | dict[str, list[str]] | None
    ) -> list[str] | dict[str, list[str]] | None:
        if isinstance(value, dict):
            for name, columns in value.items():
                if not columns:
                    msg = f"input {name!r}: at least one column"
                    raise ValueError(msg)
        elif value is not None and not value:
            msg = "at least one column (or leave inputs out: every column feeds the model)"
            raise ValueError(msg)
        return value
