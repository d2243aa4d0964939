"""The Python API page's example runs as written (docs/api.md), so it stays true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import mlexec

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "api.md"


def test_the_api_example_runs_a_site_end_to_end(tmp_path):
    (example, *_rest) = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    script = tmp_path / "example.py"
    script.write_text(example)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "100 predictions, model version 1" in done.stdout
    assert "refused: no site 'elsewhere'" in done.stdout


def test_every_name_the_page_lists_is_exported():
    listed = set(re.findall(r"`(\w+)(?:\(|`)", PAGE.read_text().split("## A site")[0]))
    exported = set(mlexec.__all__)
    wanted = {
        "load_topology",
        "parse_topology",
        "plan_topology",
        "Site",
        "site_dataflow",
        "PartSpec",
        "run_part",
        "spawn_part",
        "Monitor",
        "MlexecError",
        "TopologyError",
        "ConnectorError",
        "StoreError",
        "RegistryError",
        "RecordError",
    }
    assert wanted <= listed and wanted <= exported, (wanted - listed, wanted - exported)
