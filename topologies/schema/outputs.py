"""Sampling, and the outputs that act on predictions."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import (
    Field,
    SecretStr,
    model_validator,
)

from mlexec.topologies.schema.common import Duration, Name, _Model
from mlexec.topologies.schema.connectors import Backoff, MqttBroker
from mlexec.topologies.schema.sites import KafkaSettings

__all__ = [
    "Debounce",
    "FileOutput",
    "HttpOutput",
    "KafkaOutput",
    "MqttOutput",
    "Output",
    "Sampling",
]


class Sampling(_Model):
    """What the sampling branch keeps for the sample store."""

    rate: float = Field(default=0.01, ge=0.0, le=1.0)
    #: A SQL condition on outputs and features, e.g. ``"score > 0.9"``: always kept.
    keep_when: str | None = None


class Debounce(_Model):
    """Spare an actuator: per key, at most one action per ``every``, and/or only on a change."""

    every: Duration | None = None
    #: An output whose change (e.g. of class) is worth an action; repeats are dropped.
    on_change: str | None = None
    #: Keys remembered (least recently acted on are forgotten first).
    max_keys: int = Field(default=100_000, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _something(self) -> Debounce:
        if self.every is None and self.on_change is None:
            msg = "'every' (an interval) and/or 'on_change' (an output name), found neither"
            raise ValueError(msg)
        return self


class _Output(_Model):
    #: Names the output's checkpoint and metrics; default: its kind.
    name: Name | None = None
    #: Only predictions for which this SQL condition holds, e.g. ``"label = 1"`` or
    #: ``"probabilities_1 > 0.9"`` (columns: key, id, time, model, version, variant and
    #: the outputs; a vector output ``p`` is ``p_0``, ``p_1``, ...).
    when: str | None = None
    debounce: Debounce | None = None
    #: What to act on: the use case's predictions, or the alerts on ``mlexec.alerts``
    #: (JSON objects; ``when`` may use their top-level fields).
    source: Literal["predictions", "alerts"] = "predictions"
    #: Where a first run starts on that topic.
    start: Literal["earliest", "latest"] = "earliest"
    retry: Backoff = Backoff()


class KafkaOutput(_Output):
    """Predictions to another topic, on this site's cluster or another one."""

    kind: Literal["kafka"]
    topic: str = Field(min_length=1)
    kafka: KafkaSettings | None = None
    #: The prediction field that becomes the message key: key, id, model, ...
    key: str = "key"
    #: The JSON shape: these fields only (dotted paths such as ``outputs.label``); default all.
    fields: list[str] | None = None


class HttpOutput(_Output):
    """A webhook: POST each prediction (or a JSON array of up to ``batch``)."""

    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    batch: int = Field(default=1, ge=1, le=10_000)
    #: Request headers; use ``${VAR}`` for secrets, they are never printed.
    headers: dict[str, SecretStr] = {}
    timeout: Duration = timedelta(seconds=10)


class MqttOutput(_Output):
    """Publish predictions to MQTT, on a topic made from the prediction."""

    kind: Literal["mqtt"]
    broker: MqttBroker = MqttBroker()
    #: e.g. ``plant/{key}/anomaly``; fields: key, id, model, version, variant, outputs.
    topic: str = Field(min_length=1)
    qos: Literal[0, 1, 2] = 1
    retain: bool = False

    @model_validator(mode="after")
    def _template(self) -> MqttOutput:
        names = {"key", "id", "model", "version", "variant", "time"}
        for field in re.findall(r"{([^}]*)}", self.topic):
            known = field in names or field.startswith("outputs.")
            if self.source == "predictions" and not known:
                msg = (
                    f"topic: a template using {sorted(names)} or outputs.<name>, found {{{field}}}"
                )
                raise ValueError(msg)
        if "#" in self.topic or "+" in self.topic:
            msg = f"topic: a topic to publish to (no wildcards), found {self.topic!r}"
            raise ValueError(msg)
        return self


class FileOutput(_Output):
    """Rolling JSON-lines or Parquet files of predictions."""

    kind: Literal["file"]
    #: The directory the files go to.
    path: str = Field(min_length=1)
    format: Literal["jsonl", "parquet"] = "jsonl"
    #: A new file once the current one holds this many bytes (JSON lines) or rows (Parquet).
    max_size: int = Field(default=64 << 20, ge=1)
    #: A new file after this long.
    every: Duration = timedelta(hours=1)
    prefix: str = Field(default="predictions", pattern=r"^[A-Za-z0-9_.-]+$")


Output = Annotated[KafkaOutput | HttpOutput | MqttOutput | FileOutput, Field(discriminator="kind")]
