"""``mlexec produce``, ``tail`` and ``feedback`` on the real broker, accounted by record."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.connectors.kafka import client_config
from mlexec.connectors.reading import read_topic
from mlexec.monitoring.ingest import _labels
from mlexec.operators.testing import make_mlp
from mlexec.runtime.run import prepare_site, run_site
from mlexec.topologies import load_topology, plan_topology
from tests.waiting import wait_for

T0 = 1_900_000_000_000


def _topology(tmp: Path, bootstrap: str, uid: str) -> Path:
    make_mlp(tmp / "m.onnx", inputs=2, hidden=(4,), seed=1)
    doc = {
        "name": f"t{uid}",
        "sites": {
            "edge": {
                "kafka": {"bootstrap": bootstrap},
                "sample_store": f"chdb://{tmp}/chdb",
                "state_dir": f"{tmp}/state",
            }
        },
        "usecases": {
            f"u{uid}": {
                "input": {
                    "topic": f"raw-{uid}",
                    "key": "machine",
                    "time": "ts",
                    "max_ahead": "3650d",
                    "schema": {
                        "machine": "str",
                        "ts": "timestamp",
                        "temp": "float",
                        "load": "float",
                    },
                    "nullable": ["load"],
                },
                "dispatch": {"kind": "microbatch"},
                "model": {"name": "m", "version": "1", "path": str(tmp / "m.onnx")},
            }
        },
    }
    path = tmp / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _cli(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})
    return done.exit_code, done.output


def test_produce_shapes_a_csv_and_dead_letters_what_does_not_fit(tmp_path, broker, uid):
    path = _topology(tmp_path, broker.bootstrap, uid)
    lines = ["machine,ts,temp,load"]
    for i in range(40):
        lines.append(f"m{i % 3},{T0 + i * 1000},{20 + i * 0.5},{'' if i % 4 == 0 else i}")
    lines += ["m1,2030-03-01T00:00:00+00:00,warm,1", "m2,1900000000000,21.5", ",1900000000000,1,1"]
    data = tmp_path / "pumps.csv"
    data.write_text("\n".join(lines) + "\n")
    code, out = _cli("produce", str(path), str(data))
    flat = " ".join(out.split())
    assert code == 1, out
    assert "produced 40 records" in flat and "3 rows did not fit the schema" in flat
    conf = client_config(load_topology(path).sites["edge"].kafka)
    raw = [orjson.loads(v or b"") for _k, v, *_ in read_topic(conf, f"raw-{uid}")]
    assert sorted(r["temp"] for r in raw) == [20 + i * 0.5 for i in range(40)]
    assert sum(r["load"] is None for r in raw) == 10  # the empty cells of a nullable field
    dead = [(v, dict(h)) for _k, v, h, *_ in read_topic(conf, f"u{uid}.deadletter")]
    assert len(dead) == 3
    sources = sorted(h["mlexec.source"].decode().rsplit(":", 1)[1] for _v, h in dead)
    assert sources == ["42", "43", "44"]  # the file's own line numbers
    reasons = " ".join(h["mlexec.reason"].decode() for _v, h in dead)
    assert "field 'temp': expected float, found 'warm'" in reasons
    assert "expected 4 fields" in reasons and "field 'machine'" in reasons
    assert any(v == b"m1,2030-03-01T00:00:00+00:00,warm,1" for v, _ in dead)  # the row as read


def test_tail_shows_predictions_and_dead_letters_with_their_reasons(tmp_path, broker, uid):
    path = _topology(tmp_path, broker.bootstrap, uid)
    data = tmp_path / "pumps.jsonl"
    rows = [
        {"machine": f"m{i % 2}", "ts": T0 + i * 1000, "temp": float(i), "load": 1.0}
        for i in range(30)
    ]
    data.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    assert _cli("produce", str(path), str(data))[0] == 0
    plan = plan_topology(load_topology(path), str(path))
    conf = client_config(plan.topology.sites["edge"].kafka)
    from mlexec.connectors.kafka import produce_records

    produce_records(conf, f"raw-{uid}", [(b"m0", b'{"machine": "m0", "ts": "soon"}')])
    run_site(prepare_site(plan, "edge"), recovery=False)

    code, out = _cli("tail", str(path), "predictions", "--json", "--last", "5")
    assert code == 0, out
    shown = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    assert len(shown) == 5 and all("outputs" in s["value"] for s in shown)
    everything = {
        orjson.loads(v or b"")["id"] for _k, v, *_ in read_topic(conf, f"u{uid}.predictions")
    }
    assert {s["value"]["id"] for s in shown} <= everything and len(everything) == 30
    code, out = _cli("tail", str(path), "deadletters")
    flat = " ".join(out.split())
    assert code == 0 and "parse" in flat and "field 'ts'" in flat and "'soon'" in flat, out
    code, out = _cli("tail", str(path), "deadletters", "--json")
    (letter,) = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    assert (
        letter["origin"]
        == f"raw-{uid}:{letter['origin'].split(':')[1]}:{letter['origin'].split(':')[2]}"
    )
    assert letter["value"] == {"machine": "m0", "ts": "soon"} and letter["stage"] == "parse"
    code, out = _cli("tail", str(path), "nonsense")
    assert code == 2 and "tail shows one of" in out


def test_tail_follows_new_records_until_interrupted(tmp_path, broker, uid):
    path = _topology(tmp_path, broker.bootstrap, uid)
    first = tmp_path / "first.jsonl"
    first.write_bytes(orjson.dumps({"machine": "m0", "ts": T0, "temp": 1.0}) + b"\n")
    assert _cli("produce", str(path), str(first))[0] == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlexec.cli", "tail", str(path), "raw", "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[dict[str, Any]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(orjson.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(lines) >= 1, 60, "the record already there")
        more = tmp_path / "more.jsonl"
        more.write_bytes(
            b"\n".join(
                orjson.dumps({"machine": "m1", "ts": T0 + i, "temp": float(i)}) for i in range(1, 6)
            )
        )
        assert _cli("produce", str(path), str(more))[0] == 0
        wait_for(lambda: len(lines) >= 6, 60, "the five produced while following")
    finally:
        proc.terminate()
        proc.wait(30)
    reader.join(10)
    assert sorted(m["value"]["temp"] for m in lines) == [1.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert proc.returncode in (0, 130, -15), proc.stderr.read() if proc.stderr else ""


def test_feedback_sends_labels_by_record_id_or_key_and_time(tmp_path, broker, uid):
    path = _topology(tmp_path, broker.bootstrap, uid)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "record_id,key,time,label\n"
        f"raw-{uid}:0:5,,,1.5\n"
        f",m1,2030-03-17T10:00:00+00:00,0\n"
        f",m2,{T0},1\n"
        f"raw-{uid}:1:2,,,high\n"
        ",,,3\n"
    )
    code, out = _cli("feedback", str(path), str(labels))
    flat = " ".join(out.split())
    assert code == 1 and "sent 3 labels" in flat, out
    assert (
        "row 5: label must be a number, found 'high'" in flat
        and "row 6: no record_id, nor key and time" in flat
    )
    conf = client_config(load_topology(path).sites["edge"].kafka)
    messages = read_topic(conf, f"u{uid}.feedback")
    rows, dead = _labels(f"u{uid}.feedback", messages)  # what the monitor will store
    assert dead == [] and len(rows) == 3
    by = {(r["record_id"], r["key"]): r for r in rows}
    assert by[(f"raw-{uid}:0:5", "")]["label"] == 1.5
    assert by[("", "m1")]["event_time"] == int(
        datetime(2030, 3, 17, 10, tzinfo=UTC).timestamp() * 1000
    )
    assert by[("", "m2")]["event_time"] == T0


def test_run_says_what_runs_where_and_what_it_did(tmp_path, broker, uid):
    path = _topology(tmp_path, broker.bootstrap, uid)
    data = tmp_path / "pumps.jsonl"
    rows = [{"machine": "m0", "ts": T0 + i, "temp": float(i)} for i in range(10)]
    data.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    assert _cli("produce", str(path), str(data))[0] == 0
    conf = client_config(load_topology(path).sites["edge"].kafka)
    from mlexec.connectors.kafka import produce_records

    produce_records(conf, f"raw-{uid}", [(b"m0", b"not json")])
    done = subprocess.run(
        [sys.executable, "-m", "mlexec.cli", "run", str(path), "--until-end"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert (
        f"site edge: pipeline of u{uid} (raw-{uid} → u{uid}.predictions); store of u{uid}" in out
    ), out
    assert "to the end of their input" in out
    samples = len(read_topic(conf, f"u{uid}.samples"))
    assert f"u{uid}: 11 records read, 10 predictions, 1 dead letters, {samples} samples" in out, out
