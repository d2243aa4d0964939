"""``mlexec init`` on three kinds of CSV: the topology it writes validates and runs.

ISO 8601 times with a zone and empty cells; epoch milliseconds; naive local times with
a declared zone, a decimal comma, ``;`` between fields and ``NA`` for no value. Each
file's records are all predicted, none dead-lettered, at the event times the file meant.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.connectors.kafka import client_config
from mlexec.connectors.reading import read_topic
from mlexec.runtime.connect import prepare_connectors, run_connectors
from mlexec.runtime.run import prepare_site, run_site
from mlexec.topologies import load_topology, plan_topology

BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2030, 3, 31, 0, 30, tzinfo=BERLIN)  # the night clocks go forward


def _iso_with_zone(folder: Path) -> tuple[Path, list[int], dict]:
    lines = ["pump,ts,temperature,vibration,status"]
    times = []
    for i in range(60):
        at = START + timedelta(minutes=10 * i)
        times.append(int(at.timestamp() * 1000))
        vibration = "" if i % 6 == 0 else f"{0.1 * i:.2f}"
        lines.append(f"p{i % 3},{at.isoformat()},{20 + i * 0.25},{vibration},ok")
    path = folder / "pumps.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, times, {}


def _epoch_ms(folder: Path) -> tuple[Path, list[int], dict]:
    lines = ["sensor_id,ts,load,current,count"]
    times = [1_900_000_000_000 + i * 1000 for i in range(50)]
    for i, t in enumerate(times):
        lines.append(f"s{i % 4},{t},{i * 1.5},{3.0 - i * 0.01},{i}")
    path = folder / "sensors.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, times, {}


def _naive_local(folder: Path) -> tuple[Path, list[int], dict]:
    lines = ["station;time;temp;humidity"]
    times = []
    for i in range(40):
        local = datetime(2030, 7, 1, 8, 0, tzinfo=BERLIN) + timedelta(minutes=15 * i)
        times.append(int(local.timestamp() * 1000))
        humidity = "NA" if i % 5 == 0 else f"{40 + i},5"
        naive = local.replace(tzinfo=None).isoformat(sep=" ")  # as a logger writes local time
        lines.append(f"st{i % 2};{naive};{18 + i},25;{humidity}")
    path = folder / "weather.csv"
    path.write_text("\n".join(lines) + "\n")
    options = {
        "--timezone": "Europe/Berlin",
        "--delimiter": ";",
        "--decimal-comma": None,
        "--null": "NA",
    }
    return path, times, options


@pytest.mark.parametrize(
    "make", [_iso_with_zone, _epoch_ms, _naive_local], ids=["iso-zone", "epoch-ms", "naive-local"]
)
def test_init_writes_a_topology_that_validates_and_runs(tmp_path, broker, uid, make):
    data, times, options = make(tmp_path)
    target = tmp_path / "topology.yaml"
    # a name of its own: the session's broker is shared (the walkthrough's is "pumps")
    args = ["init", str(data), "--out", str(target), "--bootstrap", broker.bootstrap]
    args += ["--name", f"{data.stem}-{uid}"]
    for flag, value in options.items():
        args += [flag] if value is None else [flag, value]
    done = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    assert CliRunner().invoke(app, ["validate", str(target)]).exit_code == 0
    doc = yaml.safe_load(target.read_text())
    ((name, uc),) = doc["usecases"].items()
    topology = load_topology(target)
    plan = plan_topology(topology, str(target))
    run_connectors(prepare_connectors(plan, "local", once=True), once=True)
    run_site(prepare_site(plan, "local"), recovery=False)
    conf = client_config(topology.sites["local"].kafka)
    predictions = [orjson.loads(v or b"") for _k, v, *_ in read_topic(conf, f"{name}.predictions")]
    dead = [dict(h)["mlexec.reason"] for _k, _v, h, *_ in read_topic(conf, f"{name}.deadletter")]
    assert dead == [] and len(predictions) == len(times)
    assert sorted(p["time"] for p in predictions) == sorted(times)
    assert all(isinstance(p["outputs"]["y"], float) for p in predictions)
    schema = uc["input"]["schema"]
    if make is _iso_with_zone:
        assert uc["input"]["key"] == "pump" and uc["input"]["time"] == "ts"
        assert uc["input"]["nullable"] == ["vibration"] and schema["status"] == "str"
    if make is _epoch_ms:
        assert uc["input"]["time_unit"] == "ms" and uc["input"]["key"] == "sensor_id"
        assert schema["count"] == "float"  # integers read as floats: a later 2.5 fits
    if make is _naive_local:
        assert uc["connectors"][0]["timezone"] == "Europe/Berlin"
        assert uc["input"]["nullable"] == ["humidity"]


def test_init_says_what_it_cannot_infer(tmp_path):
    data = tmp_path / "plain.csv"
    data.write_text("a,b\n1,2\n3,4\n")
    done = CliRunner().invoke(app, ["init", str(data), "--out", str(tmp_path / "t.yaml")])
    assert done.exit_code == 2 and "no column looks like the event time" in done.output
    assert "--time" in done.output
    (tmp_path / "t.yaml").write_text("keep me")
    done = CliRunner().invoke(
        app, ["init", str(data), "--out", str(tmp_path / "t.yaml"), "--time", "a"]
    )
    assert (
        done.exit_code == 1
        and "exists" in done.output
        and (tmp_path / "t.yaml").read_text() == "keep me"
    )


def test_csv_conventions_that_cannot_hold_are_refused_at_validate(tmp_path, broker, uid):
    data, _times, options = _naive_local(tmp_path)
    target = tmp_path / "topology.yaml"
    args = ["init", str(data), "--out", str(target), "--bootstrap", broker.bootstrap]
    args += ["--name", f"weather-{uid}"]
    args += ["--timezone", "Europe/Berlin", "--delimiter", ";", "--decimal-comma", "--null", "NA"]
    assert CliRunner().invoke(app, args).exit_code == 0
    doc = yaml.safe_load(target.read_text())
    (uc,) = doc["usecases"].values()
    for change, words in (
        ({"timezone": "Mars/Olympus_Mons"}, "an IANA time zone name"),
        ({"delimiter": ",", "decimal": ","}, "a mark other than the delimiter"),
    ):
        uc["connectors"][0] = {**uc["connectors"][0], **change}
        target.write_text(yaml.safe_dump(doc, sort_keys=False))
        done = CliRunner().invoke(app, ["validate", str(target)], env={"COLUMNS": "200"})
        flat = " ".join(done.output.split())
        assert done.exit_code == 2 and words in flat and "connectors.0" in flat, flat
        uc["connectors"][0] = {k: v for k, v in uc["connectors"][0].items() if k not in change} | {
            "timezone": "Europe/Berlin",
            "delimiter": ";",
            "decimal": ",",
        }
