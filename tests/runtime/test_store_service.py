"""While `mlexec up` holds an embedded store, the commands that read it go through it."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from mlexec.connectors.broker import free_port
from mlexec.connectors.samplestore import SampleStoreError, open_store
from mlexec.connectors.storeservice import ENDPOINT_FILE, find_service
from mlexec.runtime.supervisor import read_status
from mlexec.topologies import load_topology, plan_topology
from tests.dataflows.spine import FIELDS, T0, feed, identity_site
from tests.monitoring.test_monitor import _monitoring
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "mlexec.cli"]
_ACCURACY = {"output": "y", "metric": "mae", "thresholds": {"warning": 0.3}}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def _stored(url: str, table: str) -> int:
    with open_store(url) as store:
        return int(store.query(f"SELECT uniqExact(record_id) AS n FROM {table} FINAL")["n"][0])


def _store_pid(plan: Any, up: subprocess.Popen[str]) -> int | None:
    status = read_status(plan, "here")
    if status is None or status.get("supervisor") != up.pid:
        return None
    found = [p["pid"] for p in status["parts"] if p["name"] == "store" and p["state"] == "running"]
    return int(found[0]) if found and found[0] else None


def test_query_monitor_and_compare_answer_while_up_holds_the_store(broker, tmp_path, uid):
    watch = {f: {"psi": {"warning": 0.1}} for f in FIELDS[:2]}
    path = identity_site(
        tmp_path,
        broker.bootstrap,
        uid,
        1.0,
        monitoring=_monitoring(T0, watch=watch, accuracy=_ACCURACY),
    )
    topology = load_topology(path)
    plan = plan_topology(topology)
    (uc,) = plan.usecases.values()
    url = topology.sites["here"].sample_store
    directory = Path(url[len("chdb://") :])
    *_, good, _bad = feed(path, n=1_500, bad_every=0)
    port = free_port()
    up = subprocess.Popen(
        [*CLI, "up", str(path), "--dashboard-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        store_pid = wait_for(lambda: _store_pid(plan, up), 60, "up's store process")
        wait_for(lambda: find_service(directory), 60, "the store process to answer")
        # this test process reads through it too, never opening the directory itself
        wait_for(lambda: _stored(url, uc.table) == len(good), 90, "every sample stored")

        asked = _cli("query", str(path), f"SELECT count() AS n FROM {uc.table} FINAL", "--json")
        assert asked.returncode == 0, asked.stderr
        assert json.loads(asked.stdout.splitlines()[0]) == {"n": len(good)}

        evaluated = _cli(
            "monitor",
            "run",
            str(path),
            "--from",
            "2030-03-17T17:46:40Z",
            "--to",
            "2030-03-17T18:46:41Z",
        )  # a past range, written through the store process (its inserts included)
        assert evaluated.returncode == 0, evaluated.stderr
        shown = _cli("monitor", "show", str(path), "--json")
        assert shown.returncode == 0, shown.stderr
        assert uc.name in shown.stdout and "psi" in shown.stdout

        compared = _cli("model", "compare", str(path), "--usecase", uc.name, "--window", "1h")
        assert compared.returncode == 0, compared.stderr
        assert re.search(rf"│ 7\s+│ production │\s+{len(good)} │", compared.stdout), compared.stdout

        board = httpx.get(f"http://127.0.0.1:{port}/api/overview", timeout=10).json()
        assert board["usecases"] == [uc.name]

        # the store dataflow itself never goes through another process: it names the holder
        with pytest.raises(SampleStoreError, match=rf"held by pid {store_pid} \(the store of"):
            open_store(url, owner=True)
        # a caller without the token is refused
        said = orjson.loads((directory / ENDPOINT_FILE).read_bytes())
        assert oct((directory / ENDPOINT_FILE).stat().st_mode & 0o777) == "0o600"
        conn = http.client.HTTPConnection("127.0.0.1", said["port"], timeout=10)
        conn.request("POST", "/query", b"SELECT 1", {"X-Mlexec-Token": "guess"})
        assert conn.getresponse().status == 403
        conn.close()
        assert up.poll() is None  # nothing of the above disturbed the site
    finally:
        os.killpg(up.pid, signal.SIGKILL)  # kill -9 of the whole site: a stale file stays
        up.wait(30)
    wait_for(lambda: find_service(directory) is None, 30, "the dead holder to stop answering")
    assert (directory / ENDPOINT_FILE).exists()
    # with no site running the commands open the directory themselves, the stale file ignored
    asked = _cli("query", str(path), f"SELECT count() AS n FROM {uc.table} FINAL", "--json")
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout.splitlines()[0]) == {"n": len(good)}
