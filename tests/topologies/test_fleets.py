"""Fleets: a site template and an inventory become sites; stages placed on a fleet run on each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.operators.testing import make_mlp
from mlexec.topologies import TopologyError, load_topology, plan_topology
from mlexec.topologies.plan import ALERTS_TOPIC, METRICS_TOPIC, MODELS_TOPIC
from mlexec.topologies.render import render_mm2


def fleet_doc(tmp: Path, *, inventory: str | None = "plants.csv", **fleet: Any) -> dict[str, Any]:
    make_mlp(tmp / "model.onnx", inputs=2, hidden=(4,), seed=1)
    return {
        "name": "plants",
        "sites": {
            "cloud": {
                "kafka": {"bootstrap": "127.0.0.1:9000"},
                "sample_store": f"chdb://{tmp}/cloud-chdb",
                "state_dir": f"{tmp}/cloud-state",
            }
        },
        "fleets": {
            "plants": {
                **({"inventory": inventory} if inventory else {}),
                "site": {
                    "kafka": {"bootstrap": "${site.bootstrap}"},
                    "sample_store": f"chdb://{tmp}/${{site.name}}-chdb",
                    "state_dir": f"{tmp}/${{site.name}}-state",
                },
                "link": {"target": "cloud", "secure": False},
                **fleet,
            }
        },
        "usecases": {
            "vib": {
                "input": {
                    "key": "sensor",
                    "time": "ts",
                    "max_ahead": "3650d",  # the tests' event times are in 2030
                    "schema": {"sensor": "str", "ts": "timestamp", "a": "float", "b": "float"},
                },
                "placement": {
                    "connectors": "plants",
                    "dispatch": "plants",
                    "infer": "plants",
                    "store": "cloud",
                    "act": "cloud",
                },
                "dispatch": {"kind": "microbatch", "max_records": 16, "max_wait": "10ms"},
                "model": {"name": "mlp", "version": "1", "path": "model.onnx"},
                "sampling": {"rate": 1.0},
                "outputs": [{"kind": "file", "path": str(tmp / "alarms")}],
            }
        },
    }


def _write(tmp: Path, doc: dict[str, Any], csv: str | None = None) -> Path:
    if csv is not None:
        (tmp / "plants.csv").write_text(csv)
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


CSV = "name,labels,bootstrap\nplant-1,region=eu,127.0.0.1:9001\nplant-2,region=us;line=2,127.0.0.1:9002\n"


def test_every_member_is_a_site_with_its_own_values_and_a_link_to_the_cloud(tmp_path):
    inline = [{"name": "plant-3", "labels": {"region": "eu"}, "vars": {"bootstrap": "h:3"}}]
    topology = load_topology(_write(tmp_path, fleet_doc(tmp_path, members=inline), CSV))
    assert sorted(topology.sites) == ["cloud", "plant-1", "plant-2", "plant-3"]
    assert topology.sites["plant-2"].kafka.bootstrap == "127.0.0.1:9002"
    assert topology.sites["plant-3"].sample_store == f"chdb://{tmp_path}/plant-3-chdb"
    assert [(lk.source, lk.target) for lk in topology.links] == [
        ("plant-1", "cloud"),
        ("plant-2", "cloud"),
        ("plant-3", "cloud"),
    ]
    fleet = topology.fleets["plants"]
    assert fleet.names == ("plant-1", "plant-2", "plant-3")
    assert fleet.members[1].labels == {"region": "us", "line": "2"}
    assert topology.fleet_of("plant-2") == "plants" and topology.fleet_of("cloud") is None


def test_a_member_runs_the_fleets_stages_and_the_cloud_reads_every_members_copy(tmp_path):
    plan = plan_topology(load_topology(_write(tmp_path, fleet_doc(tmp_path), CSV)))
    (seen,) = plan.usecases_at("plant-2")
    assert dict(seen.sites) == {
        "connectors": "plant-2",
        "dispatch": "plant-2",
        "infer": "plant-2",
        "store": "cloud",
        "act": "cloud",
    }
    assert [uc.name for uc in plan.chosen_at("plant-1", stage="infer")] == ["vib"]
    assert plan.chosen_at("cloud", stage="infer") == []
    uc = plan.usecases["vib"]
    assert uc.read_names(uc.samples_topic, "infer", "store") == (
        "plant-1.vib.samples",
        "plant-2.vib.samples",
    )
    with pytest.raises(ValueError, match="from 2 fleet members"):
        uc.read_name(uc.samples_topic, "infer", "store")
    assert uc.site_of_topic("plant-2.vib.samples", uc.samples_topic, "infer") == "plant-2"
    assert uc.site_of_topic("plant-9.vib.samples", uc.samples_topic, "infer") is None
    assert uc.site_of_topic("vib.samples", uc.samples_topic, "infer") is None  # the cloud's own
    cloud_topics = {t.name for t in plan.topics_at("cloud")}
    assert {"plant-1.vib.samples", "plant-2.vib.predictions"} <= cloud_topics
    member_topics = {t.name for t in plan.topics_at("plant-1")}
    assert {"vib.raw", "vib.samples", "vib.predictions"} <= member_topics
    assert not any(t.startswith("plant-") for t in member_topics)
    # each member's link carries its own samples and predictions up, models down
    (up, down) = [t for t in plan.transfers() if "plant-2" in (t.source, t.target)]
    assert set(up.topics) == {"vib.samples", "vib.predictions", ALERTS_TOPIC, METRICS_TOPIC}
    assert down.topics == (MODELS_TOPIC,)
    props = render_mm2(plan, plan.topology.links[1])
    assert "clusters = plant-2, cloud" in props


def test_a_new_member_in_the_inventory_is_a_new_source_of_the_cloud(tmp_path):
    path = _write(tmp_path, fleet_doc(tmp_path), CSV)
    before = plan_topology(load_topology(path)).usecases["vib"]
    (tmp_path / "plants.csv").write_text(CSV + "plant-4,,127.0.0.1:9004\n")
    after = plan_topology(load_topology(path)).usecases["vib"]
    assert after.read_names(after.samples_topic, "infer", "store") == (
        *before.read_names(before.samples_topic, "infer", "store"),
        "plant-4.vib.samples",
    )


@pytest.mark.parametrize(
    ("csv", "fleet", "expected"),
    [
        ("name,bootstrap\nplant-1,a:1\nplant-1,a:2\n", {},
         r"plants.csv:3: member 'plant-1' is listed twice \(first at .*plants.csv:2\)"),
        ("name,bootstrap\ncloud,a:1\n", {}, "member 'cloud' has the name of a site or fleet"),
        ("name,bootstrap\nplant 1,a:1\n", {}, r"plants.csv:2: name: a site name"),
        ("name,labels,bootstrap\nplant-1,eu,a:1\n", {}, r"plants.csv:2: labels as key=value"),
        ("host,bootstrap\nplant-1,a:1\n", {}, r"plants.csv:1: an inventory CSV with a 'name' column"),
        ("name,bootstrap\nplant-1,a:1,extra\n", {}, r"plants.csv:2: more values than the header"),
        ("name\nplant-1\n", {},
         r"fleets.plants.site.kafka.bootstrap: \$\{site.bootstrap\}: member 'plant-1' has no "
         "variable 'bootstrap'"),
        (CSV, {"inventory": "nowhere.csv"}, r"fleets.plants.inventory: .*nowhere.csv: cannot read the inventory"),
        (CSV, {"link": {"target": "mars"}}, r"fleets.plants.link.target: expected a site of \['cloud'\], found 'mars'"),
    ],
)  # fmt: skip
def test_a_broken_fleet_is_refused_naming_the_file_line_or_yaml_path(
    tmp_path, csv, fleet, expected
):
    path = _write(tmp_path, fleet_doc(tmp_path, **fleet), csv)
    with pytest.raises(TopologyError, match=expected) as caught:
        plan_topology(load_topology(path))
    assert str(path) in str(caught.value)


def test_a_bad_template_is_named_once_at_the_template_not_per_member(tmp_path):
    doc = fleet_doc(tmp_path)
    doc["fleets"]["plants"]["site"]["sample_store"] = "postgres://nope"
    with pytest.raises(TopologyError) as caught:
        load_topology(_write(tmp_path, doc, CSV))
    lines = str(caught.value).splitlines()
    assert (
        len(lines) == 1
        and "fleets.plants.site.sample_store: expected a sample-store URL" in lines[0]
    )


def test_a_fleet_runs_the_front_of_a_use_case_on_every_member_or_not_at_all(tmp_path):
    doc = fleet_doc(tmp_path)
    doc["usecases"]["vib"]["placement"]["infer"] = "cloud"  # dispatch on members, infer above
    with pytest.raises(TopologyError, match="a fleet runs a use case's connectors, dispatch"):
        plan_topology(load_topology(_write(tmp_path, doc, CSV)))
    doc["usecases"]["vib"]["placement"]["infer"] = "plants"
    doc["usecases"]["vib"]["placement"]["store"] = "plants"  # each member keeps its samples
    plan = plan_topology(load_topology(_write(tmp_path, doc, CSV)))
    assert [uc.name for uc in plan.chosen_at("plant-1", stage="store")] == ["vib"]
    doc["usecases"]["vib"]["placement"]["store"] = "nowhere"
    with pytest.raises(
        TopologyError, match=r"a site or fleet of \['cloud', 'plant-1', 'plant-2', 'plants'\]"
    ):
        load_topology(_write(tmp_path, doc, CSV))


def test_validate_prints_the_fleet_compactly(tmp_path):
    rows = "".join(
        f"plant-{i:03d},region={'eu' if i % 3 else 'us'},127.0.0.1:{9000 + i}\n"
        for i in range(1, 41)
    )
    path = _write(tmp_path, fleet_doc(tmp_path), "name,labels,bootstrap\n" + rows)
    result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "plants: 40 members" in out and "e.g. plant-001" in out
    assert "differ in: kafka.bootstrap, sample_store, state_dir" in out
    assert "region: eu 27, us 13" in out
    assert "plant-017" not in out  # members are counted, not listed
    assert "<member>.vib.samples" in out and "× 40" in out


def test_up_on_a_member_starts_its_pipeline_and_its_mirror_and_the_cloud_its_store(tmp_path):
    from mlexec.runtime.supervisor import Supervisor

    path = _write(tmp_path, fleet_doc(tmp_path), CSV)
    plan = plan_topology(load_topology(path))
    member = Supervisor(plan, "plant-2", path)
    assert sorted(member.parts) == ["mirror plant-2:cloud", "pipeline"]
    cloud = Supervisor(plan, "cloud", path)
    assert sorted(cloud.parts) == ["act", "store"]
    result = CliRunner().invoke(app, ["status", str(path), "--site", "plant-9"])
    assert result.exit_code != 0 and "no site 'plant-9'" in result.output


def test_compose_renders_what_every_member_runs_and_docker_compose_accepts_it(tmp_path):
    import shutil
    import subprocess

    path = _write(tmp_path, fleet_doc(tmp_path), CSV)
    out = tmp_path / "deploy"
    result = CliRunner().invoke(app, ["render", str(path), "compose", "--out", str(out)])
    assert result.exit_code == 0, result.output
    compose = yaml.safe_load((out / "compose-plants.yml").read_text())
    assert set(compose["services"]) == {"kafka", "pipeline", "mirror-maker"}  # act: the cloud
    assert compose["services"]["pipeline"]["command"][:3] == [
        "mlexec",
        "run",
        "/etc/mlexec/fleet.yaml",
    ]
    env = (out / "plants" / "plant-2.env").read_text().splitlines()
    assert env[:2] == ["COMPOSE_PROJECT_NAME=mlexec-plant-2", "MLEXEC_SITE=plant-2"]
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (make test installs it)")
    for member in ("plant-1", "plant-2"):
        shutil.copy(path, out / "fleet.yaml")
        shutil.copy(tmp_path / "plants.csv", out / "plants.csv")
        done = subprocess.run(
            ["docker-compose", "--env-file", f"plants/{member}.env", "-f", "compose-plants.yml", "config"],
            capture_output=True, text=True, timeout=60, cwd=out,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        rendered = yaml.safe_load(done.stdout)
        assert rendered["services"]["pipeline"]["command"][-1] == member
        mm2 = rendered["services"]["mirror-maker"]["command"][-1]
        assert mm2 == f"/etc/mm2/mm2-{member}-cloud.properties"


def test_the_example_fleet_plans_renders_and_keeps_its_secrets_out(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[2] / "topologies"
    secret = "pl4nt-s3cret"
    monkeypatch.setenv("MLEXEC_PLANT_PASSWORD", secret)
    monkeypatch.setenv("MLEXEC_CLOUD_PASSWORD", secret)
    plan = plan_topology(load_topology(root / "fleet.yaml"))
    fleet = plan.topology.fleets["plants"]
    assert len(fleet.members) == 6 and fleet.members[3].labels == {"region": "us", "line": "press"}
    sasl = plan.topology.sites["plant-004"].kafka.security.sasl
    assert sasl is not None and sasl.username == "plant-004"
    uc = plan.usecases["presses"]
    assert len(uc.read_names(uc.samples_topic, "infer", "store")) == 6
    out = tmp_path / "deploy"
    for what in ("compose", "mm2"):
        result = CliRunner().invoke(
            app, ["render", str(root / "fleet.yaml"), what, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert secret not in result.output
    assert secret not in (out / "compose-plants.yml").read_text()  # passed through, not written
    assert "${MLEXEC_PLANT_PASSWORD:?" in (out / "compose-plants.yml").read_text()
    assert sorted(p.name for p in out.glob("mm2-*")) == [
        f"mm2-plant-00{i}-cloud.properties" for i in range(1, 7)
    ]


def test_the_clouds_outputs_are_named_by_member_even_for_a_fleet_of_one(tmp_path):
    from mlexec.outputs import prepare_outputs

    one = plan_topology(
        load_topology(_write(tmp_path, fleet_doc(tmp_path), CSV.rsplit("plant-2", 1)[0]))
    )
    two = plan_topology(load_topology(_write(tmp_path, fleet_doc(tmp_path), CSV)))
    ids_one = [r.output_id for r in prepare_outputs(one, "cloud").runners]
    ids_two = [r.output_id for r in prepare_outputs(two, "cloud").runners]
    assert ids_one == ["plants/vib/file.plant-1"]  # a second member keeps the first's checkpoint
    assert ids_two == ["plants/vib/file.plant-1", "plants/vib/file.plant-2"]


def test_a_copy_of_the_topology_elsewhere_has_its_digest_and_an_edit_has_another(tmp_path):
    """A follower's bundle (the same files in another directory) reports the cloud's digest."""
    import shutil

    from mlexec.topologies import plan_topology

    (tmp_path / "cloud").mkdir()
    (tmp_path / "bundle").mkdir()
    doc = fleet_doc(tmp_path / "cloud")  # the cloud's own paths, absolute, under its directory
    shutil.copy(tmp_path / "cloud" / "model.onnx", tmp_path / "bundle" / "model.onnx")
    digests = []
    for where in ("cloud", "bundle"):
        path = _write(tmp_path / where, doc, CSV)
        digests.append(plan_topology(load_topology(path), str(path)).digest)
    assert digests[0] == digests[1]
    doc["usecases"]["vib"]["sampling"] = {"rate": 0.5}
    edited = _write(tmp_path / "bundle", doc)
    assert plan_topology(load_topology(edited), str(edited)).digest != digests[0]
