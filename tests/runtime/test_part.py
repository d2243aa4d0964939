"""A part's spec is the interface between a supervisor and its processes: pure logic."""

from __future__ import annotations

import dataclasses

import pytest

from mlexec.errors import TopologyError
from mlexec.runtime.part import PARTS, PartSpec
from mlexec.runtime.supervisor import Supervisor
from mlexec.topologies import load_topology, plan_topology
from tests.dataflows.spine import spine_topology


def test_a_spec_survives_its_json_whole():
    spec = PartSpec("store", "t.yaml", "edge", usecase="uc", recovery=False, dashboard_port=8080)
    assert PartSpec.from_json(spec.to_json()) == spec
    assert {f.name for f in dataclasses.fields(PartSpec)} >= {"part", "topology", "site", "workers"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"part": "dashboard"}, "unknown part 'dashboard'"), ({"part": "mirror"}, "needs its link")],
)
def test_a_spec_that_cannot_run_is_refused(kwargs, message):
    with pytest.raises(TopologyError, match=message):
        PartSpec(topology="t.yaml", site="edge", **kwargs)


def test_the_supervisor_runs_each_part_of_the_site_by_spec(tmp_path):
    path = spine_topology(
        tmp_path,
        "127.0.0.1:1",
        "spec",
        dispatch="{kind: microbatch}",
        reduction="{kind: identity}",
        sampling="{rate: 0.1}",
    )
    plan = plan_topology(load_topology(path), str(path))
    supervisor = Supervisor(plan, "here", path)
    specs = {name: part.spec for name, part in supervisor.parts.items()}
    assert set(specs) <= set(PARTS) and {"pipeline", "store"} <= set(specs)
    assert all(s.topology == str(path) and s.site == "here" for s in specs.values())
    assert specs["pipeline"].workers == plan.topology.sites["here"].pipeline.workers
