"""The README's five-minute walkthrough, run line by line in a fresh directory.

Every ``mlexec`` line of the section's shell block runs as a new user would type it;
only ``mlexec broker &`` is played by the test session's broker (the topology ``init``
writes reads its address from ``MLEXEC_BOOTSTRAP``). Each step's outcome is checked:
600 readings predicted and stored, labels sent, a monitoring round over the window,
the dashboard answering.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


def _lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own CSV and model in five minutes") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [ln.split("  #")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]


def test_the_readme_walkthrough_runs_in_a_fresh_directory(tmp_path, broker):
    env = {**os.environ, "MLEXEC_BOOTSTRAP": broker.bootstrap, "COLUMNS": "200"}
    outputs: dict[str, str] = {}
    lines = _lines()
    assert lines[1] == "mlexec broker &" and lines[-1].startswith("mlexec monitor dashboard")
    for line in lines[:-1]:
        if line == "mlexec broker &":
            continue  # the session's broker
        argv = shlex.split(line)
        assert argv[0] == "mlexec", line
        done = subprocess.run(
            [sys.executable, "-m", "mlexec.cli", *argv[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        outputs[argv[1]] = " ".join(done.stdout.split())
    assert "wrote" in outputs["init"] and (tmp_path / "pumps.yaml").is_file()
    assert "site local: connectors pumps/csv (csv " in outputs["connect"]  # what runs, once
    assert "site local: pipeline of pumps (pumps.raw → pumps.predictions)" in outputs["run"]
    assert "600 records read, 600 predictions, 0 dead letters, 600 samples" in outputs["run"]
    assert len(re.findall(r"pumps\.raw:\d+:\d+", outputs["tail"])) == 5, outputs["tail"]
    assert "sent 200 labels" in outputs["feedback"]
    assert "600 samples from" in outputs["monitor"]
    assert re.search(r"\b600\b", outputs["query"])

    argv = shlex.split(lines[-1])
    board = subprocess.Popen(
        [sys.executable, "-m", "mlexec.cli", *argv[1:]],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert board.stdout is not None
        said = board.stdout.readline()  # "monitoring dashboard of site local at http://…"
        url = re.search(r"http://127\.0\.0\.1:\d+\S*", said)
        assert url is not None, said
        pages: list[int] = []

        def answered() -> bool:
            try:
                with urllib.request.urlopen(url.group(0), timeout=5) as page:  # noqa: S310 - loopback
                    pages.append(page.status)
                    return page.status == 200
            except OSError:
                return False

        wait_for(answered, 60, "the dashboard to answer")
    finally:
        board.terminate()
        board.wait(30)
