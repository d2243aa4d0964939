"""`mlexec run --until-end` shows its progress on a terminal, and only there."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

import pytest

from tests.dataflows.spine import feed, identity_site

pytestmark = pytest.mark.integration

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _on_a_terminal(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` with its stdout on a pseudo-terminal; its exit code and what it showed."""
    main, attached = pty.openpty()
    proc = subprocess.Popen(
        argv,
        stdout=attached,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200", "TERM": "xterm"},
    )
    os.close(attached)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the other end closed: the process is done writing
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    return proc.wait(120), _ANSI.sub("", shown.decode(errors="replace"))


def test_until_end_shows_records_done_of_total_on_a_terminal_only(broker, tmp_path, uid):
    path = identity_site(tmp_path, broker.bootstrap, uid, 0.1)
    *_, good, bad = feed(path, n=3_000, bad_every=50)
    argv = [sys.executable, "-m", "mlexec.cli", "run", str(path), "--until-end", "--no-recovery"]
    code, shown = _on_a_terminal(argv)
    assert code == 0, shown
    assert re.search(r"uc\w+ .*100%.* 3,000/3,000 records", shown), shown
    assert f"3,000 records read, {len(good):,} predictions, {len(bad):,} dead letters" in shown

    piped = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert piped.returncode == 0, piped.stderr
    assert "records read" in piped.stdout and "/3,000 records" not in piped.stdout  # no bar
