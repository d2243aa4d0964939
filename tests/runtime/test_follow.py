"""A member that knows only its name and its cloud link runs what the cloud publishes.

The cloud publishes a fleet topology, its model and a python reduction package (a
wheel) on its registry; ``mlexec follow`` on the member builds the bundle, checks it,
runs it, applies a new sampling rate by restarting the pipeline alone, refuses a broken
version and keeps serving the last good one — also after a kill -9 with the cloud gone.
Every record is accounted for by id on the member's predictions and samples topics.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.connectors.broker import LocalBroker
from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.connectors.runner import Checkpoint
from mlexec.connectors.samplestore import open_store
from mlexec.monitoring.monitor import Monitor
from mlexec.operators.testing import make_mlp
from mlexec.topologies import load_topology, plan_topology
from mlexec.topologies.schema import KafkaSettings
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

FEATURES = '''
import polars as pl


def features(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per record: twice its a, and its b."""
    return frame.select("key", "time", (pl.col("a") * 2).alias("a2"), "b")
'''


def _wheel(directory: Path) -> Path:
    """A pure-python wheel of the module ``plantfeat``, as ``pip wheel`` lays it out."""
    path = directory / "plantfeat-0.1-py3-none-any.whl"
    info = "plantfeat-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("plantfeat/__init__.py", FEATURES)
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: plantfeat\nVersion: 0.1\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def _topology(directory: Path, member_bootstrap: str, cloud_bootstrap: str, **changes: Any) -> dict:
    member = directory.parent / "plant-1"  # the member's own state (its --state-dir)
    return {
        "name": "plants",
        "sites": {
            "cloud": {
                "kafka": {"bootstrap": cloud_bootstrap},
                "sample_store": f"chdb://{directory}/cloud-chdb",
                "state_dir": f"{directory}/cloud-state",
            }
        },
        "fleets": {
            "plants": {
                "members": [{"name": "plant-1", "vars": {"bootstrap": member_bootstrap}}],
                "site": {
                    "kafka": {"bootstrap": "${site.bootstrap}"},
                    "sample_store": f"chdb://{member}/chdb",
                    "state_dir": str(member),
                },
                "link": {"target": "cloud", "secure": False},
            }
        },
        "usecases": {
            "vib": {
                "input": {
                    "key": "sensor",
                    "time": "ts",
                    "max_ahead": "3650d",
                    "schema": {"sensor": "str", "ts": "timestamp", "a": "float", "b": "float"},
                },
                "placement": {
                    "connectors": "plants",
                    "dispatch": "plants",
                    "infer": "plants",
                    "store": "cloud",
                    "act": "cloud",
                },
                "dispatch": {"kind": "microbatch", "max_records": 32, "max_wait": "10ms"},
                "reduction": {
                    "kind": "python",
                    "entrypoint": changes.get("entrypoint", "plantfeat:features"),
                    "columns": ["a2", "b"],
                    "package": "plantfeat-0.1-py3-none-any.whl",
                },
                "model": {"name": "mlp", "version": "1", "path": "model.onnx"},
                "sampling": {"rate": changes.get("rate", 0.05)},
            }
        },
    }


def _feed(conf: dict[str, Any], topic: str, start: int, count: int) -> set[str]:
    """``count`` readings with distinct times; the ids the reduction gives them."""
    rows, ids = [], set()
    for i in range(start, start + count):
        record = {"sensor": f"s{i % 5}", "ts": 1_900_000_000_000 + i, "a": i / 7, "b": i % 11}
        rows.append((record["sensor"].encode(), orjson.dumps(record)))
        ids.add(f"vib:{record['sensor']}:{record['ts']}")
    produce_records(conf, topic, rows)
    return ids


def _ids(conf: dict[str, Any], topic: str) -> list[str]:
    return [orjson.loads(v)["id"] for _, v, *_ in read_topic(conf, topic)]


def _samples(conf: dict[str, Any], topic: str) -> dict[str, dict[str, Any]]:
    return {(d := orjson.loads(v))["record_id"]: d for _, v, *_ in read_topic(conf, topic)}


class _Member:
    """``mlexec follow --site plant-1 --cloud …`` as a process tree of its own."""

    def __init__(self, state: Path, cloud: str, env: dict[str, str]) -> None:
        self.state, self.cloud, self.env = state, cloud, env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "mlexec.cli", "follow", "--site", "plant-1"]
        argv += ["--cloud", self.cloud, "--state-dir", str(self.state), "--poll", "0.3"]
        self.process = subprocess.Popen(argv, env=self.env, start_new_session=True)  # noqa: S603

    def status(self) -> dict[str, Any]:
        return Checkpoint(self.state / "follow" / "status.json").load() or {}

    def pid(self, part: str) -> int | None:
        found = Checkpoint(self.state / "up" / "plants-plant-1.json").load() or {"parts": []}
        return next(
            (p["pid"] for p in found["parts"] if p["name"] == part and p["state"] == "running"),
            None,
        )

    def kill(self, sig: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=60)


def test_a_member_follows_the_clouds_topology_and_package_and_keeps_the_last_good(
    tmp_path, monkeypatch
):
    cloud_dir = tmp_path / "cloud"
    cloud_dir.mkdir()
    make_mlp(cloud_dir / "model.onnx", inputs=2, hidden=(4,), seed=1)
    _wheel(cloud_dir)
    monkeypatch.setenv("MLEXEC_PACKAGES_DIR", str(tmp_path / "cloud-packages"))
    runner = CliRunner()
    with contextlib.ExitStack() as stack:
        cloud = stack.enter_context(LocalBroker())
        plant = stack.enter_context(LocalBroker())
        path = cloud_dir / "fleet.yaml"

        def publish(*flags: str, **changes: Any) -> Any:
            path.write_text(
                yaml.safe_dump(_topology(cloud_dir, plant.bootstrap, cloud.bootstrap, **changes))
            )
            return runner.invoke(app, ["fleet", "publish", str(path), *flags])

        done = publish()
        assert done.exit_code == 0, done.output
        assert "published plants v1" in done.output
        plan = plan_topology(load_topology(path))
        uc = plan.usecases["vib"]
        conf = client_config(KafkaSettings(bootstrap=plant.bootstrap))
        ensure_topics(conf, [plan.topic_spec(uc.raw_topic)])

        env = {**os.environ, "MLEXEC_PACKAGES_DIR": str(tmp_path / "plant-packages")}
        member = _Member(tmp_path / "plant-1", cloud.bootstrap, env)
        member.start()
        stack.callback(lambda: member.kill(signal.SIGTERM))
        wait_for(lambda: member.status().get("applied", {}).get("version") == 1, 120, "v1 applied")
        first = _feed(conf, uc.raw_topic, 0, 200)
        wait_for(lambda: first <= set(_ids(conf, uc.predictions_topic)), 120, "v1's predictions")
        samples = _samples(conf, uc.samples_topic)
        assert 0 < len(samples) < len(first), "5 % of the records are sampled"
        for sample in samples.values():  # the package's reduction ran: a2 is twice a
            ts = int(sample["record_id"].rsplit(":", 1)[1]) - 1_900_000_000_000
            assert sample["a2"] == pytest.approx(2 * ts / 7)
        mirror, pipeline = member.pid("mirror plant-1:cloud"), member.pid("pipeline")
        assert mirror and pipeline

        # a new sampling rate: the pipeline restarts on it, the mirror keeps running
        done = publish(rate=1.0)
        assert "published plants v2" in done.output, done.output
        wait_for(lambda: member.status().get("applied", {}).get("version") == 2, 120, "v2 applied")
        v2 = plan_topology(load_topology(path), str(path)).digest  # what plant-1 serves next
        parts = member.status()["applied"]["parts"]
        assert parts["restarted"] == ["pipeline"] and parts["kept"] == ["mirror plant-1:cloud"]
        wait_for(lambda: member.pid("pipeline") not in (None, pipeline), 60, "a new pipeline")
        assert member.pid("mirror plant-1:cloud") == mirror
        pipeline = member.pid("pipeline")
        second = _feed(conf, uc.raw_topic, 200, 200)
        wait_for(lambda: second <= set(_samples(conf, uc.samples_topic)), 120, "every v2 sample")

        # a broken version: refused here before publishing, and by the member when forced
        done = publish(entrypoint="plantfeat:missing")
        assert done.exit_code != 0 and "not published" in done.output
        assert "no function 'missing'" in done.output
        done = publish("--force", entrypoint="plantfeat:missing")
        assert "published plants v3" in done.output, done.output
        wait_for(lambda: member.status().get("refused", {}).get("version") == 3, 120, "v3 refused")
        status = member.status()
        assert "no function 'missing'" in status["refused"]["reason"]
        assert status["applied"]["version"] == 2
        third = _feed(conf, uc.raw_topic, 400, 200)
        wait_for(lambda: third <= set(_samples(conf, uc.samples_topic)), 120, "v2 serving on")
        assert member.pid("pipeline") == pipeline and member.pid("mirror plant-1:cloud") == mirror

        # the member told the cloud what it applied and what it refused
        cloud_conf = client_config(KafkaSettings(bootstrap=cloud.bootstrap))

        def said() -> list[tuple[str, float]]:  # as far as the mirror has carried them
            topic = "plant-1.mlexec.alerts"
            reports = [orjson.loads(v) for _, v, *_ in read_topic(cloud_conf, topic)]
            return [(r["severity"], r["value"]) for r in reports if r.get("statistic") == "desired"]

        wait_for(lambda: len(said()) >= 3, 120, "the member's three reports in the cloud")
        assert said() == [("info", 1.0), ("info", 2.0), ("warning", 3.0)]

        # the cloud files them; fleet status shows each member's last word
        with open_store(plan.topology.sites["cloud"].sample_store) as store:
            monitor = Monitor(plan, "cloud", store)
            monitor.prepare()

            def heard() -> dict[str, Any] | None:
                monitor.ingest()
                listed = runner.invoke(app, ["fleet", "status", str(path), "--json"])
                (row,) = orjson.loads(listed.output)["members"]
                seen[:] = [row]
                return row if row["topology"] == v2 and row["desired"] else None

            seen: list[Any] = []
            try:
                row = wait_for(heard, 60, "plant-1's heartbeat of v2 in the cloud")
            except AssertionError as exc:
                raise AssertionError(f"{v2}: {seen}") from exc
        # its bundle, a copy in another directory, has the digest of the cloud's v2
        assert row["current_topology"] is False  # the cloud's file is v3 now
        assert row["desired"].startswith("refused v3 (serving v2): ")
        assert "missing" in row["desired"]

        # kill -9 of the whole member, the cloud gone: it comes back on v2 from its state
        member.kill(signal.SIGKILL)
        cloud.stop()
        member.start()
        wait_for(lambda: member.pid("pipeline") is not None, 120, "the pipeline back on v2")
        fourth = _feed(conf, uc.raw_topic, 600, 200)
        wait_for(lambda: fourth <= set(_samples(conf, uc.samples_topic)), 120, "v2 after kill -9")

        every = first | second | third | fourth
        assert set(_ids(conf, uc.predictions_topic)) == every  # none lost, none made up
        assert set(_samples(conf, uc.samples_topic)) - first == second | third | fourth
        assert member.status()["applied"]["version"] == 2
