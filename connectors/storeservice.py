"""The embedded store answers other processes: queries over loopback to its owner.

chDB allows one process per directory. The process that holds a ``chdb://`` directory
(a site's store part, ``mlexec monitor dashboard``, any opener) serves its statements on
127.0.0.1 and writes where, with a token, to ``<dir>/mlexec-store.json`` (mode 0600):
``mlexec query``, ``monitor show`` and ``model compare`` started while the site runs go
through it instead of failing on chDB's file lock. The file also names the holder, so
an opener that cannot take the directory says who has it.

The protocol is HTTP with Arrow IPC streams for rows: ``POST /query`` and
``POST /command`` take the SQL as the body, ``POST /insert?table=T`` an Arrow stream;
a refused statement is a 400 with ClickHouse's message.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import os
import secrets
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

import orjson
import polars as pl
import pyarrow as pa

from mlexec.errors import StoreError

__all__ = [
    "ENDPOINT_FILE",
    "Endpoint",
    "StoreService",
    "StoreServiceError",
    "arrow_stream",
    "read_arrow",
    "describe_holder",
    "find_service",
    "name_this_holder",
]

_log = logging.getLogger(__name__)


class StoreServiceError(StoreError):
    """The holder of a store refused a statement, or stopped answering."""


class _Statements(Protocol):
    """What is served: a store's three kinds of statement."""

    database: str

    def command(self, sql: str) -> None: ...

    def query(self, sql: str) -> pl.DataFrame: ...

    def insert(self, table: str, rows: pa.Table) -> None: ...


#: Where, inside a chDB directory, its holder says who it is and where it answers.
ENDPOINT_FILE = "mlexec-store.json"

#: What this process says it is when it holds a store (else its command line).
_label: list[str] = []

_TOKEN_HEADER = "X-Mlexec-Token"  # noqa: S105 - the header's name, not a secret
_ARROW = "application/vnd.apache.arrow.stream"
#: Long enough for monitoring's statements over a large window.
_TIMEOUT = 600.0


def name_this_holder(label: str) -> None:
    """Say what this process is (``the store of site edge``) to whoever finds it holding."""
    _label[:] = [label]


def _command() -> str:
    if _label:
        return _label[0]
    line = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))
    return line if len(line) <= 120 else line[:117] + "..."


class _Handler(BaseHTTPRequestHandler):
    store: _Statements
    token: str

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        if self._allowed():
            self._send(200, "application/json", orjson.dumps({"database": self.store.database}))

    def do_POST(self) -> None:  # noqa: N802 - the http.server interface
        if not self._allowed():
            return
        url = urlparse(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            if url.path == "/query":
                self._send(200, _ARROW, arrow_stream(self.store.query(body.decode()).to_arrow()))
            elif url.path == "/command":
                self.store.command(body.decode())
                self._send(204, "text/plain", b"")
            elif url.path == "/insert":
                table = parse_qs(url.query).get("table", [""])[0]
                self.store.insert(table, read_arrow(body))
                self._send(204, "text/plain", b"")
            else:
                self._send(404, "text/plain", b"not found")
        except Exception as exc:  # noqa: BLE001 - the caller gets ClickHouse's message
            self._send(400, "text/plain; charset=utf-8", str(exc).encode())

    def _allowed(self) -> bool:
        if secrets.compare_digest(self.headers.get(_TOKEN_HEADER, ""), self.token):
            return True
        self._send(403, "text/plain", b"wrong or missing token")
        return False

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        _log.debug(format, *args)


class StoreService:
    """Serve ``store`` (this process's handle on a chDB directory) on 127.0.0.1."""

    def __init__(self, store: _Statements, directory: Path) -> None:
        self.token = secrets.token_urlsafe(24)
        handler = type("Handler", (_Handler,), {"store": store, "token": self.token})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._file = directory / ENDPOINT_FILE
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="mlexec-store-service", daemon=True
        )

    def start(self) -> StoreService:
        """Answer, then say where (the file is written only once the port answers)."""
        self._thread.start()
        said = {
            "pid": os.getpid(),
            "command": _command(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "port": self.port,
            "token": self.token,
        }
        partial = self._file.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(said))
        partial.replace(self._file)
        return self

    def close(self) -> None:
        """Stop answering and take the file back (when it is still this process's)."""
        found = _read(self._file)
        if found is not None and found.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self._file.unlink()
        self._server.shutdown()
        self._server.server_close()


def _read(path: Path) -> dict[str, Any] | None:
    try:
        found = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return found if isinstance(found, dict) else None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def describe_holder(directory: Path) -> str | None:
    """``pid N (command) since T`` of the live process that says it holds ``directory``."""
    found = _read(directory / ENDPOINT_FILE)
    if found is None or not _alive(found.get("pid")):
        return None
    return f"pid {found['pid']} ({found.get('command', '?')}) since {found.get('since', '?')}"


@dataclass(frozen=True)
class Endpoint:
    """Where the holder of a chDB directory answers for it."""

    directory: Path
    port: int
    token: str
    database: str

    def post(self, path: str, body: bytes, kind: str = "text/plain") -> bytes:
        """One statement to the holder; its answer, or :class:`StoreServiceError`."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=_TIMEOUT)
        try:
            conn.request("POST", path, body, {_TOKEN_HEADER: self.token, "Content-Type": kind})
            answer = conn.getresponse()
            data = answer.read()
        except OSError as exc:
            msg = f"the process holding the chDB store at {self.directory} stopped answering: {exc}"
            raise StoreServiceError(msg) from exc
        finally:
            conn.close()
        if answer.status >= 300:
            raise StoreServiceError(data.decode(errors="replace"))
        return data


def arrow_stream(table: pa.Table) -> bytes:
    """``table`` as an Arrow IPC stream (what /insert takes and /query answers)."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def read_arrow(body: bytes) -> pa.Table:
    """An Arrow IPC stream's table."""
    return pa.ipc.open_stream(io.BytesIO(body)).read_all()


def find_service(directory: Path) -> Endpoint | None:
    """Where the holder of ``directory`` answers, if it is alive and answers; else ``None``."""
    found = _read(directory / ENDPOINT_FILE)
    if found is None or not _alive(found.get("pid")):
        return None
    port, token = found.get("port"), found.get("token")
    if not isinstance(port, int) or not isinstance(token, str):
        return None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        conn.request("GET", "/", headers={_TOKEN_HEADER: token})
        answer = conn.getresponse()
        said = orjson.loads(answer.read()) if answer.status == 200 else None
    except (OSError, orjson.JSONDecodeError):
        return None
    finally:
        conn.close()
    if not isinstance(said, dict):
        return None
    return Endpoint(directory, port, token, str(said.get("database", "mlexec")))
