"""What ``mlexec up`` becomes: the supervisor of a site, in a small process of its own."""

from __future__ import annotations

import logging
import os
import signal
import sys

from mlexec.errors import MlexecError, TopologyError
from mlexec.runtime.locks import die_with_parent
from mlexec.runtime.part import run_until_stopped
from mlexec.runtime.site import Site
from mlexec.topologies.secrets import MaskSecrets, mask_text

__all__ = ["main"]


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
        received = run_until_stopped(supervisor.run)
    except (MlexecError, OSError) as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, TopologyError) else 1
    finally:
        if the_site is not None:
            the_site.stop()
    return 130 if received == signal.SIGINT else 0


if __name__ == "__main__":
    raise SystemExit(main())
