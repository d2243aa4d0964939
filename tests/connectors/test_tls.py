"""TLS to a site's Kafka, through a real TLS terminator (stunnel) in front of the local broker.

The local broker cannot terminate TLS itself (Tansu 0.6.0's acceptor is unused), so
stunnel does, with a CA and certificates the test makes with openssl; the broker
advertises the TLS port, so every connection goes through it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from mlexec.connectors.broker import LocalBroker, free_port
from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.topologies import parse_topology
from mlexec.topologies.plan import TopicSpec

pytestmark = pytest.mark.integration

STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(cwd: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=cwd)  # fmt: skip


def _signed(cwd: Path, name: str, ca: str, san: str | None = None) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=cwd)  # fmt: skip
    ext = cwd / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.pem", cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a rogue pair."""
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _signed(d, "server", "ca", san="IP:127.0.0.1")
    _signed(d, "client", "ca")
    _ca(d, "rogue-ca")
    _signed(d, "rogue", "rogue-ca")
    return d


def _terminated(pki: Path, tmp: Path, mutual: bool) -> Iterator[int]:
    if STUNNEL is None:
        pytest.fail("stunnel is not installed: `make test` installs Debian's stunnel4 package")
    tls_port, broker_port = free_port(), free_port()
    conf = tmp / "stunnel.conf"
    verify = f"CAfile = {pki / 'ca.pem'}\nverifyChain = yes\nrequireCert = yes\n" if mutual else ""
    conf.write_text(
        f"foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls_port}\n"
        f"connect = 127.0.0.1:{broker_port}\ncert = {pki / 'server.pem'}\n"
        f"key = {pki / 'server.key'}\n{verify}"
    )
    proc = subprocess.Popen([STUNNEL, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", tls_port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"stunnel did not start: {proc.stderr.read() if proc.stderr else ''}"
                    )
                time.sleep(0.05)
        with LocalBroker(port=broker_port, advertised_port=tls_port):
            yield tls_port
    finally:
        proc.kill()  # stunnel waits for open connections on SIGTERM
        proc.wait(10)


@pytest.fixture
def tls(pki: Path, tmp_path: Path) -> Iterator[int]:
    yield from _terminated(pki, tmp_path, mutual=False)


@pytest.fixture
def mtls(pki: Path, tmp_path: Path) -> Iterator[int]:
    yield from _terminated(pki, tmp_path, mutual=True)


def _site_conf(port: int, security: dict) -> dict:
    """Client settings for a site declared in a topology with this security section."""
    doc = {
        "name": "tls",
        "sites": {
            "edge": {
                "kafka": {"bootstrap": f"127.0.0.1:{port}", "security": security},
                "sample_store": "chdb:///tmp/never-opened",
            }
        },
        "usecases": {
            "u": {
                "input": {
                    "key": "k",
                    "time": "t",
                    "schema": {"k": "str", "t": "timestamp", "x": "float"},
                },
                "dispatch": {"kind": "microbatch"},
                "model": {"name": "m", "version": "1", "path": "m.onnx"},
            }
        },
    }
    topology = parse_topology(yaml.safe_dump(doc))
    return client_config(topology.sites["edge"].kafka)


def _reachable(conf: dict) -> bool:
    try:
        AdminClient({**conf, "log_level": 0}).list_topics(timeout=3)
    except KafkaException:
        return False
    return True


def test_a_client_with_the_ca_round_trips_records_over_tls(tls, pki, uid):
    conf = _site_conf(tls, {"protocol": "ssl", "ca": str(pki / "ca.pem")})
    ensure_topics(conf, [TopicSpec(f"tls-{uid}", 1)])
    produce_records(conf, f"tls-{uid}", [(b"k", b"over tls %d" % i) for i in range(50)])
    got = sorted(v for _, v, _, _, _ in read_topic(conf, f"tls-{uid}"))
    assert got == sorted(b"over tls %d" % i for i in range(50))


def test_a_client_without_the_ca_or_in_plaintext_is_refused(tls, pki):
    assert _reachable(_site_conf(tls, {"protocol": "ssl", "ca": str(pki / "ca.pem")}))
    assert not _reachable(_site_conf(tls, {"protocol": "ssl"}))  # system CAs: not ours
    assert not _reachable(_site_conf(tls, {"protocol": "ssl", "ca": str(pki / "rogue-ca.pem")}))
    assert not _reachable(_site_conf(tls, {"protocol": "plaintext"}))


def test_mutual_tls_takes_our_client_certificate_and_refuses_another(mtls, pki, uid):
    ours = {
        "protocol": "ssl",
        "ca": str(pki / "ca.pem"),
        "cert": str(pki / "client.pem"),
        "key": str(pki / "client.key"),
    }
    rogue = {**ours, "cert": str(pki / "rogue.pem"), "key": str(pki / "rogue.key")}
    conf = _site_conf(mtls, ours)
    ensure_topics(conf, [TopicSpec(f"mtls-{uid}", 1)])
    produce_records(conf, f"mtls-{uid}", [(b"k", b"mutual")])
    assert [v for _, v, _, _, _ in read_topic(conf, f"mtls-{uid}")] == [b"mutual"]
    assert not _reachable(_site_conf(mtls, rogue))
    assert not _reachable(_site_conf(mtls, {"protocol": "ssl", "ca": str(pki / "ca.pem")}))
