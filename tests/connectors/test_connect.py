"""Connectors end to end on the real broker: files, logs, web, SQL, Kafka, crashes."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from mlexec.connectors.broker import LocalBroker, free_port
from mlexec.connectors.kafka import produce_records
from tests.connectors.connect_helpers import (
    connect_once,
    connecting,
    messages,
    only,
    positions,
    topology,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _ts(msgs: list[dict[str, Any]]) -> list[int]:
    return sorted(m["value"]["ts"] for m in msgs)


# --------------------------------------------------------------------------- CSV


def test_csv_appended_rows_new_files_and_bad_rows_while_running(tmp_path, broker, uid):
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "a.csv").write_text("machine,ts,value\nm1,1,1.5\nm1,2,oops\n")
    path, plan = topology(
        tmp_path, broker, [{"kind": "csv", "path": f"{inbox}/*.csv", "poll": "100ms"}], uid=uid
    )
    uc = only(plan)
    with connecting(plan) as running:
        wait_for(lambda: len(messages(broker, uc.raw_topic)) == 1, what="the first row")
        with (inbox / "a.csv").open("a") as f:
            f.write("m2,3,3.5\n")
        (inbox / "b.csv").write_text("machine,ts,value\nm3,4,4.5\nm3,5\n")
        wait_for(lambda: len(messages(broker, uc.raw_topic)) == 3, what="appended row and new file")
        wait_for(lambda: len(messages(broker, uc.deadletter_topic)) == 2, what="two dead letters")
    raw = messages(broker, uc.raw_topic)
    assert _ts(raw) == [1, 3, 4]
    assert {m["key"] for m in raw} == {b"m1", b"m2", b"m3"}
    dead = sorted(messages(broker, uc.deadletter_topic), key=lambda m: m["headers"]["mlexec.where"])
    assert [m["headers"]["mlexec.where"] for m in dead] == [
        f"{inbox}/a.csv line 3",
        f"{inbox}/b.csv line 3",
    ]
    assert dead[0]["headers"]["mlexec.reason"] == "field 'value': expected float, found 'oops'"
    assert dead[1]["headers"]["mlexec.reason"].startswith("expected 3 fields")
    assert dead[0]["raw"] == b"m1,2,oops\n"
    assert dead[0]["headers"]["mlexec.stage"] == "connector"
    status = running.statuses[0]
    assert (status.read, status.produced, status.deadlettered, status.behind) == (5, 3, 2, 0)

    # a restart produces nothing again
    again = connect_once(plan)
    assert again.statuses[0].read == 0
    assert len(messages(broker, uc.raw_topic)) == 3
    assert path.exists()


# ---------------------------------------------------------------------- log files

PATTERN = r"(?P<ts>\d+) (?P<machine>\S+) value=(?P<value>\S+)"


class _Log:
    """A writer that appends numbered lines and rotates like logrotate would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.f = path.open("a")
        self.n = 0

    def write(self, count: int) -> None:
        for _ in range(count):
            with self.lock:
                self.f.write(f"{self.n} m{self.n % 3} value={self.n / 7:.4f}\n")
                self.f.flush()
                self.n += 1

    def rotate_rename(self, suffix: str) -> None:
        with self.lock:  # a logging handler: close, rename, reopen
            self.f.close()
            os.rename(self.path, f"{self.path}.{suffix}")
            self.f = self.path.open("a")

    def rotate_copytruncate(self, suffix: str) -> None:
        # logrotate copytruncate; the lock keeps the writer out between copy and truncate
        # (logrotate itself loses lines written in that window, whoever reads the log)
        with self.lock:
            shutil.copyfile(self.path, f"{self.path}.{suffix}")
            with self.path.open("r+") as f:
                f.truncate(0)


def test_logfile_rotation_by_rename_and_copytruncate_while_writing(tmp_path, broker, uid):
    log_path = tmp_path / "app.log"
    log = _Log(log_path)
    log.write(50)
    _, plan = topology(
        tmp_path,
        broker,
        [
            {
                "kind": "logfile",
                "path": str(log_path),
                "pattern": PATTERN,
                "poll": "50ms",
                "batch": 40,
            }
        ],
        uid=uid,
    )
    uc = only(plan)

    def writer() -> None:
        for i in range(6):
            log.write(120)
            if i % 2 == 0:
                log.rotate_rename(str(i))
            else:
                log.rotate_copytruncate(str(i))
            log.write(30)
            time.sleep(0.05)

    with connecting(plan):
        wait_for(lambda: len(messages(broker, uc.raw_topic)) == 50, what="the lines before")
        thread = threading.Thread(target=writer)
        thread.start()
        thread.join(60)
        total = log.n
        wait_for(lambda: len(messages(broker, uc.raw_topic)) >= total, what=f"{total} lines")
        time.sleep(0.5)  # anything doubled would arrive now
    raw = messages(broker, uc.raw_topic)
    assert total == 50 + 6 * 150
    assert _ts(raw) == list(range(total))  # every line once: none lost, none doubled
    assert messages(broker, uc.deadletter_topic) == []
    assert len(set(positions(raw))) == total


