"""A rollout in waves on a fleet on loopback: four members and a cloud, a broker each.

The cloud publishes a version and rolls it out in two waves (``region=eu``, then the
rest); each member follows the registry mirrored down to it, and its samples and
heartbeats come up. A member offline through the rollout catches up when it returns; a
version whose predictions are far from the one before's is rolled back from its first
wave by itself; a pinned member is left alone. Which version served which record is
read back from the cloud's one samples table, by (site, record id).
"""

from __future__ import annotations

import contextlib
import shutil
from datetime import datetime, timedelta
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.connectors.broker import LocalBroker
from mlexec.connectors.kafka import client_config, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.connectors.samplestore import open_store
from mlexec.lifecycle.reaction import LifeCycleReaction
from mlexec.lifecycle.registry import current_routing, publish_model, read_registry
from mlexec.lifecycle.rollout import pin, rollout_of, rollout_status, start_rollout, step_rollout
from mlexec.monitoring.columns import now_utc
from mlexec.monitoring.dashboard import Dashboard, DashboardData
from mlexec.monitoring.monitor import Monitor
from mlexec.operators.testing import make_mlp
from mlexec.runtime.mirror import prepare_mirror, run_mirror
from mlexec.runtime.run import prepare_resources, prepare_site, run_pipeline, run_store
from mlexec.topologies import load_topology, plan_topology
from mlexec.topologies.plan import ALERTS_TOPIC
from tests.monitoring.test_dashboard import _browse
from tests.topologies.test_fleets import fleet_doc

pytestmark = pytest.mark.integration

MEMBERS = ("plant-1", "plant-2", "plant-3", "plant-4")
EU = ("plant-1", "plant-2")


class Fleet:
    """The fleet of the test: feed a member, let it score and talk to the cloud."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        self.uc = plan.usecases["vib"]
        self.fed: dict[str, int] = dict.fromkeys(MEMBERS, 0)
        self.cloud_run = prepare_site(plan, "cloud")
        prepare_resources(self.cloud_run)
        self.cloud = client_config(plan.topology.sites["cloud"].kafka)
        self.store_url = plan.topology.sites["cloud"].sample_store
        for member in MEMBERS:
            prepare_resources(prepare_site(plan, member))
        with open_store(self.store_url) as store:
            Monitor(plan, "cloud", store).prepare()

    def conf(self, member: str) -> dict[str, Any]:
        return client_config(self.plan.topology.sites[member].kafka)

    def score(self, member: str, count: int = 240) -> None:
        """New readings on the member; models come down, it scores, its samples go up."""
        start = self.fed[member]
        rows = []
        for i in range(start, start + count):
            record = {"sensor": f"s{i % 5}", "ts": 1_900_000_000_000 + i, "a": i / 7, "b": i % 11}
            rows.append((record["sensor"].encode(), orjson.dumps(record)))
        produce_records(self.conf(member), self.uc.raw_topic, rows)
        self.fed[member] += count
        run_mirror(prepare_mirror(self.plan, f"{member}:cloud", once=True), once=True)
        run_pipeline(prepare_site(self.plan, member), until_end=True)
        run_mirror(prepare_mirror(self.plan, f"{member}:cloud", once=True), once=True)

    def gather(self) -> None:
        """The cloud stores what came up and files the members' heartbeats."""
        run_store(self.cloud_run, until_end=True)
        with open_store(self.store_url) as store:
            Monitor(self.plan, "cloud", store).ingest()

    def served(self) -> dict[tuple[str, str], set[int]]:
        """(site, model version) → the readings' indices it scored, from the cloud's table."""
        with open_store(self.store_url) as store:
            rows = store.query(
                f"SELECT site, model_version, key, event_time FROM mlexec.{self.uc.table} FINAL"
            )
        out: dict[tuple[str, str], set[int]] = {}
        for site, version, _, t in rows.iter_rows():
            index = int(t.timestamp() * 1000) - 1_900_000_000_000
            out.setdefault((site, version), set()).add(index)
        return out

    def step(self, at: datetime) -> str | None:
        with open_store(self.store_url) as store:
            monitor = Monitor(self.plan, "cloud", store)
            output = LifeCycleReaction(monitor).prediction_column(self.uc)
            return step_rollout(self.plan, store, self.cloud, "cloud", self.uc, output, at)

    def status(self, offline_after: timedelta) -> dict[str, Any]:
        with open_store(self.store_url) as store:
            _, members = rollout_status(
                self.plan, read_registry(self.cloud), store, self.uc, now_utc(), offline_after
            )
        return {m.member: m for m in members}


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov–Smirnov distance, on every value."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    fa = np.searchsorted(a, points, side="right") / len(a)
    fb = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def _plan(tmp_path, brokers: contextlib.ExitStack) -> Any:
    cloud = brokers.enter_context(LocalBroker())
    at = {m: brokers.enter_context(LocalBroker()) for m in MEMBERS}
    doc = fleet_doc(
        tmp_path,
        rollout={"waves": [{"labels": {"region": "eu"}}], "soak": "10m", "min_samples": 100},
    )
    doc["sites"]["cloud"]["kafka"]["bootstrap"] = cloud.bootstrap
    doc["usecases"]["vib"]["monitoring"] = {}  # the dashboard shows monitored use cases
    csv = "name,labels,bootstrap\n" + "".join(
        f"{m},region={'eu' if m in EU else 'us'},{at[m].bootstrap}\n" for m in MEMBERS
    )
    (tmp_path / "plants.csv").write_text(csv)
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    return plan_topology(load_topology(path))


