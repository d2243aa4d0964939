"""The one producer and the one reader, against the real broker: a full queue, a topic that
is not there, a broker that is gone — and every message accounted for by offset."""

from __future__ import annotations

import pytest

from mlexec.connectors.broker import LocalBroker
from mlexec.connectors.delivery import KafkaDeliveryError, ReliableProducer
from mlexec.connectors.kafka import ensure_topics, produce_records
from mlexec.connectors.reading import KafkaReadError, TopicReader, high_watermarks, read_topic
from mlexec.topologies.plan import TopicSpec


def _conf(broker: LocalBroker) -> dict[str, object]:
    return {"bootstrap.servers": broker.bootstrap, "allow.auto.create.topics": False}


def test_a_full_queue_is_waited_out_and_nothing_is_dropped(broker, uid):
    conf = _conf(broker)
    topic = f"full-{uid}"
    ensure_topics(conf, [TopicSpec(topic, 2)])
    producer = ReliableProducer(
        conf, what="test", **{"queue.buffering.max.messages": 10, "linger.ms": 0}
    )
    for i in range(3000):  # 300 x the queue: BufferError on most of them
        producer.produce(topic, str(i).encode(), key=str(i % 7).encode())
    producer.produce_batch(topic, [f"b{i}".encode() for i in range(500)])
    producer.flush(60)
    values = sorted(v.decode() for _k, v, *_ in read_topic(conf, topic))
    assert values == sorted([str(i) for i in range(3000)] + [f"b{i}" for i in range(500)])


def test_a_delivery_error_is_raised_unless_the_caller_takes_it(broker, uid):
    conf = {**_conf(broker), "message.timeout.ms": 2000}
    missing = f"absent-{uid}"  # not created, and the broker may not make it up
    producer = ReliableProducer(conf, what="output alarm")
    producer.produce(missing, b"x")
    with pytest.raises(KafkaDeliveryError, match="output alarm: delivery failed"):
        producer.flush(30)
    taken: list[str] = []
    producer.produce(missing, b"y", on_delivery=lambda err, _m: taken.append(str(err)) or True)
    producer.flush(30)  # dead-lettered by the caller: nothing to raise
    assert len(taken) == 1


def test_produce_records_reports_where_each_record_went(broker, uid):
    conf = _conf(broker)
    topic = f"where-{uid}"
    ensure_topics(conf, [TopicSpec(topic, 3)])
    records = [(f"k{i % 5}".encode(), f"v{i}".encode()) for i in range(200)]
    positions = produce_records(conf, topic, records)
    read = {(p, o): v for _k, v, _h, p, o in read_topic(conf, topic)}
    assert {read[pos] for pos in positions} == {v for _, v in records} and len(read) == 200


def test_the_reader_reads_each_partition_to_its_end_from_where_it_is_told(broker, uid):
    conf = _conf(broker)
    topic = f"read-{uid}"
    ensure_topics(conf, [TopicSpec(topic, 2)])
    positions = produce_records(conf, topic, [(str(i).encode(), b"%d" % i) for i in range(100)])
    ends = high_watermarks(conf, topic)
    assert sum(ends.values()) == 100
    start = {p: ends[p] - 3 for p in ends}  # the last three of each partition
    tail = read_topic(conf, topic, start=start)
    assert sorted((p, o) for *_rest, p, o in tail) == sorted(
        pos for pos in positions if pos[1] >= start[pos[0]]
    )
    assert read_topic(conf, f"never-{uid}") == []  # a topic that does not exist is empty


def test_a_reader_of_a_gone_broker_says_so_in_time(uid):
    with LocalBroker(port=0) as gone:
        conf = _conf(gone)
        ensure_topics(conf, [TopicSpec(f"t-{uid}", 1)])
    # assigned after the stop: a reader that fetched first may have seen the (empty)
    # partition's end, which is a true end, not the case this test is about
    reader = TopicReader(conf, "test")
    reader.assign([(f"t-{uid}", 0, 0)])
    try:
        with pytest.raises(KafkaReadError):  # the broker's error, or no end in time
            reader.read_to_end(3.0, "the topic of a stopped broker")
    finally:
        reader.close()
