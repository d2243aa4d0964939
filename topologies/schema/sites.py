"""Sites and transfer links: Kafka, security, the pipeline's workers and scaling."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from mlexec.topologies.schema.common import ByteRate, Duration, Name, _Model

__all__ = ["KafkaSettings", "Pipeline", "Sasl", "Scale", "Security", "Site", "TransferLink"]


# --------------------------------------------------------------------------- sites


class Sasl(_Model):
    """SASL login for a Kafka client; the password comes from the environment."""

    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    username: str
    password: SecretStr


class Security(_Model):
    """Transport security of a site's Kafka clients."""

    protocol: Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"] = "plaintext"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    sasl: Sasl | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Security:
        if self.protocol.startswith("sasl") and self.sasl is None:
            msg = (
                f"a 'sasl' section (mechanism, username, password) with protocol "
                f"{self.protocol!r}, found none"
            )
            raise ValueError(msg)
        if not self.protocol.startswith("sasl") and self.sasl is not None:
            msg = f"protocol sasl_ssl or sasl_plaintext with a 'sasl' section, found {self.protocol!r}"
            raise ValueError(msg)
        if (self.cert is None) != (self.key is None):
            msg = "both 'cert' and 'key' for mutual TLS, found only one"
            raise ValueError(msg)
        return self


class KafkaSettings(_Model):
    """How a site's processes reach its Kafka cluster."""

    bootstrap: str = Field(min_length=1)
    security: Security = Security()
    #: Extra librdkafka settings passed to every client, e.g. ``{"linger.ms": 5}``.
    client: dict[str, str | int | float | bool] = {}


class Scale(_Model):
    """When ``mlexec up`` restarts the pipeline with more or fewer workers (from recovery)."""

    max_workers: int = Field(default=2, ge=1, le=64)
    min_workers: int = Field(default=1, ge=1, le=64)
    #: Records behind the raw topics' ends that call for one more worker...
    out_above: int = Field(default=50_000, ge=1)
    #: ...and few enough to give one back.
    in_below: int = Field(default=1_000, ge=0)
    #: How long the lag must stay there before the orchestrator acts.
    sustain: Duration = timedelta(seconds=30)
    #: How often the lag is measured.
    every: Duration = timedelta(seconds=5)

    @model_validator(mode="after")
    def _ordered(self) -> Scale:
        if self.min_workers > self.max_workers:
            msg = f"min_workers ({self.min_workers}) at most max_workers ({self.max_workers})"
            raise ValueError(msg)
        if self.in_below >= self.out_above:
            msg = f"in_below ({self.in_below}) below out_above ({self.out_above})"
            raise ValueError(msg)
        return self


class Pipeline(_Model):
    """How a site runs its pipeline dataflow."""

    workers: int = Field(default=1, ge=1, le=64)
    scale: Scale | None = None


class Site(_Model):
    """One place that runs stages: its broker, sample store and local state."""

    kafka: KafkaSettings
    #: ``chdb:///path/to/dir`` (embedded) or ``clickhouse://user:pass@host:port/db``.
    sample_store: str
    #: Where the site keeps recovery snapshots and other local state.
    state_dir: str = ".mlexec/state"
    pipeline: Pipeline = Pipeline()

    @field_validator("sample_store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if not re.match(r"^(chdb://.+|clickhouse(s)?://.+)$", value):
            msg = (
                "a sample-store URL 'chdb:///dir' or 'clickhouse://user:pass@host:port/db', "
                f"found {value!r}"
            )
            raise ValueError(msg)
        return value


class TransferLink(_Model):
    """Data moving between two sites' brokers (MirrorMaker 2 in production).

    Data the placement needs flows both ways: up from ``source`` (an edge) to ``target``
    (the cloud) — raw, reduced data, predictions, samples, alerts — and models down. A
    ``secure`` link (the default) refuses sites whose Kafka is not behind TLS.
    """

    source: Name
    target: Name
    secure: bool = True
    #: At most this much a second each way (``256KiB/s``, ``2Mbit/s``): a thin uplink
    #: carries alerts and health first, then predictions, then samples.
    bandwidth: ByteRate | None = None
    #: The most records that wait to go up: past it, after an outage, the oldest samples
    #: (then predictions) are not sent, counted and reported on ``mlexec.alerts``.
    backlog: int | None = Field(default=None, ge=1)
