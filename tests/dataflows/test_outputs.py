"""Outputs end to end: predictions on the real broker delivered to real servers on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import polars as pl
import pytest
import yaml

from mlexec.connectors.broker import LocalBroker, free_port
from mlexec.connectors.kafka import ensure_topics, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.outputs import prepare_outputs, run_outputs
from mlexec.topologies import load_topology, plan_topology
from mlexec.topologies.plan import Plan, UseCasePlan
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _topology(
    tmp_path: Path, broker: LocalBroker, uid: str, outputs: list[dict[str, Any]]
) -> tuple[Path, Plan, UseCasePlan]:
    doc = {
        "name": f"t{uid}",
        "sites": {
            "edge": {
                "kafka": {"bootstrap": broker.bootstrap},
                "sample_store": f"chdb://{tmp_path}/chdb",
                "state_dir": str(tmp_path / "state"),
            }
        },
        "usecases": {
            f"u{uid}": {
                "input": {
                    "key": "machine",
                    "time": "ts",
                    "max_ahead": "3650d",  # the test's event times are in 2030
                    "schema": {"machine": "str", "ts": "timestamp", "x": "float"},
                },
                "dispatch": {"kind": "microbatch"},
                "model": {"name": "m", "version": "1", "path": "m.onnx"},
                "outputs": outputs,
            }
        },
    }
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    plan = plan_topology(load_topology(path), str(path))
    (uc,) = plan.usecases.values()
    return path, plan, uc


def _predictions(uc: UseCasePlan, first: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{uc.raw_topic}:0:{i}",
            "key": f"m{i % 5}",
            "time": 1_900_000_000_000 + i,
            "outputs": {"label": int(i % 3 == 0), "probabilities": [0.3, 0.7]},
            "model": "m",
            "version": "1",
            "variant": "production",
            "latency_ms": 0.1,
            "batch": 1,
        }
        for i in range(first, first + count)
    ]


def _publish(broker: LocalBroker, uc: UseCasePlan, preds: list[dict[str, Any]]) -> None:
    conf = {"bootstrap.servers": broker.bootstrap}
    ensure_topics(conf, uc.topics())
    produce_records(
        conf, uc.predictions_topic, [(p["key"].encode(), orjson.dumps(p)) for p in preds]
    )


def _act_once(plan: Plan) -> Any:
    prepared = prepare_outputs(plan, "edge")
    run_outputs(prepared, once=True)
    return prepared.statuses


# --------------------------------------------------------------------------- HTTP


class _Hook:
    """A webhook that answers 500 to the first ``failures`` requests (or always)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.ids: list[str] = []
        self.keys: list[str] = []
        self.lock = threading.Lock()

    def start(self) -> ThreadingHTTPServer:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server interface
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hook.lock:
                    failing = hook.failures != 0
                    if failing:
                        hook.failures -= 1
                    else:
                        items = orjson.loads(body)
                        for item in items if isinstance(items, list) else [items]:
                            hook.ids.append(item["id"])
                        hook.keys.append(self.headers["Idempotency-Key"])
                self.send_response(500 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def _webhook(server: ThreadingHTTPServer, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "http",
        "url": f"http://127.0.0.1:{server.server_port}/hook",
        "retry": {"attempts": 4, "initial": "10ms", "max": "50ms"},
        **extra,
    }


def test_http_webhook_recovering_server_gets_every_prediction_once(tmp_path, broker, uid):
    hook = _Hook(failures=3)
    server = hook.start()
    try:
        _, plan, uc = _topology(tmp_path, broker, uid, [_webhook(server, batch=10)])
        preds = _predictions(uc, 0, 95)
        _publish(broker, uc, preds)
        (status,) = _act_once(plan)
        assert sorted(hook.ids) == sorted(p["id"] for p in preds)  # every one, exactly once
        assert status.retried == 3 and status.delivered == 95 and status.deadlettered == 0
        assert (
            read_topic({"bootstrap.servers": broker.bootstrap}, uc.outputs_deadletter_topic) == []
        )
        assert len(set(hook.keys)) == 10  # ten batches, each its own idempotency key
        assert all(k.count("..") == 1 and k.split("..")[0] in hook.ids for k in hook.keys)
        # a restart delivers nothing again
        _act_once(plan)
        assert len(hook.ids) == 95
    finally:
        server.shutdown()


def test_http_webhook_that_never_recovers_leaves_every_record_dead_lettered(tmp_path, broker, uid):
    hook = _Hook(failures=-1)
    server = hook.start()
    try:
        _, plan, uc = _topology(tmp_path, broker, uid, [_webhook(server, when="label = 1")])
        preds = _predictions(uc, 0, 30)
        _publish(broker, uc, preds)
        (status,) = _act_once(plan)
    finally:
        server.shutdown()
    dead = read_topic({"bootstrap.servers": broker.bootstrap}, uc.outputs_deadletter_topic)
    wanted = sorted(p["id"] for p in preds if p["outputs"]["label"] == 1)
    assert sorted(orjson.loads(v)["id"] for _, v, _, _, _ in dead) == wanted
    for _, _, headers, _, _ in dead:
        h = dict(headers)
        assert h["mlexec.reason"].decode().endswith("HTTP 500")
        assert h["mlexec.output"].decode() == f"{plan.topology.name}/{uc.name}/http"
    assert status.filtered == 30 - len(wanted) and status.deadlettered == len(wanted)
    assert hook.ids == []


# --------------------------------------------------------------------------- MQTT


def _subscriber(host: str, port: int, topic: str) -> tuple[mqtt.Client, list[mqtt.MQTTMessage]]:
    got: list[mqtt.MQTTMessage] = []
    ready = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{time.time_ns()}")
    client.on_message = lambda _c, _u, msg: got.append(msg)
    client.on_subscribe = lambda *_a: ready.set()
    client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
    client.connect(host, port)
    client.loop_start()
    assert ready.wait(10), "subscription not acknowledged"
    return client, got


def test_mqtt_output_publishes_on_templated_topics(tmp_path, broker, uid, mosquitto):
    host, port = mosquitto
    client, got = _subscriber(host, port, f"plant{uid}/+/anomaly")
    output = {
        "kind": "mqtt",
        "broker": {"host": host, "port": port},
        "topic": f"plant{uid}/{{key}}/anomaly",
        "when": "label = 1",
        "debounce": {"on_change": "label"},
    }
    _, plan, uc = _topology(tmp_path, broker, uid, [output])
    preds = _predictions(uc, 0, 40)
    _publish(broker, uc, preds)
    (status,) = _act_once(plan)
    deadline = time.monotonic() + 10
    while len(got) < status.delivered and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    # label 1 only, then once per machine: its label does not change afterwards
    first = {}
    for p in preds:
        if p["outputs"]["label"] == 1:
            first.setdefault(p["key"], p["id"])
    assert sorted((m.topic, orjson.loads(m.payload)["id"]) for m in got) == sorted(
        (f"plant{uid}/{key}/anomaly", rid) for key, rid in first.items()
    )
    assert status.debounced == sum(p["outputs"]["label"] for p in preds) - len(first)


def test_mqtt_source_brings_sensor_messages_in_and_they_are_scored(
    tmp_path, broker, uid, mosquitto
):
    from mlexec.runtime.connect import prepare_connectors, run_connectors
    from tests.dataflows.spine import FIELDS, run_to_end, spine_topology

    host, port = mosquitto
    path = spine_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        dispatch="{kind: microbatch, max_records: 16, max_wait: 20ms}",
        reduction="{kind: identity}",
        sampling="{rate: 0.0}",
        connectors=[
            {
                "kind": "mqtt",
                "broker": {"host": host, "port": port, "client_id": f"src-{uid}"},
                "topics": [f"site{uid}/+/telemetry"],
                "key_segment": 1,
            }
        ],
    )
    plan = plan_topology(load_topology(path), str(path))
    (uc,) = plan.usecases.values()
    prepared = prepare_connectors(plan, "here")
    stop = threading.Event()
    runner = threading.Thread(target=run_connectors, args=(prepared, stop), daemon=True)
    runner.start()
    try:
        # the source is made (its origin known) once the broker acknowledged the subscription
        wait_for(lambda: prepared.statuses[0].origin != "", 20, "the MQTT subscription")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
        pub.connect(host, port)
        pub.loop_start()
        for i in range(60):
            payload = {"ts": 1_900_000_000_000 + i, **{f: float(i % 7) for f in FIELDS}}
            pub.publish(
                f"site{uid}/press-{i % 3}/telemetry", orjson.dumps(payload), qos=1
            ).wait_for_publish(5)
        pub.publish(f"site{uid}/press-0/telemetry", b"not json", qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        conf = {"bootstrap.servers": broker.bootstrap}
        deadline = time.monotonic() + 30
        while len(read_topic(conf, uc.raw_topic)) < 60 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        runner.join(30)
    raw = read_topic(conf, uc.raw_topic)
    assert sorted(k for k, _, _, _, _ in raw) == sorted(
        f"press-{i % 3}".encode() for i in range(60)
    )
    assert [v for _, v, _, _, _ in read_topic(conf, uc.deadletter_topic)] == [b"not json"]
    run_to_end(path)
    predictions = read_topic(conf, uc.predictions_topic)
    assert len(predictions) == 60  # every sensor message scored


# -------------------------------------------------------------------------- files


def _lines(folder: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line)
        for f in sorted(folder.glob("*.jsonl"))
        for line in f.read_bytes().splitlines()
    ]


