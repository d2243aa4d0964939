"""Output sinks: where predictions act — another Kafka topic, a webhook, MQTT, files.

A sink takes a list of :class:`Action` s and returns those it could not deliver after
its retry budget, each with the last error, for the output dead-letter topic. After a
step the runner asks :meth:`OutputSink.commit` whether everything delivered so far is
durable, and only then checkpoints its offsets on the predictions topic: a file sink
fsyncs (JSON lines) or writes whole files (Parquet), the others are durable once
acknowledged. Deliveries are at least once and carry the record id (``Idempotency-Key``
for HTTP, the ``id`` field everywhere); the file sink is exactly once per message of the
predictions topic, because a restart cuts its files back to the checkpointed size (a
pipeline restart can repeat a prediction id on that topic: drop repeats by ``id``).
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
import polars as pl
from confluent_kafka import KafkaError, Message

from mlexec.connectors.delivery import ReliableProducer
from mlexec.connectors.retry import HttpStatusError, RetryableError, check_http, with_backoff
from mlexec.errors import MlexecError
from mlexec.topologies.schema import FileOutput, HttpOutput, KafkaOutput, MqttBroker, MqttOutput

__all__ = [
    "Action",
    "FileSink",
    "HttpSink",
    "KafkaSink",
    "MqttSink",
    "OutputSink",
    "mqtt_client",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Action:
    """A prediction to act on: its id and key, the decoded object and the bytes as consumed."""

    id: str
    key: str
    prediction: dict[str, Any]
    value: bytes


Failures = list[tuple[Action, str]]


class OutputSink(Protocol):
    """Delivers actions to one place."""

    #: Where it delivers, for people.
    target: str
    #: Attempts that failed and were tried again.
    retried: int

    def deliver(self, actions: list[Action]) -> Failures: ...

    def commit(self) -> bool:
        """Make what was delivered durable; whether all of it is now."""
        ...

    def tick(self) -> bool:
        """Time-based work between steps (rotating files); whether the state changed."""
        ...

    def state(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class _Acknowledged:
    """A sink whose deliveries are durable once acknowledged: nothing to commit or keep."""

    def commit(self) -> bool:
        return True

    def tick(self) -> bool:
        return False

    def state(self) -> dict[str, Any]:
        return {}


def _pick(prediction: dict[str, Any], path: str) -> Any:
    value: Any = prediction
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


# -------------------------------------------------------------------------- Kafka


class KafkaSink(_Acknowledged):
    """Predictions to a topic: a chosen key field and JSON shape, idempotent producer."""

    def __init__(self, config: KafkaOutput, conf: dict[str, Any]) -> None:
        self.config = config
        self.target = f"{conf.get('bootstrap.servers')}/{config.topic}"
        self.retried = 0
        self._producer = ReliableProducer(conf, what=f"output {self.target}", **{"linger.ms": 5})

    def _value(self, action: Action) -> bytes:
        fields = self.config.fields
        if fields is None:
            return action.value
        return orjson.dumps({f: _pick(action.prediction, f) for f in fields})

    def deliver(self, actions: list[Action]) -> Failures:
        failures: Failures = []

        def report(action: Action) -> Callable[[KafkaError | None, Message], bool]:
            def done(err: KafkaError | None, _msg: Message) -> bool:
                if err is not None:
                    failures.append((action, str(err)))  # dead-lettered by the output runner
                return True

            return done

        for action in actions:
            key = _pick(action.prediction, self.config.key)
            self._producer.produce(
                self.config.topic,
                self._value(action),
                key=None if key is None else str(key).encode(),
                headers=[("mlexec.id", action.id.encode())],
                on_delivery=report(action),
            )
        self._producer.flush(60.0)
        return failures

    def close(self) -> None:
        self._producer.flush(30.0)


# --------------------------------------------------------------------------- HTTP


class HttpSink(_Acknowledged):
    """POST JSON to a webhook: one prediction per request, or arrays of up to ``batch``."""

    def __init__(self, config: HttpOutput) -> None:
        self.config = config
        self.target = config.url
        self.retried = 0
        self._client = httpx.Client(
            timeout=config.timeout.total_seconds(),
            headers={
                "Content-Type": "application/json",
                **{k: v.get_secret_value() for k, v in config.headers.items()},
            },
        )

    def deliver(self, actions: list[Action]) -> Failures:
        failures: Failures = []
        size = self.config.batch
        for start in range(0, len(actions), size):
            chunk = actions[start : start + size]
            if size == 1:
                body, ident = chunk[0].value, chunk[0].id
            else:
                body = b"[" + b",".join(a.value for a in chunk) + b"]"
                ident = f"{chunk[0].id}..{chunk[-1].id}"
            headers = {"Idempotency-Key": ident}

            def post(body: bytes = body, headers: dict[str, str] = headers) -> httpx.Response:
                return check_http(
                    lambda: self._client.post(self.config.url, content=body, headers=headers)
                )

            try:
                with_backoff(
                    post, self.config.retry, what=f"POST {self.target}", on_retry=self._count
                )
            except (RetryableError, HttpStatusError) as exc:
                failures += [(a, f"POST {self.target}: {exc}") for a in chunk]
        return failures

    def _count(self, _exc: Exception) -> None:
        self.retried += 1

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------- MQTT


def mqtt_client(broker: MqttBroker, client_id: str, *, clean: bool = True) -> Any:
    """A paho client for ``broker`` (login, TLS), connected, its network loop running."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=broker.client_id or client_id,
        clean_session=clean,
    )
    if broker.username is not None:
        password = broker.password.get_secret_value() if broker.password else None
        client.username_pw_set(broker.username, password)
    if broker.tls is not None:
        client.tls_set(
            ca_certs=broker.tls.ca,
            certfile=broker.tls.cert,
            keyfile=broker.tls.key,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    try:
        client.connect(broker.host, broker.port, keepalive=broker.keepalive)
    except OSError as exc:
        msg = f"cannot reach the MQTT broker at {broker.host}:{broker.port}: {exc}"
        raise MlexecError(msg) from exc
    client.loop_start()
    return client


_FIELD = re.compile(r"{([^}]*)}")


class MqttSink(_Acknowledged):
    """Publish each prediction (JSON) on a topic made from it, QoS 1 by default."""

    def __init__(self, config: MqttOutput, client_id: str) -> None:
        self.config = config
        self.target = f"mqtt://{config.broker.host}:{config.broker.port}/{config.topic}"
        self.retried = 0
        self._client = mqtt_client(config.broker, client_id)

    def topic(self, prediction: dict[str, Any]) -> str:
        return _FIELD.sub(lambda m: str(_pick(prediction, m.group(1))), self.config.topic)

    def deliver(self, actions: list[Action]) -> Failures:
        failures: Failures = []
        cfg = self.config
        for action in actions:
            topic = self.topic(action.prediction)

            def publish(topic: str = topic, payload: bytes = action.value) -> None:
                info = self._client.publish(topic, payload, qos=cfg.qos, retain=cfg.retain)
                if cfg.qos == 0:
                    return
                try:
                    info.wait_for_publish(timeout=cfg.retry.max.total_seconds())
                except (RuntimeError, ValueError) as exc:  # not connected, queue full
                    raise RetryableError(str(exc)) from exc
                if not info.is_published():
                    msg = f"not acknowledged (rc {info.rc})"
                    raise RetryableError(msg)

            try:
                with_backoff(publish, cfg.retry, what=f"publish {topic}", on_retry=self._count)
            except RetryableError as exc:
                failures.append((action, f"MQTT publish to {topic}: {exc}"))
        return failures

    def _count(self, _exc: Exception) -> None:
        self.retried += 1

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


# -------------------------------------------------------------------------- files


class FileSink:
    """Rolling files ``<prefix>-<seq>-<UTC time>.jsonl|parquet`` in a directory.

    JSON lines are appended and fsynced at each commit; the state is the current file
    and its size. Parquet rows wait in memory until the file is full or old enough,
    then the whole file is written (temp name, rename) — so a commit is complete only
    right after a file was written. On start, files with a sequence number above the
    checkpointed one and bytes past the checkpointed size are removed: they hold what
    the predictions topic will deliver again.
    """

    def __init__(
        self,
        config: FileOutput,
        state: dict[str, Any] | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.dir = Path(config.path)
        self.target = str(self.dir)
        self.retried = 0
        self._clock = clock
        self.dir.mkdir(parents=True, exist_ok=True)
        state = state or {}
        self._seq = int(state.get("seq", 0))
        self._name: str | None = state.get("file")
        self._size = int(state.get("size", 0))
        self._opened = float(state.get("opened", clock()))
        self._rows: list[dict[str, Any]] = []
        self._f: Any = None
        self._clean_up()

    def _clean_up(self) -> None:
        pattern = re.compile(rf"^{re.escape(self.config.prefix)}-(\d+)-")
        for path in self.dir.iterdir():
            match = pattern.match(path.name)
            if path.name.endswith(".tmp") or (match and int(match.group(1)) > self._seq):
                path.unlink()
        if self._name is not None and self.config.format == "jsonl":
            current = self.dir / self._name
            if current.exists() and current.stat().st_size > self._size:
                os.truncate(current, self._size)

    def _new_name(self) -> str:
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        return f"{self.config.prefix}-{self._seq:06d}-{stamp}.{self.config.format}"

    def deliver(self, actions: list[Action]) -> Failures:
        if self.config.format == "parquet":
            for action in actions:
                self._rows.append(action.prediction)
                if len(self._rows) >= self.config.max_size:
                    self._write_parquet()
            return []
        for action in actions:
            if self._f is None:
                if self._name is None:
                    self._name = self._new_name()
                    self._size = 0
                    self._opened = self._clock()
                self._f = (self.dir / self._name).open("ab")
            line = action.value + b"\n"
            self._f.write(line)
            self._size += len(line)
            if self._size >= self.config.max_size:
                self._close_jsonl()
        return []

    def _close_jsonl(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None
        self._name = None
        self._size = 0

    def _write_parquet(self) -> None:
        if not self._rows:
            return
        name = self._new_name()
        tmp = self.dir / (name + ".tmp")
        pl.DataFrame(self._rows, infer_schema_length=None).write_parquet(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        self._rows = []
        self._opened = self._clock()

    def commit(self) -> bool:
        if self.config.format == "parquet":
            return not self._rows
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
        return True

    def tick(self) -> bool:
        if self._clock() - self._opened < self.config.every.total_seconds():
            return False
        if self.config.format == "parquet":
            self._write_parquet()
        elif self._name is not None:
            self._close_jsonl()
        self._opened = self._clock()
        return True

    def state(self) -> dict[str, Any]:
        return {"seq": self._seq, "file": self._name, "size": self._size, "opened": self._opened}

    def close(self) -> None:
        if self.config.format == "parquet":
            self._write_parquet()
        elif self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def files(self) -> list[Path]:
        """The finished and current files, oldest first."""
        return sorted(p for p in self.dir.iterdir() if not p.name.endswith(".tmp"))
