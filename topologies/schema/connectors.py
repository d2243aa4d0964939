"""Data connectors: CSV, log files, HTTP, SQL, Kafka and MQTT sources."""

from __future__ import annotations

import codecs
import re
from datetime import timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jmespath
from croniter import croniter
from jmespath.exceptions import JMESPathError
from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from mlexec.topologies.schema.common import Duration, Name, _Model
from mlexec.topologies.schema.sites import KafkaSettings

__all__ = [
    "Backoff",
    "Connector",
    "CsvConnector",
    "HttpConnector",
    "KafkaConnector",
    "LogfileConnector",
    "MqttBroker",
    "MqttConnector",
    "MqttTls",
    "Multiline",
    "SqlConnector",
]


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
    #: The decimal mark of numbers: ``","`` reads ``3,14`` as 3.14 (with another delimiter).
    decimal: Literal[".", ","] = "."
    #: Cells that mean "no value" (``NA``, ``-``, ``null``): read as empty.
    null_values: list[str] = []
    #: The zone (IANA name, e.g. ``Europe/Berlin``) of timestamps written without one.
    timezone: str | None = None
    poll: Duration = timedelta(seconds=1)
    #: A last line without a newline is read once the file has been quiet this long.
    settle: Duration = timedelta(seconds=2)

    @model_validator(mode="after")
    def _columns_named(self) -> CsvConnector:
        if not self.header and not self.columns:
            msg = "'columns' naming the CSV columns when 'header' is false, found none"
            raise ValueError(msg)
        if self.decimal == self.delimiter:
            msg = (
                f"decimal: a mark other than the delimiter {self.delimiter!r} (use delimiter: ';')"
            )
            raise ValueError(msg)
        if self.timezone is not None:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                msg = f"timezone: an IANA time zone name such as Europe/Berlin, found {self.timezone!r}"
                raise ValueError(msg) from None
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
