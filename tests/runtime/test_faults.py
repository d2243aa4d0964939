"""An operator's fault test of a whole site under ``mlexec up``, with exact accounting.

A per-record and a tumbling-window use case are fed at a steady rate while the test
kills random children with SIGKILL at random points, restarts ``mlexec up`` gracefully,
stops the store process for a while (an outage: samples wait in Kafka) and restarts the
broker — which keeps topics in memory, so it comes back empty. Afterwards every record
is accounted for by id: each per-record input has exactly one sample in the store
(sampling rate 1); each window input is counted in exactly one stored window or is one
dead letter (with its original bytes); the broker restart raised an alert and skipped
no record fed after it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from mlexec.connectors.batchsource import topic_identity
from mlexec.connectors.broker import LocalBroker
from mlexec.connectors.kafka import client_config, ensure_topics
from mlexec.connectors.reading import read_topic
from mlexec.connectors.samplestore import open_store
from mlexec.operators.testing import make_mlp
from mlexec.runtime.lag import pipeline_lag, store_backlog
from mlexec.runtime.supervisor import read_status
from mlexec.topologies import load_topology, plan_topology
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

MLEXEC = [sys.executable, "-m", "mlexec.cli"]
FIELDS = ["f0", "f1", "f2", "f3"]
WINDOW_MS = 1_000
STEP_MS = 5  # event time between consecutive records of a use case


def _topology(tmp: Path, bootstrap: str, uid: str) -> Path:
    make_mlp(tmp / "rec.onnx", inputs=4, hidden=(8,), seed=1)
    make_mlp(tmp / "win.onnx", inputs=2, hidden=(8,), seed=2)
    schema = {"sensor": "str", "ts": "timestamp", **{f: "float" for f in FIELDS}}
    doc = {
        "name": f"f{uid}",
        "sites": {
            "here": {
                "kafka": {"bootstrap": bootstrap},
                "sample_store": f"chdb://{tmp}/chdb",
                "state_dir": str(tmp / "state"),
            }
        },
        "usecases": {
            "rec": {
                "input": {"topic": f"rec-{uid}", "key": "sensor", "time": "ts", "schema": schema},
                "dispatch": {"kind": "record"},
                "model": {"name": "r", "version": "1", "path": "rec.onnx"},
                "sampling": {"rate": 1.0},
            },
            "win": {
                "input": {"topic": f"win-{uid}", "key": "sensor", "time": "ts", "schema": schema},
                "dispatch": {"kind": "tumbling", "size": "1s"},
                "reduction": {"kind": "aggregate", "fields": {"f0": ["count", "mean"]}},
                "model": {"name": "w", "version": "1", "path": "win.onnx"},
                "sampling": {"rate": 1.0},
            },
        },
    }
    path = tmp / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class _Feeder:
    """Records for both use cases at a steady pace, in a thread; what went where."""

    def __init__(self, conf: dict[str, Any], topics: dict[str, str], base_ms: int) -> None:
        self.conf = conf
        self.producer = Producer({**conf, "enable.idempotence": True, "linger.ms": 5})
        self.topics = topics
        self.next_ms = base_ms
        self.n = 0
        #: use case → list of (partition, offset, key, event time)
        self.sent: dict[str, list[tuple[int, int, str, int]]] = {uc: [] for uc in topics}

    def feed(self, count: int, chunk: int = 100, pause: float = 0.05) -> None:
        for _ in range(0, count, chunk):
            rows = []
            for _ in range(chunk):
                key = f"s{self.n % 6}"
                rows.append((key, self.next_ms, {f: float(self.n % 17) for f in FIELDS}))
                self.n += 1
                self.next_ms += STEP_MS
            for uc, topic in self.topics.items():
                positions: list[tuple[int, int]] = [(-1, -1)] * len(rows)
                for i, (k, t, v) in enumerate(rows):

                    def done(err: Any, msg: Any, i: int = i, at: list = positions) -> None:
                        assert err is None, err
                        at[i] = (msg.partition(), msg.offset())

                    value = orjson.dumps({"sensor": k, "ts": t, **v})
                    self.producer.produce(topic, value=value, key=k.encode(), on_delivery=done)
                assert self.producer.flush(30) == 0
                self.sent[uc] += [
                    (p, o, k, t) for (p, o), (k, t, _) in zip(positions, rows, strict=True)
                ]
            time.sleep(pause)  # the steady rate of a live source, not a wait for a result

    def start(self, count: int) -> threading.Thread:
        thread = threading.Thread(target=self.feed, args=(count,), daemon=True)
        thread.start()
        return thread


class _Up:
    """``mlexec up`` as a subprocess; its children's pids from the status it writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.plan = plan_topology(load_topology(path))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([*MLEXEC, "up", str(self.path), "--site", "here"])
        wait_for(lambda: self.pid("pipeline") and self.pid("store"), 60, "up's processes")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(90) is not None

    def pid(self, part: str) -> int | None:
        status = read_status(self.plan, "here")
        if status is None or self.proc is None or status.get("supervisor") != self.proc.pid:
            return None
        for p in status["parts"]:
            if p["name"] == part and p["state"] == "running" and p["pid"]:
                return int(p["pid"])
        return None


