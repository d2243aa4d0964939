"""A topic of many tiny batches (an edge's slow sensors) is read to its end.

The embedded broker answers nothing to a short-waiting fetch on such a topic (most runs
here; how long its fetches take varies); the batch source notices fetches that deliver
next to nothing while records wait and reads on with longer fetch waits. Without that, this read
hung in the runs that met the slow path (seen: 5,736 of 20,000 in 60 s).
"""

from __future__ import annotations

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from confluent_kafka import Producer

from mlexec.connectors.batchsource import KafkaBatchSource
from mlexec.connectors.broker import LocalBroker
from mlexec.connectors.kafka import ensure_topics
from mlexec.topologies.plan import TopicSpec

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
def test_a_trickle_of_tiny_batches_is_read_to_the_end():
    with LocalBroker() as broker:
        conf = {"bootstrap.servers": broker.bootstrap, "log_level": 3}
        ensure_topics(conf, [TopicSpec("trickle", 1)])
        producer = Producer({**conf, "linger.ms": 0})
        for i in range(0, 16_000, 2):  # 8,000 writes of 2 records: what slow sensors make
            producer.produce("trickle", value=b"%d" % i)
            producer.produce("trickle", value=b"%d" % (i + 1))
            producer.flush(30)
        flow = Dataflow("trickle")
        batches = op.input("in", flow, KafkaBatchSource(conf, "trickle", until_end=True))
        got: list[list[int]] = []
        op.output("out", op.map("offsets", batches, lambda b: b.offsets), TestingSink(got))
        run_main(flow)
    offsets = [o for batch in got for o in batch]
    # read to the end, each record once, whether or not this run met the slow path
    assert sorted(offsets) == list(range(16_000))
