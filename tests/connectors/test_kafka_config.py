"""Site settings become librdkafka settings: bootstrap, TLS, SASL (secret from the env), extras."""

from __future__ import annotations

from mlexec.connectors.kafka import client_config
from mlexec.topologies.schema import KafkaSettings


def test_plaintext_site():
    conf = client_config(KafkaSettings(bootstrap="127.0.0.1:9092"))
    assert conf == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "plaintext",
        "allow.auto.create.topics": False,  # mlexec makes every topic with its partitions
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