def test_a_version_reaches_the_fleet_in_waves_and_a_drifting_one_rolls_back_by_itself(tmp_path):
    with contextlib.ExitStack() as brokers:
        fleet = Fleet(_plan(tmp_path, brokers))
        uc = fleet.uc
        for member in MEMBERS:
            fleet.score(member)
        fleet.gather()
        before_rollout = now_utc()  # plant-4 is not heard from again until it returns

        shutil.copy(tmp_path / "model.onnx", tmp_path / "v2.onnx")  # retrained, the same
        publish_model(fleet.plan, fleet.cloud, uc, tmp_path / "v2.onnx", "2")
        t0 = now_utc()
        rollout = start_rollout(fleet.plan, fleet.cloud, uc, "2", now_ms=int(t0.timestamp() * 1000))
        assert rollout.waves == (EU, ("plant-3", "plant-4"))

        for member in MEMBERS[:3]:  # plant-4 is offline through the rollout
            fleet.score(member)
        fleet.gather()
        served = fleet.served()
        new = {m: served.get((m, "2"), set()) for m in MEMBERS}
        assert new == {"plant-1": set(range(240, 480)), "plant-2": set(range(240, 480)),
                       "plant-3": set(), "plant-4": set()}  # fmt: skip
        assert served[("plant-3", "1")] == set(range(480))  # wave 2 has not started

        assert fleet.step(t0 + timedelta(minutes=1)) is None  # soaking
        moved = fleet.step(t0 + timedelta(minutes=11))
        assert moved is not None and moved.startswith("wave 2 of 2")
        assert rollout_of(read_registry(fleet.cloud), uc.name).wave == 1

        for member in MEMBERS[:3]:
            fleet.score(member)
        fleet.gather()
        assert fleet.served()[("plant-3", "2")] == set(range(480, 720))
        # plant-4 should serve 2 and does not: offline since before the rollout
        status = fleet.status(offline_after=now_utc() - before_rollout)
        assert [(m, status[m].state, status[m].meant, status[m].caught_up) for m in MEMBERS] == [
            ("plant-1", "online", "2", True),
            ("plant-2", "online", "2", True),
            ("plant-3", "online", "2", True),
            ("plant-4", "offline", "2", False),
        ]
        assert status["plant-4"].serves == "1"
        result = CliRunner().invoke(
            app, ["model", "fleet-status", str(tmp_path / "fleet.yaml"), "-u", "vib", "--json"]
        )
        assert result.exit_code == 0, result.output
        listed = orjson.loads(result.output)
        assert listed["rollout"]["wave"] == 2
        assert [m["caught_up"] for m in listed["members"]] == [True, True, True, False]

        done = fleet.step(t0 + timedelta(minutes=22))
        assert done is not None and "serves the fleet" in done
        registry = read_registry(fleet.cloud)
        assert current_routing(registry, uc).production == "2"
        assert not [k for k in registry.routings if "@" in k]  # members follow the fleet again

        fleet.score("plant-4")  # back: it gets what it missed, and says so
        fleet.gather()
        assert fleet.served()[("plant-4", "2")] == set(range(240, 480))
        assert fleet.served()[("plant-4", "1")] == set(range(240))
        status = fleet.status(offline_after=timedelta(minutes=5))
        assert all(status[m].caught_up and status[m].state == "online" for m in MEMBERS)

        # a version far from 2, while plant-2 has its own model: rolled back from wave 1
        make_mlp(tmp_path / "v3.onnx", inputs=2, hidden=(4,), seed=2)
        publish_model(fleet.plan, fleet.cloud, uc, tmp_path / "v3.onnx", "3")
        shutil.copy(tmp_path / "model.onnx", tmp_path / "tuned.onnx")
        publish_model(fleet.plan, fleet.cloud, uc, tmp_path / "tuned.onnx", "tuned-2")
        pin(fleet.plan, fleet.cloud, uc, "plant-2", "tuned-2")  # its own model, whatever rolls

        t1 = now_utc()
        rollout = start_rollout(fleet.plan, fleet.cloud, uc, "3", now_ms=int(t1.timestamp() * 1000))
        assert rollout.waves == (("plant-1",), ("plant-3", "plant-4"))  # plant-2 is pinned
        for member in MEMBERS:
            fleet.score(member)
        fleet.gather()
        served = fleet.served()
        assert served[("plant-1", "3")] == set(range(720, 960))
        assert served[("plant-2", "tuned-2")] == set(range(720, 960))
        assert ("plant-3", "3") not in served

        why = fleet.step(t1 + timedelta(minutes=1))  # before the soak ends: it drifted
        assert why is not None and "(KS) from 2's" in why and "rolled back" in why
        registry = read_registry(fleet.cloud)
        back = rollout_of(registry, uc.name)
        assert back is not None and back.state == "rolled back"
        routing = current_routing(registry, uc)
        assert (routing.production, "3" in routing.retired) == ("2", True)
        assert registry.routing_for(uc.name, "plant-1") == routing
        assert registry.routing_for(uc.name, "plant-2").production == "tuned-2"
        assert fleet.step(t1 + timedelta(minutes=30)) is None  # it stays rolled back
        events = [orjson.loads(v) for _, v, *_ in read_topic(fleet.cloud, ALERTS_TOPIC)]
        assert any(e["kind"] == "lifecycle" and "rolled back" in e["message"] for e in events)

        for member in EU:
            fleet.score(member)
        fleet.gather()
        served = fleet.served()
        assert served[("plant-1", "2")] == set(range(240, 720)) | set(range(960, 1200))
        assert served[("plant-2", "tuned-2")] == set(range(720, 1200))
        status = fleet.status(offline_after=timedelta(minutes=5))
        assert [(status[m].serves, status[m].pinned) for m in MEMBERS] == [
            ("2", False),
            ("tuned-2", True),
            ("2", False),
            ("2", False),
        ]

        # every record each member read is in the cloud's table once, by its version
        for member in MEMBERS:
            got = [i for (m, _), rows in served.items() if m == member for i in rows]
            assert sorted(got) == list(range(fleet.fed[member]))

        # the dashboard's fleet view: every member by state, its samples and its drift
        with open_store(fleet.store_url) as store:
            board = Dashboard(DashboardData(fleet.plan, "cloud", store, hours=1e5), port=0).start()
            try:
                assert httpx.get(f"{board.url}api/overview", timeout=10).json()["fleets"] == ["vib"]
                view = httpx.get(f"{board.url}api/fleet?name=vib", timeout=30).json()
                dom = _browse(board.url, "--dump-dom")
            finally:
                board.close()
        rows = {r["member"]: r for r in view["members"]}
        assert [rows[m]["samples"] for m in MEMBERS] == [fleet.fed[m] for m in MEMBERS]
        assert [rows[m]["state"] for m in MEMBERS] == ["online"] * 4
        assert rows["plant-2"]["serves"] == "vib tuned-2"
        # each member's distance from the fleet is the KS of its predictions from everyone's
        with open_store(fleet.store_url) as store:
            y = store.query(f"SELECT site, y FROM mlexec.{uc.table} FINAL")
        everyone = y["y"].to_numpy()
        for m in MEMBERS:
            own = y.filter(y["site"] == m)["y"].to_numpy()
            exact = _ks(own, everyone)
            assert abs(rows[m]["distance"] - exact) < 0.05, (m, rows[m]["distance"], exact)
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert 'data-members="4"' in dom.stdout
        assert dom.stdout.count('class="tile online') == 4
        assert 'id="fleet-member" data-member="plant-1"' in dom.stdout
        # a new rollout waits for no one, and an unknown version is refused before it starts
        result = CliRunner().invoke(
            app, ["model", "rollout", str(tmp_path / "fleet.yaml"), "-u", "vib", "--version", "9"]
        )
        assert result.exit_code != 0 and "no published version 9" in result.output
