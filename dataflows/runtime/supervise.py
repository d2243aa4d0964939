"""What ``mlexec up`` becomes: the supervisor of a site, in a small process of its own."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

from mlexec.errors import MlexecError, TopologyError
from mlexec.runtime.locks import die_with_parent
from mlexec.runtime.part import run_until_stopped
from mlexec.runtime.site import Site
from mlexec.runtime.supervisor import Supervisor
from mlexec.topologies.secrets import MaskSecrets, mask_text

__all__ = ["TopologyWatch", "main"]

_log = logging.getLogger(__name__)


class TopologyWatch:
    """Serve the edits of a running site's topology: re-plan, check, restart what changed.

    Every ``every`` seconds it looks at the topology file and the files it names by a
    relative path (a fleet's inventory, models, packages). After a change it checks the
    new version as ``mlexec up`` would before starting (in a process of its own) and
    hands it to :meth:`~mlexec.runtime.supervisor.Supervisor.reconfigure`, which
    restarts only the parts whose configuration changed — a member added to the
    inventory restarts the cloud's store, which then reads its topics. An edit that does
    not check out is refused: the site serves on with the last good version, and
    ``mlexec status`` says why until the file is fixed.
    """

    def __init__(self, supervisor: Supervisor, site: str, path: Path, every: float = 2.0) -> None:
        self.supervisor, self.site, self.path, self.every = supervisor, site, path, every

    def stamp(self) -> tuple[tuple[str, int, int], ...]:
        from mlexec.lifecycle.desired import named_files

        try:
            files = [self.path, *named_files(self.path)]
        except Exception:  # noqa: BLE001 - a half-written file: the topology's own stamp then
            files = [self.path]
        out = []
        for file in files:
            try:
                st = file.stat()
            except OSError:
                out.append((str(file), -1, -1))
            else:
                out.append((str(file), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def run(self, stop: threading.Event) -> None:
        last = self.stamp()
        while not stop.wait(self.every):
            now = self.stamp()
            if now != last:
                last = now
                self.apply()

    def apply(self) -> dict[str, list[str]] | None:
        """Check the topology as it is now and serve it; what restarted (None: refused)."""
        from mlexec.runtime.follow import check_bundle
        from mlexec.topologies import load_topology, plan_topology

        reason = check_bundle(self.path, self.site, dict(os.environ))
        if reason is None:
            try:
                plan = plan_topology(load_topology(self.path), str(self.path))
                done = self.supervisor.reconfigure(plan, self.path)
            except (MlexecError, OSError) as exc:
                reason = str(exc)
            else:
                self.supervisor.note("topology", None)
                changed = ", ".join(f"{k} {', '.join(v)}" for k, v in done.items() if v)
                _log.warning("%s changed: %s", self.path, changed or "nothing to restart")
                return done
        text = (
            f"the edit of {self.path} is refused; the last good version serves: {mask_text(reason)}"
        )
        _log.error("%s", text)
        self.supervisor.note("topology", text)
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m mlexec.runtime.supervise TOPOLOGY SITE [DASHBOARD_PORT]``.

    What ``mlexec up`` becomes once it has checked the site: the command execs this
    (the same process id, for signals and service managers) so that the supervisor,
    which runs as long as the site, holds none of what the check loaded — no models,
    polars or onnxruntime. It takes the site's ``up`` lock again (a second ``up`` that
    got in between is refused here, in one line) and supervises until SIGTERM or SIGINT.
    """
    topology, site, *rest = sys.argv[1:] if argv is None else argv
    port = int(rest[0]) if rest and rest[0] else None
    die_with_parent()
    logging.basicConfig(
        level=os.environ.get("MLEXEC_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(MaskSecrets())
    the_site = None
    try:
        the_site = Site.load(topology, site)
        supervisor = the_site.supervisor(dashboard_port=port, check=False)
        print(f"supervising {', '.join(supervisor.parts)} of site {site}", flush=True)
        watch = TopologyWatch(supervisor, site, Path(topology))

        def supervise(stop: threading.Event) -> None:
            threading.Thread(target=watch.run, args=(stop,), name="topology", daemon=True).start()
            supervisor.run(stop)

        received = run_until_stopped(supervise)
    except (MlexecError, OSError) as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, TopologyError) else 1
    finally:
        if the_site is not None:
            the_site.stop()
    return 130 if received == signal.SIGINT else 0


if __name__ == "__main__":
    raise SystemExit(main())
