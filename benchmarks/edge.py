"""Edge footprint: a whole site under ``mlexec up`` at 0, 100 and 2,000 records/s.

    python -m benchmarks.edge          # make bench runs it too

An edge box runs the whole site: the supervisor (``mlexec up``), the MQTT connector
(``connect``), the pipeline, the sample store (chDB) and an output (``act``: rolling
files of the alarms). This starts one on a local Mosquitto and a local Tansu broker —
each record published to MQTT as a machine would — and measures

- the start-up time: from ``mlexec up`` to the first prediction of a record published
  every 100 ms from the start;
- for ``--seconds`` each at 0 (idle), 100 and 2,000 records/s: every process's RSS at
  the end and its CPU over the phase (per second, and per record), and the total;
- that every published record was predicted (by count: the MQTT records carry ids).

Two sites are measured: ``standalone`` (its own store, as above) and ``mirrored``,
whose samples go to a cloud site's store (the edge keeps no chDB). Bounded: every
wait has a deadline, every phase a fixed length and rate.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import yaml

from benchmarks.e2e import _Collector
from benchmarks.runners import FIELDS
from mlexec.connectors.broker import LocalBroker, local_mosquitto
from mlexec.connectors.reading import read_topic
from mlexec.operators.testing import make_mlp

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def topology(work: Path, bootstrap: str, mqtt_port: int, cloud: str | None) -> Path:
    model = make_mlp(work / "model.onnx", inputs=len(FIELDS), hidden=(64, 64), outputs=1, seed=0)
    edge: dict[str, Any] = {
        "kafka": {"bootstrap": bootstrap},
        "state_dir": f"{work}/edge-state",
    }
    sites: dict[str, Any] = {"edge": edge}
    usecase: dict[str, Any] = {
        "input": {
            "topic": "edge.raw",
            "partitions": 2,
            "key": "sensor",
            "time": "ts",
            "schema": {"sensor": "str", "ts": "timestamp", **{f: "float" for f in FIELDS}},
        },
        "connectors": [
            {
                "kind": "mqtt",
                "broker": {"host": "127.0.0.1", "port": mqtt_port},
                "topics": ["plant/+/telemetry"],
                "key_segment": 1,
            }
        ],
        "dispatch": {"kind": "microbatch", "max_records": 256, "max_wait": "20ms"},
        "reduction": {"kind": "identity"},
        "model": {"name": "mlp", "version": "1", "path": str(model)},
        "sampling": {"rate": 0.01},
        "outputs": [{"kind": "file", "name": "alarms", "path": f"{work}/alarms", "when": "y > 2"}],
    }
    doc: dict[str, Any] = {"name": "edgebench", "sites": sites, "usecases": {"readings": usecase}}
    edge["sample_store"] = f"chdb://{work}/edge-chdb"
    if cloud is not None:  # the samples cross the link to the cloud's store: none at the edge
        sites["cloud"] = {
            "kafka": {"bootstrap": cloud},
            "sample_store": f"chdb://{work}/cloud-chdb",
            "state_dir": f"{work}/cloud-state",
        }
        doc["links"] = [{"source": "edge", "target": "cloud", "secure": False}]  # loopback
        usecase["placement"] = {
            "connectors": "edge",
            "dispatch": "edge",
            "infer": "edge",
            "store": "cloud",
            "act": "edge",
        }
    path = work / "edge.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(p for p, parent in parents.items() if parent == pid)
    return found


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    if b"mlexec.runtime.part" in argv:
        spec = orjson.loads(argv[argv.index(b"mlexec.runtime.part") + 1])
        return str(spec["part"])
    if b"mlexec.runtime.supervise" in argv or b"up" in argv:
        return "supervisor (mlexec up)"
    return Path(argv[0].decode()).name


def _pss_mb(pid: int) -> float:
    """The process's proportional set size: its own pages, and its share of those it shares
    (the libraries every part maps count once over the site, not once per process)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def snapshot(root: int) -> dict[str, tuple[float, float]]:
    """Per process of the site (by part): CPU seconds so far and memory (PSS) in MB now."""
    out: dict[str, tuple[float, float]] = {}
    for pid in _descendants(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            rss = _pss_mb(pid)
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        name = _name(pid)
        if name in out:  # a part's own children (none today) add to it
            cpu, rss = cpu + out[name][0], rss + out[name][1]
        out[name] = (cpu, rss)
    return out


def _publish(client: mqtt.Client, i: int) -> None:
    rec = {"sensor": f"m{i % 50}", "ts": int(time.time() * 1000), "rid": i}
    rec.update({f: round(((i * 7 + j) % 61) / 10 - 3, 3) for j, f in enumerate(FIELDS)})
    client.publish(f"plant/m{i % 50}/telemetry", orjson.dumps(rec), qos=1)


def paced(client: mqtt.Client, start: int, rate: int, seconds: float) -> int:
    """Publish ``rate`` records a second for ``seconds``; the next record number."""
    began, i = time.monotonic(), start
    while (elapsed := time.monotonic() - began) < seconds:
        due = start + int(elapsed * rate)
        while i < due:
            _publish(client, i)
            i += 1
        time.sleep(0.005)
    return i


def measure(mirrored: bool, seconds: float) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalBroker() as kafka,
        LocalBroker() if mirrored else nullcontext() as cloud,
    ):
        work = Path(tmp)
        with local_mosquitto(work) as port:
            path = topology(work, kafka.bootstrap, port, cloud.bootstrap if cloud else None)
            collector = _Collector(kafka.bootstrap, "readings.predictions")
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            client.connect("127.0.0.1", port)
            client.loop_start()
            started = time.monotonic()
            up = subprocess.Popen(
                [str(Path(sys.executable).with_name("mlexec")), "up", str(path), "--site", "edge"],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                return _phases(up, client, collector, started, seconds)
            except RuntimeError as exc:
                conf = {"bootstrap.servers": kafka.bootstrap}
                counts = {
                    t: len(read_topic(conf, t, timeout=30))
                    for t in ("readings.raw", "readings.deadletter", "readings.predictions")
                }
                raise RuntimeError(f"{exc}; on the broker: {counts}") from exc
            finally:
                up.send_signal(signal.SIGTERM)
                try:
                    up.wait(60)
                except subprocess.TimeoutExpired:
                    up.kill()
                client.loop_stop()
                collector.stop()


def _phases(
    up: subprocess.Popen[bytes],
    client: mqtt.Client,
    collector: _Collector,
    started: float,
    seconds: float,
) -> dict[str, Any]:
    i = 0
    while collector.seen == 0:  # a record every 100 ms until the first prediction
        if time.monotonic() - started > 180 or up.poll() is not None:
            err = up.stderr.read().decode() if up.stderr and up.poll() is not None else ""
            raise RuntimeError(f"no prediction 180 s after `mlexec up`: {err[-2000:]}")
        _publish(client, i)
        i += 1
        time.sleep(0.1)
    startup = time.monotonic() - started
    # what was published before the connector subscribed is not MQTT's to keep (no
    # session yet): count from what the start-up left, once it has settled
    base = _settled(collector)
    phases: dict[str, Any] = {"startup_s": startup}
    published = 0
    for rate in (0, 100, 2000):
        before, t0 = snapshot(up.pid), time.monotonic()
        if rate:
            i_end = paced(client, i, rate, seconds)
            published += i_end - i
            i = i_end
        else:
            _idle(seconds)
        if not collector.wait(base + published, 120):
            raise RuntimeError(f"{collector.seen - base} of {published} records predicted")
        after, took = snapshot(up.pid), time.monotonic() - t0
        rows = {
            name: (
                (cpu - before.get(name, (cpu, 0))[0]) / took,  # cores busy over the phase
                rss,
            )
            for name, (cpu, rss) in after.items()
        }
        phases[f"rate_{rate}"] = {"rows": rows}
    phases["predicted"] = _settled(collector) - base
    phases["published"] = published
    return phases


def _settled(collector: _Collector) -> int:
    """The prediction count once it has not changed for 3 s (at most 60 s)."""
    seen, since, deadline = collector.seen, time.monotonic(), time.monotonic() + 60
    while time.monotonic() - since < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        if collector.seen != seen:
            seen, since = collector.seen, time.monotonic()
    return seen


def _idle(seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
    return 0


def report(kind: str, got: dict[str, Any], seconds: float) -> None:
    print(
        f"\n{kind}: start-up to the first prediction {got['startup_s']:.1f} s; "
        f"{got['predicted']:,} of {got['published']:,} published records predicted"
    )
    names = sorted(got["rate_0"]["rows"])
    print("| process | " + " | ".join(f"{r}/s: PSS MB, % core" for r in (0, 100, 2000)) + " |")
    print("|---|" + "---:|" * 3)
    for name in [*names, "total"]:
        cells = []
        for rate in (0, 100, 2000):
            rows = got[f"rate_{rate}"]["rows"]
            if name == "total":
                cpu, rss = sum(c for c, _ in rows.values()), sum(r for _, r in rows.values())
            else:
                cpu, rss = rows.get(name, (0.0, 0.0))
            cells.append(f"{rss:.0f}, {cpu * 100:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for rate in (100, 2000):
        rows = got[f"rate_{rate}"]["rows"]
        idle = got["rate_0"]["rows"]
        busy = sum(c for c, _ in rows.values()) - sum(c for c, _ in idle.values())
        print(f"CPU per record at {rate}/s above idle: {busy / rate * 1e6:.0f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--only", choices=["standalone", "mirrored"])
    args = parser.parse_args()
    for kind in (args.only,) if args.only else ("standalone", "mirrored"):
        report(kind, measure(kind == "mirrored", args.seconds), args.seconds)


if __name__ == "__main__":
    main()
