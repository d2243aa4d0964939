"""The one reliable producer every writer of mlexec uses.

Connectors, outputs, the batch sink, the mirror, the registry, health and monitoring
all write through :class:`ReliableProducer`, so the rules hold everywhere: idempotent
with ``acks=all``; a full local queue (``BufferError``, or a ``QUEUE_FULL`` in a
``produce_batch``) is polled and retried, never dropped; every delivery error is kept
and raised — at the next write or at :meth:`ReliableProducer.flush` — unless the caller's
own callback takes it; and a flush that leaves messages undelivered raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from confluent_kafka import KafkaError, Message, Producer

from mlexec.errors import ConnectorError

__all__ = ["DeliveryCallback", "KafkaDeliveryError", "ReliableProducer"]

#: Called with the delivery report of one message; returning True says the caller has
#: dealt with a failed delivery (for example dead-lettered it), so it is not raised.
DeliveryCallback = Callable[[KafkaError | None, Message], bool | None]

_RETRY_POLL = 0.05  # seconds the producer is polled before a full queue is tried again


class KafkaDeliveryError(ConnectorError):
    """A message could not be delivered to the broker."""


class ReliableProducer:
    """A confluent-kafka producer that loses nothing silently.

    ``what`` names the writer in errors ("connector files", "output alarm").
    ``settings`` override the defaults (``enable.idempotence``, ``acks=all``).
    """

    def __init__(self, conf: dict[str, Any], *, what: str = "producer", **settings: Any) -> None:
        self.what = what
        self._producer = Producer({**conf, "enable.idempotence": True, "acks": "all", **settings})
        self._errors: list[KafkaError] = []
        self._sent = 0

    # ------------------------------------------------------------------ write

    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | str | None = None,
        headers: Sequence[tuple[str, Any]] | None = None,
        partition: int | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Queue one message; a full queue is polled until it takes it."""
        report = self._keep if on_delivery is None else self._wrap(on_delivery)
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=cast(Any, headers),
                    on_delivery=report,
                    **extra,
                )
                break
            except BufferError:
                self._producer.poll(_RETRY_POLL)
        self._sent += 1
        if self._sent % 1000 == 0:
            self._producer.poll(0)

    def produce_batch(
        self, topic: str, values: Sequence[bytes], keys: Sequence[Any] | None = None
    ) -> None:
        """Queue many messages in one call (the hot path): what the queue refuses is retried."""
        pending: list[dict[str, Any]]
        if keys is None:
            pending = [{"value": v} for v in values]
        else:
            pending = [{"value": v, "key": k} for v, k in zip(values, keys, strict=True)]
        while pending:
            try:
                self._producer.produce_batch(topic, pending, on_delivery=self._keep)
            except BufferError:
                self._producer.poll(_RETRY_POLL)
                continue
            failed = [m for m in pending if "_error" in m]
            for m in failed:
                err = m.pop("_error")
                if err.code() != KafkaError._QUEUE_FULL:
                    msg = f"{self.what}: producing to {topic!r} failed: {err}"
                    raise KafkaDeliveryError(msg)
            if failed:
                self._producer.poll(_RETRY_POLL)
            pending = failed

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports; raise a kept delivery error."""
        self._producer.poll(timeout)
        self.raise_if_failed()

    # ------------------------------------------------------------------ check

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until everything queued is delivered; raise if anything failed or is left."""
        left = self._producer.flush(timeout)
        errors, self._errors = self._errors, []
        if errors or left:
            msg = f"{self.what}: delivery failed: {errors[:3]} ({left} undelivered after {timeout:g} s)"
            raise KafkaDeliveryError(msg)

    def raise_if_failed(self) -> None:
        """Raise the delivery errors reported so far, if any."""
        if self._errors:
            errors, self._errors = self._errors, []
            msg = f"{self.what}: delivery to Kafka failed: {errors[:3]}"
            raise KafkaDeliveryError(msg)

    def close(self, timeout: float = 30.0) -> None:
        """Flush what is queued; raises like :meth:`flush`."""
        self.flush(timeout)

    # --------------------------------------------------------------- reports

    def _keep(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._errors.append(err)

    def _wrap(self, callback: DeliveryCallback) -> Callable[[KafkaError | None, Message], None]:
        def report(err: KafkaError | None, msg: Message) -> None:
            handled = callback(err, msg)
            if err is not None and not handled:
                self._errors.append(err)

        return report
