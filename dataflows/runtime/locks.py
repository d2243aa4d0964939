"""One lock per part of a site's state, taken before anything starts.

A second ``mlexec run`` or ``up`` of a running site must not touch its recovery state
(it once left every later start unable to resume). Each part — ``up``, ``pipeline``,
``store``, ``connect``, ``act`` — holds an exclusive ``flock`` on
``<state_dir>/locks/<part>.lock`` for as long as its process lives; the kernel drops it
when the process dies, even by ``kill -9``, so a lock is never stale. The file names the
holder (pid, command, since when) for the one-line refusal a second start gets.

Children die with their parent: a part started by ``up`` or ``run`` asks the kernel for
SIGTERM when its parent exits (:func:`die_with_parent`), so no store outlives its run
holding the chDB directory.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from mlexec.errors import MlexecError

__all__ = [
    "PARENT_ENV",
    "PARTS",
    "SiteBusyError",
    "SiteLock",
    "child_env",
    "die_with_parent",
    "holder",
    "lock_path",
    "stop_child",
]

#: Every part of a site that keeps state of its own.
PARTS = ("up", "pipeline", "store", "connect", "act")
#: Set for a child process: the pid of the parent it must not outlive.
PARENT_ENV = "MLEXEC_PARENT_PID"
_PR_SET_PDEATHSIG = 1
#: The locks this process holds (an unreferenced lock would be closed, hence released).
_HELD: list[SiteLock] = []


class SiteBusyError(MlexecError):
    """A part of the site is already running (or a reset was asked while it runs)."""


def lock_path(state_dir: str | Path, part: str) -> Path:
    """Where the lock of ``part`` of a site with this state directory lives."""
    return Path(state_dir) / "locks" / f"{part}.lock"


def holder(state_dir: str | Path, part: str) -> dict[str, Any] | None:
    """Who holds the lock of ``part`` (pid, command, since), or ``None`` when nobody does."""
    path = lock_path(state_dir, part)
    if not path.exists():
        return None
    with path.open("rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(path)
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        found = orjson.loads(path.read_bytes())
        return found if isinstance(found, dict) else {}
    except (OSError, orjson.JSONDecodeError):
        return {}


def describe(site: str, part: str, found: dict[str, Any]) -> str:
    """``site edge: the pipeline is running (pid 12, `mlexec run …`, since …)``."""
    since = found.get("since")
    when = (
        datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds")
        if isinstance(since, int | float)
        else "?"
    )
    return (
        f"site {site!r}: its {part} is already running "
        f"(pid {found.get('pid', '?')}, `{found.get('command', '?')}`, since {when})"
    )


class SiteLock:
    """The exclusive lock of one part of a site, held until :meth:`release` or exit."""

    def __init__(self, site: str, state_dir: str | Path, part: str) -> None:
        self.site = site
        self.part = part
        self.path = lock_path(state_dir, part)
        self._file: IO[bytes] | None = None

    def acquire(self) -> SiteLock:
        """Take the lock or refuse in one line naming the holder; touches nothing else."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+b")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            found = _read(self.path)
            msg = describe(self.site, self.part, found) + "; stop it first"
            raise SiteBusyError(msg) from None
        f.seek(0)
        f.truncate()
        command = " ".join(["mlexec", *sys.argv[1:]])[:300]
        f.write(orjson.dumps({"pid": os.getpid(), "command": command, "since": time.time()}))
        f.flush()
        self._file = f
        _HELD.append(self)  # held for the life of the process unless released
        return self

    def release(self) -> None:
        if self in _HELD:
            _HELD.remove(self)
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> SiteLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def stop_child(process: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """Stop a child process: SIGTERM, then SIGKILL if it has not exited in ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def child_env() -> dict[str, str]:
    """The environment of a child process that must not outlive this one."""
    return {**os.environ, PARENT_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """In a child started with :func:`child_env`: get SIGTERM when the parent exits.

    Linux's ``PR_SET_PDEATHSIG``; if the parent is already gone by now, exit at once.
    """
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)