# --------------------------------------------------------------------------- HTTP


class _Api:
    """Two pages of records behind ETags; fails the first requests with 500."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.pages = {
            "/items": {"data": {"items": [_item(i) for i in range(3)]}, "next": "/items/2"},
            "/items/2": {"data": {"items": [_item(i) for i in range(3, 5)]}},
        }
        self.log: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                with api.lock:
                    status, body, etag = api.answer(self.path, self.headers)
                    api.log.append((self.path, status))
                self.send_response(status)
                if etag:
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def answer(self, path: str, headers: Any) -> tuple[int, bytes, str]:
        if headers.get("Authorization") != "Bearer s3cret":
            return 401, b"{}", ""
        if self.failures > 0:
            self.failures -= 1
            return 500, b"busy", ""
        if path not in self.pages:
            return 404, b"{}", ""
        body = orjson.dumps(self.pages[path])
        etag = '"' + hashlib.sha256(body).hexdigest()[:12] + '"'
        if headers.get("If-None-Match") == etag:
            return 304, b"", etag
        return 200, body, etag


def _item(i: int) -> dict[str, Any]:
    return {"machine": f"m{i}", "ts": 1000 + i, "value": i / 2}


def test_http_pages_retry_after_errors_and_honour_etags(tmp_path, broker, uid, monkeypatch):
    api = _Api(failures=4)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), api.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("API_TOKEN", "s3cret")
    url = f"http://127.0.0.1:{server.server_port}/items"
    connector = {
        "kind": "http",
        "url": url,
        "every": "200ms",
        "records": "data.items",
        "next": "next",
        "headers": {"Authorization": "Bearer ${API_TOKEN}"},
        "retry": {"attempts": 3, "initial": "20ms", "max": "100ms"},
    }
    _, plan = topology(tmp_path, broker, [connector], uid=uid)
    uc = only(plan)
    try:
        with connecting(plan) as running:
            wait_for(lambda: len(messages(broker, uc.raw_topic)) == 5, what="both pages")
            wait_for(lambda: sum(1 for _, s in api.log if s == 304) >= 4, what="polls answered 304")
            assert len(messages(broker, uc.raw_topic)) == 5  # unchanged pages: nothing again
            with api.lock:
                api.pages["/items/2"]["data"]["items"].append(_item(5))
            wait_for(lambda: len(messages(broker, uc.raw_topic)) > 5, what="the changed page")
            time.sleep(0.6)
            assert running.statuses[0].errors >= 1  # the 500s were seen and retried
        raw = messages(broker, uc.raw_topic)
        first_page = [m for m in raw if m["value"]["ts"] < 1003]
        assert _ts(first_page) == [1000, 1001, 1002]  # never re-produced
        assert 1005 in _ts(raw)
        assert [s for _, s in api.log[:4]] == [500] * 4
    finally:
        server.shutdown()


# ---------------------------------------------------------------------------- SQL


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'plant.db'}"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sql_incremental_on_a_timestamp_cursor_with_ties(tmp_path, broker, uid, backend, request):
    url = _sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("postgres_url")
    table = f"readings_{uid}"
    engine = sa.create_engine(url)
    ts_type = "TEXT" if backend == "sqlite" else "TIMESTAMPTZ"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, machine TEXT, "
                f"taken {ts_type}, value DOUBLE PRECISION)"
            )
        )

    def insert(first: int, count: int) -> None:
        rows = [
            # three rows share each timestamp: the tiebreak column keeps them apart
            {
                "id": i,
                "machine": f"m{i % 4}",
                "taken": f"2026-11-24T10:00:{i // 3:02d}+00:00",
                "value": i / 10,
            }
            for i in range(first, first + count)
        ]
        with engine.begin() as conn:
            conn.execute(
                sa.text(f"INSERT INTO {table} VALUES (:id, :machine, :taken, :value)"), rows
            )

    insert(0, 30)
    connector = {
        "kind": "sql",
        "url": url,
        "table": table,
        "cursor": "taken",
        "tiebreak": "id",
        "every": "100ms",
        "batch": 7,  # batches end inside groups of equal timestamps
        "set": {"site": "plant-1"},
    }
    schema = {"machine": "str", "taken": "timestamp", "value": "float", "id": "int"}
    _, doc_plan = topology(tmp_path, broker, [connector], uid=uid, schema=schema, time="taken")
    uc = only(doc_plan)
    with connecting(doc_plan) as running:
        wait_for(lambda: len(messages(broker, uc.raw_topic)) == 30, what="the first rows")
        insert(30, 25)
        wait_for(
            lambda: len(messages(broker, uc.raw_topic)) == 55, what="rows inserted while running"
        )
        time.sleep(0.3)
        assert running.statuses[0].behind == 0
    raw = messages(broker, uc.raw_topic)
    assert sorted(m["value"]["id"] for m in raw) == list(range(55))
    assert {m["value"]["site"] for m in raw} == {"plant-1"}
    insert(55, 5)
    connect_once(doc_plan)  # a restart resumes at the saved cursor
    assert sorted(m["value"]["id"] for m in messages(broker, uc.raw_topic)) == list(range(60))
    engine.dispose()


# -------------------------------------------------------------------------- Kafka


def test_kafka_connector_brings_records_from_another_cluster(tmp_path, broker, uid):
    with LocalBroker() as other:
        conf = {"bootstrap.servers": other.bootstrap}
        good = [(None, orjson.dumps(_item(i) | {"ts": i})) for i in range(40)]
        produce_records(conf, "plant-events", [*good[:20], (None, b"not json"), *good[20:]])
        connector = {
            "kind": "kafka",
            "topic": "plant-events",
            "kafka": {"bootstrap": other.bootstrap},
        }
        _, plan = topology(tmp_path, broker, [connector], uid=uid)
        uc = only(plan)
        connect_once(plan)
        assert _ts(messages(broker, uc.raw_topic)) == list(range(40))
        produce_records(conf, "plant-events", [(None, orjson.dumps(_item(1) | {"ts": 40}))])
        connect_once(plan)
    raw = messages(broker, uc.raw_topic)
    assert _ts(raw) == list(range(41))
    dead = messages(broker, uc.deadletter_topic)
    assert [m["raw"] for m in dead] == [b"not json"]
    assert dead[0]["headers"]["mlexec.where"].startswith("plant-events:")


# ------------------------------------------------------------ crash and restart


def test_kill_9_in_the_middle_of_a_large_file_then_restart_produces_each_row_once(
    tmp_path, broker, uid
):
    rows = 60_000
    big = tmp_path / "big.csv"
    with big.open("w") as f:
        f.write("machine,ts,value\n")
        for i in range(rows):
            f.write(f"m{i % 17},{i},{i % 1000 / 10}\n" if i % 5000 != 4999 else f"m1,{i},bad\n")
    path, plan = topology(
        tmp_path, broker, [{"kind": "csv", "path": str(big), "batch": 1000}], uid=uid
    )
    uc = only(plan)
    checkpoint = tmp_path / "state" / "connectors" / plan.topology.name / f"{uc.name}.csv.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mlexec.cli", "connect", str(path), "--site", "edge"]
    size = big.stat().st_size
    for share in (0.2, 0.55):  # kill -9 at two points of the file
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda s=share: _offset(checkpoint) > s * size, what=f"{share:.0%} read")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    done = subprocess.run([*cmd, "--once"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    raw = messages(broker, uc.raw_topic)
    dead = messages(broker, uc.deadletter_topic)
    every = raw + dead
    assert len(set(positions(every))) == len(every) == rows  # by source position: each once
    assert _ts(raw) == [i for i in range(rows) if i % 5000 != 4999]
    assert len(dead) == rows // 5000


def _offset(checkpoint: Path) -> int:
    try:
        files = orjson.loads(checkpoint.read_bytes())["state"]["files"]
    except (FileNotFoundError, orjson.JSONDecodeError):
        return 0
    return sum(f["offset"] for f in files.values())


# ------------------------------------------------------------------------ metrics


def test_connect_serves_prometheus_metrics_and_stops_on_sigterm(tmp_path, broker, uid):
    (tmp_path / "a.csv").write_text("machine,ts,value\nm1,1,1\nm1,2,x\n")
    path, plan = topology(
        tmp_path, broker, [{"kind": "csv", "path": str(tmp_path / "a.csv")}], uid=uid
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlexec.cli",
            "connect",
            str(path),
            "--site",
            "edge",
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def scraped() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return r.read().decode()
            except OSError:
                return ""

        def values() -> dict[str, float]:
            return {
                line.split("{")[0]: float(line.rsplit(" ", 1)[1])
                for line in scraped().splitlines()
                if line.startswith("mlexec_connector_") and f'usecase="{only(plan).name}"' in line
            }

        wait_for(lambda: values().get("mlexec_connector_read_total") == 2, what="metrics")
        text = scraped()
        found = values()
        assert found["mlexec_connector_produced_total"] == 1
        assert found["mlexec_connector_deadlettered_total"] == 1
        assert found["mlexec_connector_behind"] == 0
        assert 'unit="bytes"' in text and "a.csv line 3" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopping" in err
