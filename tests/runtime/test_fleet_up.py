"""Four members and a cloud as an operator runs them: a broker and an ``mlexec up`` each.

Every site is its own process tree (``mlexec up --site …``: supervisor, pipeline,
mirror; on the cloud the store with its monitoring, and outputs). The cloud's
monitoring steps the rollout on the wall clock, so the soak is short here. Every
member's samples are accounted for by (site, record) in the cloud's one table.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.connectors.broker import LocalBroker
from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.connectors.samplestore import open_store
from mlexec.connectors.storeservice import find_service
from mlexec.operators.testing import make_mlp
from mlexec.topologies import load_topology, plan_topology
from tests.topologies.test_fleets import fleet_doc
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

MEMBERS = ("plant-1", "plant-2", "plant-3", "plant-4")
EU = ("plant-1", "plant-2")
BATCH = 200


class Up:
    """``mlexec up TOPOLOGY --site S`` as a process tree of its own."""

    def __init__(self, path: Path, site: str) -> None:
        argv = [sys.executable, "-m", "mlexec.cli", "up", str(path), "--site", site]
        env = {**os.environ, "MLEXEC_LOG": "WARNING"}
        self.process = subprocess.Popen(argv, env=env, start_new_session=True)  # noqa: S603

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=120)


def _cli(*args: str) -> Any:
    done = CliRunner().invoke(app, list(args))
    assert done.exit_code == 0, done.output
    return done.output


def test_four_members_and_a_cloud_each_under_mlexec_up_roll_a_version_out_in_waves(tmp_path):
    with contextlib.ExitStack() as stack:
        cloud = stack.enter_context(LocalBroker())
        at = {m: stack.enter_context(LocalBroker()) for m in MEMBERS}
        rollout = {"waves": [{"labels": {"region": "eu"}}], "soak": "30s", "min_samples": 100}
        doc = fleet_doc(tmp_path, rollout=rollout)
        doc["sites"]["cloud"]["kafka"]["bootstrap"] = cloud.bootstrap
        doc["usecases"]["vib"]["monitoring"] = {"every": "2s"}
        csv = "name,labels,bootstrap\n" + "".join(
            f"{m},region={'eu' if m in EU else 'us'},{at[m].bootstrap}\n" for m in MEMBERS
        )
        (tmp_path / "plants.csv").write_text(csv)
        path = tmp_path / "fleet.yaml"
        path.write_text(yaml.safe_dump(doc))
        plan = plan_topology(load_topology(path))
        uc = plan.usecases["vib"]
        confs = {m: client_config(plan.topology.sites[m].kafka) for m in MEMBERS}
        fed = dict.fromkeys(MEMBERS, 0)
        for member in MEMBERS:
            ensure_topics(confs[member], [plan.topic_spec(uc.raw_topic)])

        def feed(member: str) -> None:
            start, rows = fed[member], []
            for i in range(start, start + BATCH):
                record = {
                    "sensor": f"s{i % 5}",
                    "ts": 1_900_000_000_000 + i,
                    "a": i / 7,
                    "b": i % 11,
                }
                rows.append((record["sensor"].encode(), orjson.dumps(record)))
            produce_records(confs[member], uc.raw_topic, rows)
            fed[member] += BATCH

        def served() -> dict[tuple[str, str], list[int]]:
            """(site, version) → the readings it scored, as the cloud's table has them."""
            with open_store(plan.topology.sites["cloud"].sample_store) as store:
                rows = store.query(
                    f"SELECT site, model_version, event_time FROM mlexec.{uc.table} FINAL"
                )
            out: dict[tuple[str, str], list[int]] = {}
            for site, version, t in rows.iter_rows():
                out.setdefault((site, version), []).append(
                    int(t.timestamp() * 1000) - 1_900_000_000_000
                )
            return {k: sorted(v) for k, v in out.items()}

        def landed() -> dict[tuple[str, str], list[int]] | None:
            found = served()
            counts = {m: sum(len(v) for (s, _), v in found.items() if s == m) for m in MEMBERS}
            return found if all(counts[m] >= fed[m] for m in MEMBERS) else None

        def rollout_now() -> dict[str, Any]:
            return orjson.loads(_cli("model", "fleet-status", str(path), "-u", "vib", "--json"))

        ups = {site: Up(path, site) for site in ("cloud", *MEMBERS)}
        stack.callback(lambda: [u.stop() for u in ups.values() if u.process.poll() is None])
        store_dir = Path(plan.topology.sites["cloud"].sample_store.removeprefix("chdb://"))
        wait_for(lambda: find_service(store_dir.resolve()), 180, "the cloud's store process")
        for member in MEMBERS:
            feed(member)
        first = wait_for(landed, 240, "every member's first samples in the cloud")
        assert {k: v for k, v in first.items()} == {(m, "1"): list(range(BATCH)) for m in MEMBERS}
        offline = lambda: orjson.loads(  # noqa: E731
            _cli("fleet", "status", str(path), "--offline-after", "25", "--json")
        )
        wait_for(
            lambda: (
                [(m["state"], m["link_backlog"] is not None) for m in offline()["members"]]
                == [("online", True)] * 4
            ),
            120,
            "every member online in fleet status, its link's backlog known",
        )

        # plant-4 goes offline; version 2 is rolled out: the eu wave first
        ups["plant-4"].stop()
        shutil.copy(tmp_path / "model.onnx", tmp_path / "v2.onnx")  # retrained, the same
        _cli(
            "model", "publish", str(path), str(tmp_path / "v2.onnx"), "-u", "vib", "--version", "2"
        )
        _cli("model", "rollout", str(path), "-u", "vib", "--version", "2")
        for member in MEMBERS[:3]:
            feed(member)
        second = wait_for(landed, 240, "the first wave's samples")
        assert rollout_now()["rollout"]["wave"] == 1, "the first wave still soaks"
        assert second[("plant-1", "2")] == second[("plant-2", "2")] == list(range(BATCH, 2 * BATCH))
        assert second[("plant-3", "1")] == list(range(2 * BATCH))  # not reached yet
        wait_for(
            lambda: [m["state"] for m in offline()["members"]] == ["online"] * 3 + ["offline"],
            120,
            "plant-4 offline in fleet status",
        )

        wait_for(lambda: rollout_now()["rollout"]["wave"] == 2, 180, "the second wave")
        for member in MEMBERS[:3]:
            feed(member)
        third = wait_for(landed, 240, "the second wave's samples")
        assert third[("plant-3", "2")] == list(range(2 * BATCH, 3 * BATCH))
        status = {m["member"]: m for m in rollout_now()["members"]}
        assert (status["plant-4"]["meant"], status["plant-4"]["caught_up"]) == ("2", False)
        wait_for(lambda: rollout_now()["rollout"]["state"] == "done", 180, "the fleet on 2")

        # plant-4 returns: it gets version 2, scores on it and says so
        ups["plant-4"] = Up(path, "plant-4")
        feed("plant-4")
        fourth = wait_for(landed, 240, "plant-4's samples after it returned")
        assert fourth[("plant-4", "2")] == list(range(BATCH, 2 * BATCH))
        wait_for(
            lambda: all(m["caught_up"] for m in rollout_now()["members"]), 120, "all caught up"
        )

        # a version far from 2: its first wave drifts and it rolls back by itself
        make_mlp(tmp_path / "v3.onnx", inputs=2, hidden=(4,), seed=2)
        _cli(
            "model", "publish", str(path), str(tmp_path / "v3.onnx"), "-u", "vib", "--version", "3"
        )
        _cli("model", "rollout", str(path), "-u", "vib", "--version", "3")
        for member in MEMBERS:  # the others on 2, over the same span: what 3 is judged against
            feed(member)
        wait_for(lambda: rollout_now()["rollout"]["state"] == "rolled back", 180, "a rollback")
        assert "(KS) from 2's" in rollout_now()["rollout"]["message"]
        for member in EU:
            feed(member)
        fifth = wait_for(landed, 240, "the eu members' samples after the rollback")
        assert fifth[("plant-1", "2")][-BATCH:] == list(range(4 * BATCH, 5 * BATCH))
        assert fifth[("plant-1", "3")] == list(range(3 * BATCH, 4 * BATCH))

        # every reading of every member is in the cloud's one table once
        for member in MEMBERS:
            got = sorted(i for (m, _), rows in fifth.items() if m == member for i in rows)
            assert got == list(range(fed[member])), member
