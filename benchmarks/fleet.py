"""A fleet of 1,000 members: how long validating, planning and rendering take.

    .venv/bin/python -m benchmarks.fleet [--members 1000] [--repeat 3]

Writes a topology with a cloud and one fleet whose members come from a CSV inventory
(name, labels, the member's broker), then times, median of ``--repeat``:

- load: YAML, ``${ENV}``, the inventory, every member made a site, validation;
- plan: the plan (each member's link and what crosses it);
- the cloud's topics (one mirrored copy per member and topic) and one member's;
- ``mlexec validate`` as a user runs it (a new process: imports, the model's check);
- ``render mm2`` (a properties file per member's link) and ``render compose``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mlexec.operators.testing import make_mlp
from mlexec.topologies import load_topology, plan_topology
from mlexec.topologies.compose import render_fleet_compose
from mlexec.topologies.render import render_mm2


def write_fleet(work: Path, members: int) -> Path:
    make_mlp(work / "model.onnx", inputs=4, hidden=(16,), seed=0)
    rows = "".join(
        f"plant-{i:04d},region={('eu', 'us', 'apac')[i % 3]};line={i % 7},kafka-{i:04d}:9092\n"
        for i in range(members)
    )
    (work / "plants.csv").write_text("name,labels,bootstrap\n" + rows)
    doc: dict[str, Any] = {
        "name": "fleet",
        "sites": {
            "cloud": {
                "kafka": {"bootstrap": "kafka-cloud:9092"},
                "sample_store": "clickhouse://mlexec:mlexec@clickhouse:8123/mlexec",
                "state_dir": "/state",
            }
        },
        "fleets": {
            "plants": {
                "inventory": "plants.csv",
                "site": {
                    "kafka": {"bootstrap": "${site.bootstrap}"},
                    "sample_store": "chdb:///state/${site.name}-chdb",
                    "state_dir": "/state",
                },
                "link": {"target": "cloud", "secure": False},
            }
        },
        "usecases": {
            "vib": {
                "input": {
                    "key": "machine",
                    "time": "ts",
                    "schema": {
                        "machine": "str",
                        "ts": "timestamp",
                        **{f"f{i}": "float" for i in range(4)},
                    },
                },
                "placement": {
                    "connectors": "plants",
                    "dispatch": "plants",
                    "infer": "plants",
                    "store": "cloud",
                    "act": "cloud",
                },
                "dispatch": {"kind": "microbatch", "max_records": 256, "max_wait": "50ms"},
                "model": {"name": "mlp", "version": "1", "path": "model.onnx"},
                "sampling": {"rate": 0.05},
                "outputs": [{"kind": "file", "path": "/state/alarms"}],
            }
        },
    }
    path = work / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _timed(run: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, repeat = args.members, args.repeat
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = write_fleet(work, n)
        rows = []
        load, topology = _timed(lambda: load_topology(path), repeat)
        rows.append(("load (YAML, inventory, every member a site, validation)", load))
        plan_s, plan = _timed(lambda: plan_topology(topology), repeat)
        rows.append(("plan (links, what crosses each)", plan_s))
        cloud_s, cloud_topics = _timed(lambda: plan.topics_at("cloud"), repeat)
        rows.append((f"the cloud's topics ({len(cloud_topics):,})", cloud_s))
        member_s, _ = _timed(lambda: plan.topics_at("plant-0500"), repeat)
        rows.append(("one member's topics", member_s))
        mm2_s, mm2 = _timed(lambda: [render_mm2(plan, link) for link in topology.links], repeat)
        rows.append((f"render mm2 ({len(mm2):,} files)", mm2_s))
        text = path.read_text()
        compose_s, compose = _timed(
            lambda: render_fleet_compose(plan, text, topology_file=path.name), repeat
        )
        rows.append((f"render compose ({len(compose):,} files)", compose_s))

        def validate() -> None:
            done = subprocess.run(
                [sys.executable, "-m", "mlexec.cli", "validate", str(path)],
                capture_output=True,
                text=True,
                env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
                check=False,
            )
            if done.returncode != 0:
                raise SystemExit(f"mlexec validate failed:\n{done.stdout}{done.stderr}")

        validate_s, _ = _timed(validate, repeat)
        rows.append(("`mlexec validate` (a new process)", validate_s))
    print(f"\n{n:,} members, median of {repeat}\n")
    print("| step | seconds | ms per member |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / n * 1000:.3f} |")


if __name__ == "__main__":
    main()
