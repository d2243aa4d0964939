"""A use case's input and placement, and its dispatch rules (when the model runs)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from croniter import croniter
from pydantic import (
    AwareDatetime,
    Field,
    field_validator,
    model_validator,
)

from mlexec.topologies.schema.common import Duration, FieldType, Name, _Model

__all__ = [
    "Condition",
    "CountWindow",
    "Cron",
    "Dispatch",
    "EVENT_TIME_WINDOWS",
    "Input",
    "MicroBatch",
    "OnRequest",
    "PerRecord",
    "Placement",
    "Session",
    "Sliding",
    "Tumbling",
]


# --------------------------------------------------------------------- use cases


class Input(_Model):
    """The raw topic a use case reads and the shape of its JSON records."""

    topic: str | None = None
    partitions: int = Field(default=2, ge=1, le=1024)
    schema_: dict[str, FieldType] = Field(alias="schema", min_length=1)
    key: str
    time: str
    #: Unit of numeric event times; ISO 8601 strings are read as they are.
    time_unit: Literal["s", "ms", "us", "ns"] = "ms"
    #: Plausible event times: not before ``earliest_time`` and not more than ``max_ahead``
    #: past the wall clock. A record outside is a dead letter and never moves a watermark.
    earliest_time: AwareDatetime = datetime(1970, 1, 1, tzinfo=UTC)
    max_ahead: Duration = timedelta(days=1)
    #: Fields that may be missing, ``null`` or an empty cell: a number becomes NaN (the
    #: model's imputer sees it; ``null_rate`` counts it), a text ``null`` (``""`` for a
    #: string model input). Other fields without a value make the record a dead letter.
    nullable: list[str] = []

    @model_validator(mode="after")
    def _nullable_declared(self) -> Input:
        for i, name in enumerate(self.nullable):
            if name not in self.schema_:
                msg = f"nullable.{i}: a field of the schema {sorted(self.schema_)}, found {name!r}"
                raise ValueError(msg)
            if name in (self.key, self.time):
                msg = (
                    f"nullable.{i}: the key and the event time always need a value, found {name!r}"
                )
                raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _key_and_time_declared(self) -> Input:
        for role, name in (("key", self.key), ("time", self.time)):
            if name not in self.schema_:
                msg = f"{role} field {name!r} is not in the schema (fields: {sorted(self.schema_)})"
                raise ValueError(msg)
        if self.schema_[self.time] != "timestamp":
            msg = f"time field {self.time!r} must have type 'timestamp', found {self.schema_[self.time]!r}"
            raise ValueError(msg)
        return self


class Placement(_Model):
    """Which site runs each stage; ``None`` means the topology's only site."""

    connectors: Name | None = None
    dispatch: Name | None = None
    infer: Name | None = None
    store: Name | None = None
    #: Where outputs deliver predictions (``mlexec act``); default: the infer site.
    act: Name | None = None


class PerRecord(_Model):
    """Run the model on every record as it comes (inference is still batched)."""

    kind: Literal["record"]


class MicroBatch(_Model):
    """Run the model on at most ``max_records`` records, waiting at most ``max_wait``."""

    kind: Literal["microbatch"]
    max_records: int = Field(default=256, ge=1, le=1_000_000)
    max_wait: Duration = timedelta(milliseconds=50)
    #: Dispatch each consumed batch at once, cut to ``max_records`` (no wait, no state,
    #: no exchange between workers; a backlog still fills batches); ``false`` collects
    #: across polls up to ``max_records``, waiting at most ``max_wait``.
    eager: bool = True


def _positive(value: timedelta, what: str) -> timedelta:
    if value <= timedelta(0):
        msg = f"a {what} above zero, found {value}"
        raise ValueError(msg)
    return value


class _EventTimeWindow(_Model):
    """What every event-time window shares: watermark, late-data policy, idle closing."""

    #: How far a record may run behind its partition's newest event time and still
    #: count; windows close when every partition's watermark has passed their end.
    lateness: Duration = timedelta(0)
    #: A record for a window that already closed: ``deadletter`` (with the reason) or
    #: ``correction`` (the window is emitted again with it, under the same id).
    late: Literal["deadletter", "correction"] = "deadletter"
    #: How long a closed window is kept for corrections (``late: correction``).
    correct_for: Duration = timedelta(hours=1)
    #: Close windows by wall clock too when no new data arrives for this long.
    idle_close: Duration = timedelta(seconds=5)