def _measured(measure: Any, plan: Any) -> tuple[int, int] | None:
    try:
        return measure(plan, "here")
    except Exception:  # noqa: BLE001 - not measurable right now (broker restarting)
        return None


def _caught_up(plan: Any, processed: int) -> bool:
    lag = _measured(pipeline_lag, plan)
    backlog = _measured(store_backlog, plan)
    return lag is not None and lag == (0, processed) and backlog is not None and backlog[0] == 0


def _window_samples(conf: dict[str, Any], topic: str) -> set[str]:
    return {orjson.loads(v)["record_id"] for _, v, *_ in read_topic(conf, topic, timeout=60)}


def _windows_of(sent: list[tuple[int, int, str, int]]) -> set[str]:
    return {f"win:{k}:{t - t % WINDOW_MS}" for _p, _o, k, t in sent}


def _dead(conf: dict[str, Any], topic: str) -> list[dict[str, Any]]:
    out = []
    for _k, value, headers, *_ in read_topic(conf, topic, timeout=60):
        h = {k: v.decode() for k, v in headers}
        out.append({"value": value, **h})
    return out


def _settled(
    plan: Any, conf: dict[str, Any], feeder: _Feeder, processed: int, phase: str
) -> dict[str, list[dict[str, Any]]]:
    """Wait until the phase is processed, its windows emitted and stored; its dead letters."""
    windows = _windows_of(feeder.sent["win"])
    samples = plan.usecases["win"].samples_topic
    wait_for(
        lambda: windows <= _window_samples(conf, samples) and _caught_up(plan, processed),
        180,
        f"{phase} processed, its windows emitted and stored",
    )
    return {uc: _dead(conf, plan.usecases[uc].deadletter_topic) for uc in ("rec", "win")}


