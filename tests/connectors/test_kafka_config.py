"""Site settings become librdkafka settings: bootstrap, TLS, SASL (secret from the env), extras."""

from __future__ import annotations

import logging

from confluent_kafka import Producer

from mlexec.connectors.broker import free_port
from mlexec.connectors.kafka import client_config
from mlexec.connectors.kafkalog import LOGGER, REPEATS
from mlexec.topologies.schema import KafkaSettings
from tests.waiting import wait_for


def test_plaintext_site():
    conf = client_config(KafkaSettings(bootstrap="127.0.0.1:9092"))
    assert conf == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "plaintext",
        "allow.auto.create.topics": False,  # mlexec makes every topic with its partitions
        "logger": LOGGER,  # librdkafka's log through mlexec's logging
    }


def test_mutual_tls_and_sasl_and_extras():
    kafka = KafkaSettings.model_validate(
        {
            "bootstrap": "broker:9093",
            "security": {
                "protocol": "sasl_ssl",
                "ca": "/etc/ca.pem",
                "cert": "/etc/client.pem",
                "key": "/etc/client.key",
                "sasl": {"mechanism": "SCRAM-SHA-256", "username": "edge", "password": "s3cret"},
            },
            "client": {"linger.ms": 7},
        }
    )
    conf = client_config(kafka)
    assert conf["security.protocol"] == "sasl_ssl"
    assert conf["ssl.ca.location"] == "/etc/ca.pem"
    assert conf["ssl.certificate.location"] == "/etc/client.pem"
    assert conf["ssl.key.location"] == "/etc/client.key"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-256"
    assert conf["sasl.username"] == "edge" and conf["sasl.password"] == "s3cret"
    assert conf["linger.ms"] == 7
    assert "s3cret" not in repr(kafka)  # secrets stay out of logs and error messages


def test_librdkafka_lines_go_through_logging_once_not_to_stderr(capfd, caplog):
    conf = client_config(KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}"))  # nobody there
    caplog.set_level(logging.WARNING, logger=LOGGER.name)
    producer = Producer({**conf, "reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 20})
    producer.produce("nowhere", b"x")
    before = REPEATS.held_back

    def retried_often() -> bool:
        producer.poll(0.05)
        return REPEATS.held_back - before >= 10

    wait_for(retried_often, 30, "librdkafka to retry the connection ten more times", every=0)
    failed = [r for r in caplog.records if "Connection refused" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING  # said once, a warning
    assert "Connection refused" not in capfd.readouterr().err  # nothing of it on stderr
    producer.purge()