class Tumbling(_EventTimeWindow):
    """Run the model once per key and fixed event-time window."""

    kind: Literal["tumbling"]
    size: Duration

    @field_validator("size")
    @classmethod
    def _size(cls, value: timedelta) -> timedelta:
        return _positive(value, "window size")


class Sliding(_EventTimeWindow):
    """Windows of ``size`` starting every ``hop``: each record is in ``size / hop`` windows."""

    kind: Literal["sliding"]
    size: Duration
    hop: Duration

    @model_validator(mode="after")
    def _hop_divides_size(self) -> Sliding:
        _positive(self.size, "window size")
        _positive(self.hop, "hop")
        size, hop = _ms(self.size), _ms(self.hop)
        if hop > size or size % hop:
            msg = f"hop: a hop that divides the window size {self.size}, found {self.hop}"
            raise ValueError(msg)
        return self


class Session(_EventTimeWindow):
    """Per key, records closer than ``gap`` in event time form one window."""

    kind: Literal["session"]
    gap: Duration

    @field_validator("gap")
    @classmethod
    def _gap(cls, value: timedelta) -> timedelta:
        return _positive(value, "session gap")

    @model_validator(mode="after")
    def _late_policy(self) -> Session:
        if self.late == "correction":
            msg = (
                "late: 'deadletter' for session windows — a late record can merge or split "
                "sessions already emitted, which a correction of one window cannot express"
            )
            raise ValueError(msg)
        return self


class CountWindow(_Model):
    """Per key, every ``count`` records (in the order they arrive) form one window."""

    kind: Literal["count"]
    count: int = Field(ge=1, le=1_000_000)


class Cron(_Model):
    """On a schedule (cron syntax, in ``timezone``): run over what arrived since the last run."""

    kind: Literal["cron"]
    schedule: str
    timezone: str = "UTC"

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            msg = f"a cron expression like '0 2 * * *' (every day at 02:00), found {value!r}"
            raise ValueError(msg)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            msg = f"an IANA time zone like 'UTC' or 'Europe/Berlin', found {value!r}"
            raise ValueError(msg) from exc
        return value


class OnRequest(_Model):
    """Score on request: ``<uc>.requests`` carries a payload or a key and time range.

    Replies go to the request's ``reply_to`` topic (default ``<uc>.replies``), keyed
    and correlated by ``request_id``; an error reply is sent when a request cannot be
    answered, never silence.
    """

    kind: Literal["request"]
    #: A key / time-range request waits at most this long for its data to arrive.
    timeout: Duration = timedelta(seconds=10)
    #: How much history per key is kept for key / time-range requests.
    keep: Duration = timedelta(hours=1)
    #: At most this many records are kept per key (the oldest go first).
    max_records_per_key: int = Field(default=10_000, ge=1, le=10_000_000)
    #: Sources whose watermark has not moved for this long stop holding requests back.
    idle_close: Duration = timedelta(seconds=5)


class Condition(_Model):
    """Run when a field crosses a threshold, with hysteresis and a cool-down, per key.

    ``above: 80, clear: 75`` fires when the field rises above 80 and re-arms only once it
    has fallen below 75; ``below`` works the other way. A firing dispatches the key's
    records of the last ``lookback`` (event time) up to the crossing record.
    """

    kind: Literal["condition"]
    field: str
    above: float | None = None
    below: float | None = None
    #: The level that re-arms the trigger; default: the threshold itself.
    clear: float | None = None
    #: After a firing, no new one for this long (event time).
    cooldown: Duration = timedelta(0)
    lookback: Duration = timedelta(0)
    #: Keys remembered (the least recently seen are forgotten first).
    max_keys: int = Field(default=100_000, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _one_threshold(self) -> Condition:
        if (self.above is None) == (self.below is None):
            msg = "exactly one of 'above' or 'below' (the threshold to cross)"
            raise ValueError(msg)
        if self.clear is not None:
            if self.above is not None and self.clear > self.above:
                msg = (
                    f"clear: a re-arm level at or below 'above' ({self.above}), found {self.clear}"
                )
                raise ValueError(msg)
            if self.below is not None and self.clear < self.below:
                msg = (
                    f"clear: a re-arm level at or above 'below' ({self.below}), found {self.clear}"
                )
                raise ValueError(msg)
        return self


Dispatch = Annotated[
    PerRecord
    | MicroBatch
    | Tumbling
    | Sliding
    | Session
    | CountWindow
    | Cron
    | OnRequest
    | Condition,
    Field(discriminator="kind"),
]
EVENT_TIME_WINDOWS = (Tumbling, Sliding, Session)


def _ms(value: timedelta) -> int:
    return int(value / timedelta(milliseconds=1))
