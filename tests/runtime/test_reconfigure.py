"""What a new version of a topology restarts: per part, a digest of what that part runs on."""

from __future__ import annotations

import yaml

from mlexec.runtime.supervisor import part_digests
from mlexec.topologies import load_topology, plan_topology
from tests.topologies.test_fleets import fleet_doc

CSV = "name,labels,bootstrap\nplant-1,region=eu,127.0.0.1:9001\nplant-2,region=us,127.0.0.1:9002\n"


def _digests(tmp_path, doc, csv):
    (tmp_path / "plants.csv").write_text(csv)
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    plan = plan_topology(load_topology(path))
    return {site: part_digests(plan, site) for site in ("cloud", "plant-1")}


def test_each_part_restarts_only_for_what_it_reads(tmp_path):
    doc = fleet_doc(tmp_path)
    before = _digests(tmp_path, doc, CSV)
    assert set(before["cloud"]) == {"store", "act"}
    assert set(before["plant-1"]) == {"pipeline", "mirror plant-1:cloud"}
    assert _digests(tmp_path, doc, CSV) == before  # the same file, the same digests

    # a member added to the inventory: the cloud's store reads its topics, plant-1 is untouched
    grown = _digests(tmp_path, doc, CSV + "plant-3,region=eu,127.0.0.1:9003\n")
    assert grown["plant-1"] == before["plant-1"]
    assert grown["cloud"]["store"] != before["cloud"]["store"]

    # a new sampling rate: the members' pipelines, not their mirrors nor the cloud's store
    doc["usecases"]["vib"]["sampling"] = {"rate": 0.5}
    sampled = _digests(tmp_path, doc, CSV)
    assert sampled["plant-1"]["pipeline"] != before["plant-1"]["pipeline"]
    assert sampled["plant-1"]["mirror plant-1:cloud"] == before["plant-1"]["mirror plant-1:cloud"]
    assert sampled["cloud"] == before["cloud"]

    # the model file replaced by other bytes at the same path: whoever loads it restarts
    from mlexec.operators.testing import make_mlp

    make_mlp(tmp_path / "model.onnx", inputs=2, hidden=(4,), seed=7)
    retrained = _digests(tmp_path, doc, CSV)
    assert retrained["plant-1"]["pipeline"] != sampled["plant-1"]["pipeline"]
    assert (
        retrained["plant-1"]["mirror plant-1:cloud"] == sampled["plant-1"]["mirror plant-1:cloud"]
    )

    # the cloud's own settings: every part of the cloud
    doc["sites"]["cloud"]["state_dir"] = str(tmp_path / "elsewhere")
    moved = _digests(tmp_path, doc, CSV)
    assert all(moved["cloud"][p] != retrained["cloud"][p] for p in ("store", "act"))
