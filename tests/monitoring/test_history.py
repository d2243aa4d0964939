"""History is a first-class input: a year-old CSV is stored and monitored as it was then.

Its samples are kept for the retention counted from when they are stored, and
``monitor run --from --to`` evaluates the range in windows, alerting on the drift the
file holds (its third day runs 5 degrees hot) and on nothing before it.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta

import yaml
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.connectors.samplestore import open_store
from mlexec.operators.testing import make_mlp
from mlexec.runtime import health
from mlexec.runtime.connect import prepare_connectors, run_connectors
from mlexec.runtime.run import prepare_site, run_site
from mlexec.topologies import load_topology, plan_topology

DAY0 = (datetime.now(UTC) - timedelta(days=365)).replace(hour=0, minute=0, second=0, microsecond=0)


def _history(path, rng: random.Random) -> int:
    lines = ["machine,ts,temp,load"]
    for minute in range(3 * 24 * 60):  # three days, a record a minute per machine
        at = DAY0 + timedelta(minutes=minute)
        hot = 5.0 if minute >= 2 * 24 * 60 else 0.0
        for machine in ("a", "b"):
            lines.append(
                f"{machine},{at.isoformat()},{rng.gauss(20 + hot, 1):.3f},{rng.random():.3f}"
            )
    path.write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def _site(tmp_path, broker, uid: str, csv_name: str, **usecase):  # type: ignore[no-untyped-def]
    """A one-site topology of a CSV of machine, ts, temp and load; ``usecase`` adds keys.

    Returns the topology's path, the loaded topology and its plan.
    """
    make_mlp(tmp_path / "m.onnx", inputs=2, hidden=(4,), seed=2)
    doc = {
        "name": f"h{uid}",
        "sites": {
            "here": {
                "kafka": {"bootstrap": broker.bootstrap},
                "sample_store": f"chdb://{tmp_path}/chdb",
                "state_dir": f"{tmp_path}/state",
            }
        },
        "usecases": {
            f"h{uid}": {
                "input": {
                    "topic": f"raw-{uid}",
                    "key": "machine",
                    "time": "ts",
                    "schema": {
                        "machine": "str",
                        "ts": "timestamp",
                        "temp": "float",
                        "load": "float",
                    },
                },
                "connectors": [{"kind": "csv", "path": str(tmp_path / csv_name)}],
                "dispatch": {"kind": "microbatch"},
                "model": {"name": "m", "version": "1", "path": str(tmp_path / "m.onnx")},
                "sampling": {"rate": 1.0},
                **usecase,
            }
        },
    }
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    topology = load_topology(path)
    return path, topology, plan_topology(topology, str(path))


def test_a_year_old_csv_is_stored_and_its_range_monitored_in_windows(tmp_path, broker, uid):
    rows = _history(tmp_path / "history.csv", random.Random(3))
    reference = {
        "kind": "range",
        "start": DAY0.isoformat(),
        "end": (DAY0 + timedelta(days=1)).isoformat(),
    }
    path, topology, plan = _site(
        tmp_path,
        broker,
        uid,
        "history.csv",
        retention="14d",  # counted from storing: the year-old samples stay
        monitoring={
            "every": "6h",
            "window": "6h",
            "watch": {"temp": {"psi": {"warning": 0.1, "critical": 0.25}}, "load": {}},
            "reference": reference,
        },
    )
    run_connectors(prepare_connectors(plan, "here", once=True), once=True)
    run_site(prepare_site(plan, "here"), recovery=False)
    (uc,) = plan.usecases.values()
    with open_store(topology.sites["here"].sample_store) as store:
        store.command(f"OPTIMIZE TABLE mlexec.{uc.table} FINAL")  # a TTL would apply here
        stored = store.query(f"SELECT count() AS n FROM mlexec.{uc.table} FINAL")["n"][0]
    assert stored == rows

    end = DAY0 + timedelta(days=3)
    done = CliRunner().invoke(
        app,
        ["monitor", "run", str(path), "--from", DAY0.isoformat(), "--to", end.isoformat()],
        env={"COLUMNS": "250"},
    )
    assert done.exit_code == 0, done.output
    assert done.output.count("samples from") == 12  # 6 h windows ending 6 h … 72 h in
    with open_store(topology.sites["here"].sample_store) as store:
        alerts = store.query(
            "SELECT time, subject, statistic, severity FROM mlexec.mlexec_alerts "
            f"WHERE usecase = '{uc.name}' ORDER BY time"
        ).to_dicts()
    raised = [a for a in alerts if a["severity"] in ("warning", "critical")]
    assert raised, done.output
    assert {a["subject"] for a in raised} == {"temp"}  # load did not drift
    hot_from = DAY0 + timedelta(days=2)
    assert all(a["time"].replace(tzinfo=UTC) > hot_from for a in raised)  # only where it ran hot
    assert raised[0]["time"].replace(tzinfo=UTC) == hot_from + timedelta(hours=6)
    assert raised[0]["severity"] == "critical"
    gate = CliRunner().invoke(
        app,
        [
            "monitor",
            "run",
            str(path),
            "--from",
            DAY0.isoformat(),
            "--to",
            end.isoformat(),
            "--fail-on",
            "critical",
        ],
    )
    assert gate.exit_code == 1 and "temp" in gate.output


def test_samples_past_an_event_time_retention_are_counted_and_said(tmp_path, broker, uid, caplog):
    """With ``retention_from: event`` a year-old sample expires at once: it is said, with
    the count and what to set instead; the young ones are stored."""
    lines = ["machine,ts,temp,load"]
    for i in range(20):
        at = DAY0 if i % 2 else datetime.now(UTC) - timedelta(minutes=i)
        lines.append(f"a,{at.isoformat()},{20 + i},{i / 20}")
    (tmp_path / "mixed.csv").write_text("\n".join(lines) + "\n")
    path, topology, plan = _site(
        tmp_path, broker, uid, "mixed.csv", retention="14d", retention_from="event"
    )
    run_connectors(prepare_connectors(plan, "here", once=True), once=True)
    with caplog.at_level(logging.WARNING):
        run_site(prepare_site(plan, "here"), recovery=False)
    said = [r.getMessage() for r in caplog.records if "past the retention" in r.getMessage()]
    (uc,) = plan.usecases.values()
    assert len(said) == 1 and "retention_from: stored" in said[0]  # said once, then counted
    assert health._EXPIRED[uc.name] == 10  # the samples_expired counter
    with open_store(topology.sites["here"].sample_store) as store:
        store.command(f"OPTIMIZE TABLE mlexec.{uc.table} FINAL")
        left = store.query(f"SELECT count() AS n FROM mlexec.{uc.table} FINAL")["n"][0]
    assert left == 10
