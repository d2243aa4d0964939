"""The topology schema: sites, transfer links and use cases, as frozen pydantic models.

A topology is the one declaration a user writes. Every section is validated here,
before anything starts; cross-references (a stage placed on a site that does not
exist, a model input that no stage produces) are checked by :class:`Topology` so a
config error always names the YAML path it comes from.
"""

from __future__ import annotations

import codecs
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import jmespath
from croniter import croniter
from jmespath.exceptions import JMESPathError
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

__all__ = [
    "Lifecycle",
    "Training",
    "STATISTICS",
    "Accuracy",
    "FileReference",
    "Health",
    "ModelReference",
    "Monitoring",
    "RangeReference",
    "Reference",
    "Thresholds",
    "Watched",
    "parse_aggregation",
    "aggregation_column",
    "Stateful",
    "Sliding",
    "Session",
    "PythonReduction",
    "PerRecord",
    "OnnxReduction",
    "OnRequest",
    "Ewma",
    "Cron",
    "CountWindow",
    "Condition",
    "AGGREGATIONS",
    "EVENT_TIME_WINDOWS",
    "Aggregate",
    "Backoff",
    "Connector",
    "CsvConnector",
    "Debounce",
    "Dispatch",
    "FileOutput",
    "FieldType",
    "HttpConnector",
    "HttpOutput",
    "Identity",
    "Input",
    "KafkaConnector",
    "KafkaOutput",
    "KafkaSettings",
    "LogfileConnector",
    "MicroBatch",
    "Model",
    "MqttBroker",
    "MqttConnector",
    "MqttOutput",
    "MqttTls",
    "Multiline",
    "Output",
    "Pipeline",
    "Placement",
    "Reduction",
    "Sampling",
    "Sasl",
    "Scale",
    "Security",
    "Site",
    "SqlConnector",
    "Topology",
    "TransferLink",
    "Tumbling",
    "UseCase",
    "parse_duration",
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


# -------------------------------------------------------------------- connectors

Constant = str | int | float | bool


class _Connector(_Model):
    #: Names the connector's checkpoint and metrics; default: its kind.
    name: Name | None = None
    #: Fields added to every record, e.g. the key of a single-machine log.
    set: dict[str, Constant] = {}
    #: Records per produce-and-checkpoint step.
    batch: int = Field(default=5000, ge=1, le=1_000_000)


def _valid_encoding(value: str) -> str:
    try:
        codecs.lookup(value)
    except LookupError:
        msg = f"a text encoding Python knows (utf-8, latin-1, cp1252, ...), found {value!r}"
        raise ValueError(msg) from None
    return value


def _valid_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        msg = f"a regular expression, found {value!r} ({exc})"
        raise ValueError(msg) from None
    return value


Encoding = Annotated[str, BeforeValidator(_valid_encoding)]
Regex = Annotated[str, BeforeValidator(_valid_regex)]


class CsvConnector(_Connector):
    """Rows of a CSV file, or of every file a glob matches; appended rows and new files too."""

    kind: Literal["csv"]
    #: A file or a glob (``/data/in/*.csv``); files are read in modification-time order.
    path: str = Field(min_length=1)
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quote: str = Field(default='"', min_length=1, max_length=1)
    encoding: Encoding = "utf-8"
    #: The first row names the columns; without it, ``columns`` must.
    header: bool = True
    columns: list[str] | None = None
    #: CSV column → record field.
    rename: dict[str, str] = {}
    poll: Duration = timedelta(seconds=1)
    #: A last line without a newline is read once the file has been quiet this long.
    settle: Duration = timedelta(seconds=2)

    @model_validator(mode="after")
    def _columns_named(self) -> CsvConnector:
        if not self.header and not self.columns:
            msg = "'columns' naming the CSV columns when 'header' is false, found none"
            raise ValueError(msg)
        return self


class Multiline(_Model):
    """Records spanning lines: a line matching ``start`` begins one, other lines continue it."""

    start: Regex
    #: The last record is complete once the file has been quiet this long.
    timeout: Duration = timedelta(seconds=2)


class LogfileConnector(_Connector):
    """Lines appended to a log file, surviving rotation by rename and by copy-truncate."""

    kind: Literal["logfile"]
    path: str = Field(min_length=1)
    #: ``regex``: named groups are the fields; ``jsonl``: one JSON object per record.
    format: Literal["regex", "jsonl"] = "regex"
    pattern: Regex | None = None
    multiline: Multiline | None = None
    #: Where rotated files go (a glob); default: siblings named ``<file>.*`` or ``<file>-*``.
    rotated: str | None = None
    encoding: Encoding = "utf-8"
    poll: Duration = timedelta(milliseconds=250)
    settle: Duration = timedelta(seconds=2)
    #: After a rotation, keep reading the old file for lines still written to it this long.
    rotate_wait: Duration = timedelta(seconds=5)

    @model_validator(mode="after")
    def _pattern_for_regex(self) -> LogfileConnector:
        if self.format == "regex":
            if self.pattern is None:
                msg = "a 'pattern' with named groups for format 'regex', found none"
                raise ValueError(msg)
            if not re.compile(self.pattern).groupindex:
                msg = f"a 'pattern' with named groups (?P<field>...), found {self.pattern!r}"
                raise ValueError(msg)
        elif self.pattern is not None:
            msg = "no 'pattern' with format 'jsonl' (JSON objects carry their field names)"
            raise ValueError(msg)
        return self


class Backoff(_Model):
    """Retry with exponential backoff (doubling, with jitter) between ``initial`` and ``max``."""

    attempts: int = Field(default=5, ge=1, le=1000)
    initial: Duration = timedelta(milliseconds=500)
    max: Duration = timedelta(seconds=30)


def _valid_jmespath(value: str) -> str:
    try:
        jmespath.compile(value)
    except JMESPathError as exc:
        msg = f"a JMESPath expression such as 'data.items', found {value!r} ({exc})"
        raise ValueError(msg) from None
    return value


JsonPath = Annotated[str, BeforeValidator(_valid_jmespath)]


class HttpConnector(_Connector):
    """Records from a JSON web endpoint, polled on an interval or a cron schedule."""

    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    every: Duration | None = None
    cron: str | None = None
    #: JMESPath from the response body to the list of records; ``@`` is the body itself.
    records: JsonPath = "@"
    #: JMESPath to the next page's URL, for paged endpoints.
    next: JsonPath | None = None
    max_pages: int = Field(default=100, ge=1, le=100_000)
    #: Request headers; use ``${VAR}`` for secrets, they are never printed.
    headers: dict[str, SecretStr] = {}
    timeout: Duration = timedelta(seconds=10)
    retry: Backoff = Backoff()

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            msg = f"a cron expression such as '*/5 * * * *', found {value!r}"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> HttpConnector:
        if (self.every is None) == (self.cron is None):
            msg = "exactly one of 'every' (an interval) or 'cron' (a schedule)"
            raise ValueError(msg)
        return self


class SqlConnector(_Connector):
    """New rows of a table or query, read incrementally on a cursor column."""

    kind: Literal["sql"]
    #: Any SQLAlchemy URL: ``postgresql+psycopg://user:pw@host/db``, ``sqlite:///file.db``.
    url: SecretStr
    table: str | None = None
    #: A SELECT; mlexec wraps it to filter and order by the cursor.
    query: str | None = None
    #: An increasing column (id or timestamp) that says which rows are new.
    cursor: str
    #: A unique column that orders rows sharing a cursor value (timestamps tie).
    tiebreak: str | None = None
    #: Only rows whose cursor is above this are read on the first run.
    start: Constant | None = None
    every: Duration = timedelta(seconds=5)
    retry: Backoff = Backoff()

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlConnector:
        if (self.table is None) == (self.query is None):
            msg = "exactly one of 'table' or 'query'"
            raise ValueError(msg)
        return self


class KafkaConnector(_Connector):
    """Records from an existing topic, on this site's cluster or another one."""

    kind: Literal["kafka"]
    topic: str = Field(min_length=1)
    #: Another cluster; default: the site's own.
    kafka: KafkaSettings | None = None
    #: Where a first run starts.
    start: Literal["earliest", "latest"] = "earliest"


class MqttTls(_Model):
    """TLS to an MQTT broker: a CA, and a client certificate for mutual TLS."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


class MqttBroker(_Model):
    """Where an MQTT broker is and how to log in; the password from the environment."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls: MqttTls | None = None
    #: Client id; a fixed one keeps a QoS 1 session across restarts.
    client_id: str | None = None
    keepalive: int = Field(default=30, ge=5, le=3600)


class MqttConnector(_Connector):
    """Messages published to MQTT topics (QoS 1, acknowledged once in Kafka)."""

    kind: Literal["mqtt"]
    broker: MqttBroker = MqttBroker()
    #: Topic filters to subscribe to, e.g. ``plant/+/telemetry``.
    topics: list[str] = Field(min_length=1)
    qos: Literal[0, 1, 2] = 1
    #: The topic segment (0-based) that is the record's key, e.g. 1 for ``plant/<machine>/...``.
    key_segment: int | None = None
    poll: Duration = timedelta(milliseconds=200)


Connector = Annotated[
    CsvConnector | LogfileConnector | HttpConnector | SqlConnector | KafkaConnector | MqttConnector,
    Field(discriminator="kind"),
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


class OnnxReduction(_Reduction):
    """An ONNX pre-model applied to every record: ``inputs`` fields → ``columns``."""

    kind: Literal["onnx"]
    path: str
    inputs: list[str] = Field(min_length=1)
    columns: list[str] = Field(min_length=1)
    input_name: str | None = None


Reduction = Annotated[
    Identity | Aggregate | PythonReduction | OnnxReduction, Field(discriminator="kind")
]


class Model(_Model):
    """An ONNX model: where it is, which version, which columns feed it."""

    name: Name
    version: str = Field(min_length=1)
    path: str
    #: Feature columns in the model's input order; default: every numeric column.
    inputs: list[str] | None = None
    #: ONNX input name; default: the model's first input.
    input_name: str | None = None
    #: ONNX output names to publish; default: all.
    outputs: list[str] | None = None


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


# -------------------------------------------------------------------- monitoring

#: What a watched value can be judged by; every one is "higher is worse".
#: Drift against the reference: population stability index, Kolmogorov–Smirnov
#: statistic, Jensen–Shannon distance (base 2), Wasserstein-1 distance, the shift of
#: the mean and of the 5/25/50/75/95 % quantiles in reference standard deviations.
#: Quality of the current window alone: the share of missing (NaN) values and of values
#: outside the declared range (default: the reference's minimum to maximum).
STATISTICS = (
    "psi",
    "ks",
    "js",
    "wasserstein",
    "mean_shift",
    "quantile_shift",
    "null_rate",
    "out_of_range",
)


class Thresholds(_Model):
    """Alert at ``warning`` and/or ``critical`` when the value reaches it."""

    warning: float | None = Field(default=None, ge=0)
    critical: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _some(self) -> Thresholds:
        if self.warning is None and self.critical is None:
            msg = "'warning' and/or 'critical' (a number), found neither"
            raise ValueError(msg)
        if self.warning is not None and self.critical is not None and self.critical < self.warning:
            msg = f"critical ({self.critical}) at least warning ({self.warning})"
            raise ValueError(msg)
        return self

    def severity(self, value: float) -> str | None:
        """``critical``, ``warning`` or ``None`` for ``value``."""
        if self.critical is not None and value >= self.critical:
            return "critical"
        if self.warning is not None and value >= self.warning:
            return "warning"
        return None


class Watched(_Model):
    """One watched feature or output: the statistics to judge it by, with thresholds.

    With none declared it is judged by PSI (warning 0.1, critical 0.25).
    """

    #: The values expected, for ``out_of_range``; default: the reference's min to max.
    range: tuple[float, float] | None = None
    psi: Thresholds | None = None
    ks: Thresholds | None = None
    js: Thresholds | None = None
    wasserstein: Thresholds | None = None
    mean_shift: Thresholds | None = None
    quantile_shift: Thresholds | None = None
    null_rate: Thresholds | None = None
    out_of_range: Thresholds | None = None

    @model_validator(mode="after")
    def _ordered_range(self) -> Watched:
        if self.range is not None and self.range[0] > self.range[1]:
            msg = f"range: [low, high] with low <= high, found {list(self.range)}"
            raise ValueError(msg)
        return self

    def thresholds(self) -> dict[str, Thresholds]:
        """Statistic → thresholds, defaults applied."""
        declared = {s: t for s in STATISTICS if (t := getattr(self, s)) is not None}
        return declared or {"psi": Thresholds(warning=0.1, critical=0.25)}


class RangeReference(_Model):
    """The samples of a fixed event-time range ``[start, end)`` of the use case itself."""

    kind: Literal["range"]
    start: AwareDatetime
    end: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> RangeReference:
        if self.end <= self.start:
            msg = f"end after start, found {self.start.isoformat()} .. {self.end.isoformat()}"
            raise ValueError(msg)
        return self

    def name(self) -> str:
        return f"range:{self.start.isoformat()}/{self.end.isoformat()}"


class FileReference(_Model):
    """Rows from a Parquet or CSV file holding the watched columns (relative to the topology)."""

    kind: Literal["file"]
    path: str = Field(pattern=r"(?i)\.(parquet|csv)$")

    def name(self) -> str:
        return f"file:{self.path}"


class ModelReference(_Model):
    """The training data recorded for a model version (``mlexec monitor reference``)."""

    kind: Literal["model"]
    #: Default: the use case's ``model.version``.
    version: str | None = None

    def name(self) -> str:
        return f"model:{self.version}"


Reference = Annotated[RangeReference | FileReference | ModelReference, Field(discriminator="kind")]


class Accuracy(_Model):
    """Predictions against labels from ``<uc>.feedback``, per model version and variant."""

    #: The (scalar) model output compared with the label.
    output: str
    #: ``mae`` / ``rmse`` for values, ``error_rate`` (share of output != label) for classes.
    metric: Literal["mae", "rmse", "error_rate"] = "mae"
    thresholds: Thresholds
    #: Fewer labelled predictions than this in the window give no verdict.
    min_labels: int = Field(default=20, ge=1)


class Health(_Model):
    """Thresholds on the runtime health the dataflows report."""

    #: Records behind the end of the raw (or reduced) topics.
    lag: Thresholds | None = None
    #: Dead letters per record read, over the evaluation window.
    deadletter_rate: Thresholds | None = None
    #: Inference latency p99 in milliseconds.
    latency_p99_ms: Thresholds | None = None
    #: Samples waiting in Kafka for the sample store.
    store_backlog: Thresholds | None = None


class Monitoring(_Model):
    """What ``mlexec monitor run`` watches for a use case, how often and against what."""

    #: How often a scheduled run evaluates.
    every: Duration = timedelta(minutes=1)
    #: The evaluation window: samples whose event time is in the last ``window``.
    window: Duration = timedelta(hours=1)
    #: Equal-frequency bins of the reference for PSI and Jensen–Shannon.
    bins: int = Field(default=10, ge=2, le=100)
    #: Fewer samples than this in the window give no drift or quality verdict.
    min_rows: int = Field(default=100, ge=1)
    reference: Reference | None = None
    watch: dict[str, Watched] = {}
    accuracy: Accuracy | None = None
    health: Health = Health()

    @model_validator(mode="after")
    def _reference_when_watching(self) -> Monitoring:
        drift = {"psi", "ks", "js", "wasserstein", "mean_shift", "quantile_shift"}
        for column, watched in self.watch.items():
            judged = set(watched.thresholds())
            if self.reference is None and drift & judged:
                msg = (
                    f"reference: a reference (kind range, file or model) for the drift of "
                    f"watch.{column}, found none"
                )
                raise ValueError(msg)
            if self.reference is None and "out_of_range" in judged and watched.range is None:
                msg = (
                    f"watch.{column}.range: [low, high] for out_of_range (or a reference, whose "
                    "min and max are the default), found neither"
                )
                raise ValueError(msg)
        return self


# ---------------------------------------------------------------- model life cycle


class Training(_Model):
    """How ``mlexec train`` (or a retraining trigger) makes a new version."""

    #: ``module:function``: takes a polars DataFrame of sampled features and ``label``
    #: (plus ``event_time``), returns an ONNX model (``onnx.ModelProto``, bytes or a path).
    entrypoint: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    #: The latest share of the labelled rows (by event time) kept out to evaluate on.
    holdout: float = Field(default=0.2, gt=0.0, lt=1.0)
    #: Fewer labelled samples than this: no training.
    min_rows: int = Field(default=200, ge=10)
    #: A new version better than production starts as a canary on this share of keys
    #: (0: it stays a candidate for someone to promote).
    canary: float = Field(default=0.1, ge=0.0, lt=1.0)
    #: Alerts of these kinds (warning or critical) start a training, at most once per
    #: ``cooldown``.
    retrain_on: list[Literal["drift", "quality", "accuracy"]] = []
    cooldown: Duration = timedelta(hours=1)


class Lifecycle(_Model):
    """When the monitor promotes a canary or rolls it back, from their comparison.

    Errors are ``monitoring.accuracy``'s metric of its output against the labels.
    """

    #: Labelled samples each of the canary and production need before the policy acts.
    min_labels: int = Field(default=50, ge=1)
    #: Promote the canary when its error is lower than production's by at least this.
    promote_when_better_by: float | None = Field(default=0.0, ge=0.0)
    #: Roll the canary back when its error is higher than production's by more than this...
    rollback_when_worse_by: float | None = Field(default=0.0, ge=0.0)
    #: ...or when its predictions' distribution is this far (KS) from production's.
    rollback_when_distance_above: float | None = Field(default=None, gt=0.0, le=1.0)
    #: Samples each needs before the distribution is compared.
    min_samples: int = Field(default=200, ge=10)
    training: Training | None = None


class UseCase(_Model):
    """One model's whole use case, from raw topic to sample store."""

    input: Input
    #: Where the raw records come from; run on the ``connectors`` site by ``mlexec connect``.
    connectors: list[Connector] = []
    placement: Placement = Placement()
    dispatch: Dispatch
    reduction: Reduction = Identity(kind="identity")
    model: Model
    sampling: Sampling = Sampling()
    retention: Duration = timedelta(days=30)
    outputs: list[Output] = []
    monitoring: Monitoring | None = None
    lifecycle: Lifecycle | None = None

    @field_validator("retention")
    @classmethod
    def _retention_positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            msg = f"a retention of at least 1s, found {value}"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _connectors_fit_schema(self) -> UseCase:
        names: set[str] = set()
        for i, conn in enumerate(self.connectors):
            name = conn.name or conn.kind
            if name in names:
                msg = (
                    f"connectors.{i}.name: a name unique in the use case, found {name!r} twice "
                    "(name connectors of the same kind)"
                )
                raise ValueError(msg)
            names.add(name)
            if isinstance(conn, LogfileConnector) and conn.pattern is not None:
                given = set(re.compile(conn.pattern).groupindex) | set(conn.set)
                missing = [f for f in self.input.schema_ if f not in given]
                if missing:
                    msg = (
                        f"connectors.{i}.pattern: named groups (or 'set' values) for every "
                        f"schema field, found none for {missing}"
                    )
                    raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _lifecycle_judged_by_accuracy(self) -> UseCase:
        if self.lifecycle is not None and (
            self.monitoring is None or self.monitoring.accuracy is None
        ):
            msg = (
                "lifecycle: promotion, rollback and training compare errors against labels: "
                "declare monitoring.accuracy (the output and metric), found none"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _outputs_named_once(self) -> UseCase:
        names: set[str] = set()
        for i, out in enumerate(self.outputs):
            name = out.name or out.kind
            if name in names:
                msg = (
                    f"outputs.{i}.name: a name unique in the use case, found {name!r} twice "
                    "(name outputs of the same kind)"
                )
                raise ValueError(msg)
            names.add(name)
        return self

    @model_validator(mode="after")
    def _reduction_fits_schema(self) -> UseCase:
        numeric = {"float", "int", "bool"}

        def need_numeric(path: str, name: str) -> None:
            found = self.input.schema_.get(name)
            if found not in numeric:
                msg = (
                    f"{path}: a numeric input field (float, int, bool), "
                    f"found {found or 'no such field'!r} for {name!r}"
                )
                raise ValueError(msg)

        if isinstance(self.reduction, Aggregate):
            for name in self.reduction.fields:
                need_numeric(f"reduction.fields.{name}", name)
        if isinstance(self.reduction, OnnxReduction):
            for i, name in enumerate(self.reduction.inputs):
                need_numeric(f"reduction.inputs.{i}", name)
        if isinstance(self.dispatch, Condition):
            need_numeric("dispatch.field", self.dispatch.field)
        return self


# ---------------------------------------------------------------------- topology


class Topology(_Model):
    """Sites, the links between them, and the use cases they run."""

    name: Name
    sites: dict[Name, Site] = Field(min_length=1)
    links: list[TransferLink] = []
    usecases: dict[Name, UseCase] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> Topology:
        sites = set(self.sites)
        for i, link in enumerate(self.links):
            for end in ("source", "target"):
                if getattr(link, end) not in sites:
                    msg = (
                        f"links.{i}.{end}: a site of {sorted(sites)}, found {getattr(link, end)!r}"
                    )
                    raise ValueError(msg)
            if link.source == link.target:
                msg = f"links.{i}.target: a site other than the source, found {link.target!r}"
                raise ValueError(msg)
            for end in (link.source, link.target):
                protocol = self.sites[end].kafka.security.protocol
                if link.secure and protocol not in ("ssl", "sasl_ssl"):
                    msg = (
                        f"links.{i}.secure: a secure link needs TLS (protocol ssl or sasl_ssl) at "
                        f"both ends; site {end!r} has protocol {protocol!r} (set "
                        f"sites.{end}.kafka.security, or secure: false on a trusted network)"
                    )
                    raise ValueError(msg)
        for uc_name, uc in self.usecases.items():
            for stage, site in uc.placement.model_dump().items():
                if site is None and len(sites) > 1 and stage != "act":
                    msg = (
                        f"usecases.{uc_name}.placement.{stage}: with several sites each stage "
                        f"needs a site of {sorted(sites)}, found none"
                    )
                    raise ValueError(msg)
                if site is not None and site not in sites:
                    msg = f"usecases.{uc_name}.placement.{stage}: a site of {sorted(sites)}, found {site!r}"
                    raise ValueError(msg)
        return self

    def site_of(self, usecase: str, stage: str) -> str:
        """The site that runs ``stage`` of ``usecase``."""
        placed: str | None = getattr(self.usecases[usecase].placement, stage)
        if placed is None and stage == "act":
            return self.site_of(usecase, "infer")
        return placed if placed is not None else next(iter(self.sites))
