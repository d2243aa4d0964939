"""``mlexec follow``: a fleet member that takes its topology from the cloud and serves it.

Started with only the member's name, its cloud link and a state directory, the
follower reads the cloud's registry (``desired:<topology>`` and the files it names,
:mod:`mlexec.lifecycle.desired`) and, for the newest version that declares the member:

1. rebuilds the bundle under ``STATE/follow/bundles/v<N>-<digest>/`` (every file
   checked by sha256);
2. checks it in a process of its own, as ``mlexec up`` would before starting (the
   topology loads and plans, the member is one of its sites, every model and reduction
   of the member loads — a reduction package imports), so that nothing it imports
   stays in the follower;
3. applies it: the first one starts a :class:`~mlexec.runtime.supervisor.Supervisor`
   of the member's parts; a later one restarts only the parts whose configuration
   changed (:meth:`~mlexec.runtime.supervisor.Supervisor.reconfigure`) — a new
   sampling rate restarts the pipeline, not the mirror;
4. or refuses it, with the reason, and keeps serving the last good version. A refused
   version is not tried again; the next published one is.

Each outcome is kept in ``STATE/follow/status.json`` and reported to the cloud as a
``lifecycle`` alert on ``<member>.mlexec.alerts`` (the topic the member's mirror fills,
filed in the cloud's alerts table under the member's name). A follower restarted
without its cloud serves the last good version from its state directory. The
children get ``MLEXEC_STATE_DIR`` (and ``MLEXEC_PACKAGES_DIR``, unless set) pointing
into the state directory, so a fleet's site template can place everything there.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.connectors.runner import Checkpoint
from mlexec.errors import MlexecError
from mlexec.lifecycle.desired import Desired, DesiredReader
from mlexec.runtime.locks import SiteLock
from mlexec.topologies.plan import ALERTS_TOPIC, MODELS_TOPIC, TopicSpec, remote_name
from mlexec.topologies.schema import KafkaSettings
from mlexec.topologies.secrets import mask_text

__all__ = ["Follower", "check_bundle"]

_log = logging.getLogger(__name__)
_CHECK_TIMEOUT = 300.0


def check_bundle(topology: Path, member: str, env: dict[str, str]) -> str | None:
    """Why ``member`` cannot run ``topology`` (checked in a child process), or None."""
    try:
        done = subprocess.run(  # noqa: S603 - this interpreter, no shell
            [sys.executable, "-m", "mlexec.runtime.follow", "check", str(topology), member],
            capture_output=True,
            text=True,
            timeout=_CHECK_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"checking it took longer than {_CHECK_TIMEOUT:.0f}s"
    if done.returncode == 0:
        return None
    lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
    return mask_text(lines[-1].removeprefix("error: ") if lines else f"exit {done.returncode}")


class Follower:
    """Follow the desired state the cloud publishes for one member; serve it."""

    def __init__(
        self,
        member: str,
        cloud: KafkaSettings,
        state_dir: Path,
        *,
        topology: str | None = None,
        poll: float = 2.0,
        dashboard_port: int | None = None,
    ) -> None:
        self.member = member
        self.cloud = client_config(cloud)
        self.state_dir = state_dir.resolve()
        self.topology = topology
        self.poll = poll
        self.dashboard_port = dashboard_port
        self.root = self.state_dir / "follow"
        self._status = Checkpoint(self.root / "status.json")
        self.status: dict[str, Any] = self._status.load() or {"member": member}
        self._reader = DesiredReader()
        self._next = 0
        self._running: tuple[Any, Any, threading.Thread, threading.Event] | None = None
        self.env = {
            **os.environ,
            "MLEXEC_STATE_DIR": str(self.state_dir),
            "MLEXEC_PACKAGES_DIR": os.environ.get(
                "MLEXEC_PACKAGES_DIR", str(self.state_dir / "packages")
            ),
        }

    # ----------------------------------------------------------------- running

    def run(self, stop: threading.Event) -> None:
        """Follow until ``stop`` is set; then stop the member's parts."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.environ.update({k: self.env[k] for k in ("MLEXEC_STATE_DIR", "MLEXEC_PACKAGES_DIR")})
        lock = SiteLock(self.member, self.state_dir, "follow").acquire()
        try:
            applied = self.status.get("applied")
            if applied is not None:  # the last good version, whether the cloud answers or not
                try:
                    self._serve(Path(applied["path"]))
                except (MlexecError, OSError) as exc:
                    _log.error("cannot serve the last good version again: %s", mask_text(str(exc)))
            while not stop.is_set():
                try:
                    self.step()
                    self._problem("cloud", None)
                except (MlexecError, OSError, KeyError) as exc:
                    self._problem("cloud", f"{type(exc).__name__}: {exc}")
                except Exception as exc:  # noqa: BLE001 - librdkafka's errors; never stop serving
                    self._problem("cloud", f"{type(exc).__name__}: {exc}")
                stop.wait(self.poll)
        finally:
            self._halt()
            lock.release()

    def step(self) -> Desired | None:
        """Read what is new on the cloud's registry; apply a newer version for the member."""
        for key, value, _h, _p, offset in read_topic(
            self.cloud, MODELS_TOPIC, start={0: self._next}
        ):
            self._reader.add(key, value)
            self._next = offset + 1
        wanted = [
            d
            for d in self._reader.desired.values()
            if self.member in d.sites and self.topology in (None, d.topology)
        ]
        if len(wanted) > 1:
            names = sorted(d.topology for d in wanted)
            msg = f"topologies {names} all declare {self.member!r}: follow one (--topology)"
            raise MlexecError(msg)
        if not wanted:
            return None
        desired = wanted[0]
        applied = self.status.get("applied") or {}
        refused = self.status.get("refused") or {}
        if desired.digest in (applied.get("digest"), refused.get("digest")):
            return None
        if (
            desired.version <= int(applied.get("version", 0))
            and applied.get("topology") == desired.topology
        ):
            return None
        self.apply(desired)
        return desired

    def apply(self, desired: Desired) -> bool:
        """Check ``desired`` and serve it, or refuse it; whether it was applied."""
        try:
            path = self._reader.materialize(desired, self.root / "bundles")
        except (MlexecError, OSError) as exc:
            return self._refuse(desired, f"its files cannot be rebuilt: {exc}")
        reason = check_bundle(path, self.member, self.env)
        if reason is not None:
            return self._refuse(desired, reason)
        try:
            done = self._serve(path)
        except (MlexecError, OSError) as exc:
            return self._refuse(desired, f"it cannot be served: {exc}")
        self.status["applied"] = {
            "topology": desired.topology,
            "version": desired.version,
            "digest": desired.digest,
            "path": str(path),
            "at": time.time(),
            "parts": done,
        }
        self.status.pop("refused", None)
        self._save()
        changed = ", ".join(f"{k} {', '.join(v)}" for k, v in done.items() if v) or "nothing"
        _log.warning("applied %s v%d: %s", desired.topology, desired.version, changed)
        self._report(desired, "info", f"applied v{desired.version}: {changed}")
        return True

    # ----------------------------------------------------------------- helpers

    def _serve(self, path: Path) -> dict[str, list[str]]:
        from mlexec.runtime.site import Site
        from mlexec.topologies import load_topology, plan_topology

        plan = plan_topology(load_topology(path), str(path))
        plan.require_site(self.member)
        if self._running is not None:
            site, supervisor, _thread, _stop = self._running
            same_dir = plan.topology.sites[self.member].state_dir == site.settings.state_dir
            if same_dir:
                done: dict[str, list[str]] = supervisor.reconfigure(plan, path)
                site.plan, site.topology = plan, str(path)
                return done
            self._halt()  # another state directory: every part moves
        site = Site(plan, self.member, path)
        supervisor = site.supervisor(dashboard_port=self.dashboard_port, check=False)
        stop = threading.Event()
        thread = threading.Thread(target=supervisor.run, args=(stop,), name="supervisor")
        thread.start()
        self._running = (site, supervisor, thread, stop)
        return {"restarted": [], "kept": [], "started": list(supervisor.parts), "stopped": []}

    def _halt(self) -> None:
        if self._running is not None:
            site, _supervisor, thread, stop = self._running
            stop.set()
            thread.join()
            site.stop()
            self._running = None

    def _refuse(self, desired: Desired, reason: str) -> bool:
        reason = mask_text(reason)
        self.status["refused"] = {
            "topology": desired.topology,
            "version": desired.version,
            "digest": desired.digest,
            "reason": reason,
            "at": time.time(),
        }
        self._save()
        kept = self.status.get("applied")
        serving = f"serving v{kept['version']}" if kept else "serving nothing yet"
        _log.error("refused %s v%d: %s (%s)", desired.topology, desired.version, reason, serving)
        self._report(desired, "warning", f"refused v{desired.version} ({serving}): {reason}")
        return False

    def _report(self, desired: Desired, severity: str, message: str) -> None:
        topic = remote_name(self.member, ALERTS_TOPIC)
        now = int(time.time() * 1000)
        alert = {
            "at": now,
            "usecase": "",
            "kind": "lifecycle",
            "subject": f"topology {desired.topology}",
            "statistic": "desired",
            "value": float(desired.version),
            "severity": severity,
            "message": message,
        }
        try:
            ensure_topics(self.cloud, [TopicSpec(topic, 1)])
            produce_records(self.cloud, topic, [(self.member.encode(), orjson.dumps(alert))])
        except Exception as exc:  # noqa: BLE001 - the status file keeps it; never stop serving
            _log.warning("cannot report to the cloud (%s): %s", topic, mask_text(str(exc)))

    def _problem(self, what: str, problem: str | None) -> None:
        problems = self.status.setdefault("problems", {})
        if problems.get(what) == problem or (problem is None and what not in problems):
            return
        if problem is None:
            problems.pop(what, None)
            _log.warning("%s: works again", what)
        else:
            problems[what] = mask_text(problem)
            _log.error("%s: %s (serving on; retrying)", what, problems[what])
        self._save()

    def _save(self) -> None:
        self._status.save(self.status)


def main(argv: list[str] | None = None) -> int:
    """``python -m mlexec.runtime.follow check TOPOLOGY SITE``: exit 0 if the site can start."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "check":
        print("usage: python -m mlexec.runtime.follow check TOPOLOGY SITE", file=sys.stderr)
        return 2
    from mlexec.runtime.run import prepare_site
    from mlexec.topologies import load_topology, plan_topology

    _, topology, site = args
    try:
        plan = plan_topology(load_topology(topology), topology)
        plan.require_site(site)
        prepare_site(plan, site, source=topology)
    except (MlexecError, OSError) as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
