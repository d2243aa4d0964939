"""The local broker answers metadata requests, carries messages, and leaves nothing running."""

from __future__ import annotations

import os

import pytest
from confluent_kafka.admin import AdminClient

from mlexec.connectors.broker import BrokerError, LocalBroker, free_port
from mlexec.connectors.kafka import ensure_topics
from mlexec.connectors.reading import read_topic
from mlexec.topologies.plan import TopicSpec


def test_start_answer_and_stop_leaves_no_process():
    broker = LocalBroker()
    with broker:
        pid = broker._process.pid
        assert broker.bootstrap.startswith("127.0.0.1:")
        conf = {"bootstrap.servers": broker.bootstrap}
        ensure_topics(conf, [TopicSpec("hello", 3)])
        ensure_topics(conf, [TopicSpec("hello", 3)])  # idempotent
        meta = AdminClient(conf).list_topics(timeout=10).topics["hello"]
        assert len(meta.partitions) == 3
        assert read_topic(conf, "hello") == []
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_a_taken_port_is_a_clear_error():
    with LocalBroker() as first:
        second = LocalBroker(port=first.port, startup_timeout=5)
        with pytest.raises(BrokerError):
            second.start()
        assert second._process is None


def test_a_given_port_is_used():
    port = free_port()
    with LocalBroker(port=port) as broker:
        assert broker.bootstrap == f"127.0.0.1:{port}"


def test_a_broker_restarts_on_its_port_at_once_after_clients_were_connected():
    """Sockets of the old broker in TIME_WAIT do not block its port (SO_REUSEADDR)."""
    broker = LocalBroker().start()
    port = broker.port
    conf = {"bootstrap.servers": broker.bootstrap}
    ensure_topics(conf, [TopicSpec("before", 1)])
    connected = AdminClient(conf)
    assert "before" in connected.list_topics(timeout=10).topics  # connected while it stops
    broker.stop()
    again = LocalBroker(port=port, startup_timeout=10).start()
    try:
        topics = connected.list_topics(timeout=10).topics
        assert "before" not in topics  # memory storage: it came back empty
    finally:
        again.stop()