def _written(folder: Path) -> int:
    """Bytes in the output's files now; a file the restarted sink removes meanwhile is 0."""
    total = 0
    for f in folder.glob("*.jsonl"):
        try:
            total += f.stat().st_size
        except FileNotFoundError:
            continue
    return total


def test_file_output_rotates_and_holds_every_prediction_once_across_kill_9(tmp_path, broker, uid):
    out = tmp_path / "out"
    output = {"kind": "file", "path": str(out), "max_size": 20_000, "start": "earliest"}
    path, plan, uc = _topology(tmp_path, broker, uid, [output])
    preds = _predictions(uc, 0, 20_000)
    _publish(broker, uc, preds)
    cmd = [sys.executable, "-m", "mlexec.cli", "act", str(path), "--site", "edge"]
    for share in (0.25, 0.6):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if _written(out) > share * 20_000 * 190:
                    break
                time.sleep(0.02)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
    done = subprocess.run([*cmd, "--once"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = _lines(out)
    assert sorted(p["id"] for p in lines) == sorted(p["id"] for p in preds)  # each once
    files = sorted(out.glob("*.jsonl"))
    assert len(files) > 10 and all(f.stat().st_size < 20_000 + 400 for f in files)


def test_parquet_output_and_kafka_output_with_a_chosen_shape(tmp_path, broker, uid):
    with LocalBroker() as other:
        outputs = [
            {
                "kind": "file",
                "name": "archive",
                "path": str(tmp_path / "pq"),
                "format": "parquet",
                "max_size": 300,
            },
            {
                "kind": "kafka",
                "topic": f"actuate-{uid}",
                "kafka": {"bootstrap": other.bootstrap},
                "key": "id",
                "fields": ["id", "outputs.label"],
            },
        ]
        _, plan, uc = _topology(tmp_path, broker, uid, outputs)
        preds = _predictions(uc, 0, 1000)
        _publish(broker, uc, preds)
        _act_once(plan)
        moved = read_topic({"bootstrap.servers": other.bootstrap}, f"actuate-{uid}")
    assert sorted((k.decode(), orjson.loads(v)) for k, v, _, _, _ in moved) == sorted(
        (p["id"], {"id": p["id"], "outputs.label": p["outputs"]["label"]}) for p in preds
    )
    frame = pl.read_parquet(tmp_path / "pq" / "*.parquet")
    assert sorted(frame["id"].to_list()) == sorted(p["id"] for p in preds)
    assert len(list((tmp_path / "pq").glob("*.parquet"))) == 4  # 300 rows a file, then the rest


def test_an_output_can_act_on_alerts(tmp_path, broker, uid):
    output = {
        "kind": "file",
        "name": "pager",
        "path": str(tmp_path / "pager"),
        "source": "alerts",
        "when": f"severity = 'critical' AND usecase = 'u{uid}'",
    }
    _, plan, uc = _topology(tmp_path, broker, uid, [output])
    alerts = [
        {"usecase": f"u{uid}", "severity": s, "kind": "drift", "message": f"alert {i}"}
        for i, s in enumerate(["warning", "critical", "critical", "info"])
    ] + [{"usecase": "another", "severity": "critical", "kind": "drift", "message": "not ours"}]
    conf = {"bootstrap.servers": broker.bootstrap}
    ensure_topics(conf, uc.topics())
    produce_records(conf, "mlexec.alerts", [(None, orjson.dumps(a)) for a in alerts])
    (status,) = _act_once(plan)
    got = _lines(tmp_path / "pager")
    assert [a["message"] for a in got] == ["alert 1", "alert 2"]
    assert all(a["id"].startswith("mlexec.alerts:0:") for a in got)  # an id where none was sent
    assert status.delivered == 2 and status.filtered >= 3
