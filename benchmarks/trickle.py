"""The embedded broker on a trickle: a topic of many tiny batches, and what helps.

An edge with slow sensors writes one or two records per produce request. The pinned
Tansu build then answers fetches slowly (its fetch walks the batches one by one). This
measures, on one fresh broker, how long a plain confluent-kafka consumer takes to read
20,000 records back when they were written

- as 10,000 batches of 2 (one flush per reading, what a naive connector does);
- as batches of ~250 (what mlexec's connectors do with ``linger``: a read loop that
  gathers records for up to 200 ms before one delivery), and
- as one batch of 1,000 per request;

each with the consumer settings mlexec uses and with librdkafka's defaults. Bounded:
every read stops after 60 s. ``python -m benchmarks.trickle``.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from mlexec.connectors.broker import LocalBroker
from mlexec.connectors.kafka import ensure_topics
from mlexec.connectors.reading import CONSUMER_TUNING
from mlexec.topologies.plan import TopicSpec

RECORDS = 20_000
LIMIT_S = 60.0


def _write(conf: dict[str, Any], topic: str, per_batch: int) -> float:
    producer = Producer({**conf, "linger.ms": 0, "enable.idempotence": True})
    started = time.perf_counter()
    for i in range(0, RECORDS, per_batch):
        for j in range(i, min(i + per_batch, RECORDS)):
            producer.produce(topic, value=b'{"sensor": "s1", "ts": %d, "v": 1.5}' % j)
        producer.flush(30)
    return time.perf_counter() - started


def _read(conf: dict[str, Any], topic: str, tuning: dict[str, Any]) -> tuple[int, float]:
    consumer = Consumer(
        {
            **conf,
            **tuning,
            "group.id": "trickle",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    read, started = 0, time.perf_counter()
    try:
        while time.perf_counter() - started < LIMIT_S:
            done = False
            for msg in consumer.consume(1000, 0.2):
                err = msg.error()
                if err is None:
                    read += 1
                elif err.code() == KafkaError._PARTITION_EOF and read >= RECORDS:
                    done = True
            if done:
                break
    finally:
        consumer.close()
    return read, time.perf_counter() - started


def main() -> None:
    rows = []
    with LocalBroker() as broker:
        conf = {"bootstrap.servers": broker.bootstrap, "log_level": 3}
        for per_batch in (2, 250, 1000):
            topic = f"trickle-{per_batch}"
            ensure_topics(conf, [TopicSpec(topic, 1)])
            wrote = _write(conf, topic, per_batch)
            for name, tuning in (("mlexec", CONSUMER_TUNING), ("defaults", {})):
                read, took = _read(conf, topic, tuning)
                rows.append((per_batch, name, wrote, read, took))
    print(f"{'records/batch':>13} {'consumer':>9} {'write s':>8} {'read':>7} {'read s':>7}")
    for per_batch, name, wrote, read, took in rows:
        print(f"{per_batch:>13} {name:>9} {wrote:>8.1f} {read:>7,} {took:>7.1f}")


if __name__ == "__main__":
    main()