def test_a_site_under_faults_loses_no_record_and_halts_on_none(tmp_path, uid):
    rng = random.Random(uid)
    t0 = time.monotonic()

    def note(what: str) -> None:  # shown with a failure: when each phase ended
        print(f"[{time.monotonic() - t0:6.1f}s] {what}", flush=True)

    broker = LocalBroker().start()
    port = broker.port
    up = None
    try:
        path = _topology(tmp_path, broker.bootstrap, uid)
        plan = plan_topology(load_topology(path))
        conf = client_config(plan.topology.sites["here"].kafka)
        ensure_topics(conf, plan.topics_at("here"))
        rec, win = plan.usecases["rec"], plan.usecases["win"]
        feeder = _Feeder(
            conf, {"rec": rec.raw_topic, "win": win.raw_topic}, int(time.time() * 1000) - 3_600_000
        )
        up = _Up(path)
        up.start()
        note("up started")

        # --- phase 1: kills at random points, a graceful restart, a store outage
        n1 = 8_000
        feeding = feeder.start(n1)
        faults = ["kill pipeline", "kill store", "graceful", "outage", "kill pipeline"]
        points = sorted(rng.uniform(0.05, 0.9) for _ in faults)
        rng.shuffle(faults)
        for point, fault in zip(points, faults, strict=True):
            wait_for(
                lambda p=point: (_measured(pipeline_lag, plan) or (0, 0))[1] >= p * 2 * n1,
                180,
                f"{point:.0%} processed before {fault}",
            )
            note(f"{fault} at {point:.0%}")
            if fault.startswith("kill"):
                part = fault.split()[1]
                pid = up.pid(part)
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda o=pid, p=part: up.pid(p) not in (None, o), 60, f"{part} restart")
            elif fault == "graceful":
                up.stop()
                up.start()
            else:  # the store stops answering; samples wait in Kafka; then it comes back
                pid = up.pid("store")
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)
                try:
                    wait_for(
                        lambda: (
                            (_measured(store_backlog, plan) or (0, 0))[0] >= 300
                            or not feeding.is_alive()
                        ),
                        120,
                        "samples piling up in Kafka while the store is away",
                    )
                finally:
                    os.kill(pid, signal.SIGCONT)
        note("faults done")
        feeding.join(120)
        assert not feeding.is_alive()
        # every window of phase 1 emitted (the source's silence closes the last ones)
        dead_1 = _settled(plan, conf, feeder, 2 * n1, "phase 1")
        note("phase 1 accounted")
        sent_1 = {uc: list(v) for uc, v in feeder.sent.items()}

        # --- the broker restarts on its port and comes back empty
        old_ids = {t: topic_identity(AdminClient(conf), t) for t in (rec.raw_topic, win.raw_topic)}
        broker.stop()
        broker = LocalBroker(port=port).start()
        wait_for(
            lambda: all(
                (found := topic_identity(AdminClient(conf), t)) is not None and found != old_ids[t]
                for t in old_ids
            ),
            120,
            "the site to re-create its topics",
        )
        note("topics re-created")
        alerts_wanted = {rec.raw_topic, win.raw_topic}

        def alerted() -> bool:
            try:
                alerts = [orjson.loads(v) for _k, v, *_ in read_topic(conf, "mlexec.alerts")]
            except Exception:  # noqa: BLE001 - the alerts topic is made with the first alert
                return False
            said = " ".join(a["message"] for a in alerts if a["kind"] == "input")
            return all(f"{t}[" in said and "new log" in said for t in alerts_wanted)

        wait_for(alerted, 120, "an alert naming each raw topic's new log")

        note("alerted")
        # --- phase 2: records after the restart; none may be skipped
        feeder.sent = {uc: [] for uc in feeder.sent}
        feeder.producer = Producer({**conf, "enable.idempotence": True, "linger.ms": 5})
        feeder.next_ms += 5 * WINDOW_MS
        n2 = 3_000
        feeder.feed(n2)
        dead_2 = _settled(plan, conf, feeder, 2 * n2, "phase 2")
        note("phase 2 accounted")
        up.stop()
        up = None

        # --- accounting by record id
        labels = {
            t: f"{t}@{zlib.crc32(topic_identity(AdminClient(conf), t)[0].encode()):08x}"  # type: ignore[index]
            for t in (rec.raw_topic, win.raw_topic)
        }
        store_url = plan.topology.sites["here"].sample_store
        with open_store(store_url) as store:
            rows = store.query(f"SELECT record_id FROM mlexec.{rec.table} FINAL")
            stored = rows["record_id"].to_list()
            windows = store.query(f"SELECT record_id, f0_count FROM mlexec.{win.table} FINAL")
        expected = {f"{rec.raw_topic}:{p}:{o}" for p, o, *_ in sent_1["rec"]}
        expected |= {f"{labels[rec.raw_topic]}:{p}:{o}" for p, o, *_ in feeder.sent["rec"]}
        assert dead_1["rec"] == [] and dead_2["rec"] == []
        assert len(stored) == len(set(stored))  # FINAL: one row per record id
        assert set(stored) == expected  # every per-record input, none lost, none extra

        fed = Counter(f"win:{k}:{t - t % WINDOW_MS}" for _p, _o, k, t in sent_1["win"])
        fed.update(f"win:{k}:{t - t % WINDOW_MS}" for _p, _o, k, t in feeder.sent["win"])
        dead_windows: Counter[str] = Counter()
        for d in dead_1["win"] + dead_2["win"]:
            record = orjson.loads(d["value"])  # the original bytes
            assert d["mlexec.reason"].startswith("late:")
            dead_windows[f"win:{record['sensor']}:{record['ts'] - record['ts'] % WINDOW_MS}"] += 1
        counted = dict(
            zip(windows["record_id"].to_list(), windows["f0_count"].to_list(), strict=True)
        )
        assert set(counted) <= set(fed)
        for window, n in fed.items():
            assert counted.get(window, 0) + dead_windows[window] == n, window
    finally:
        if up is not None and up.proc is not None:
            up.proc.kill()
            up.proc.wait(30)
        broker.stop()
