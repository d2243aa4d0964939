"""The ``mlexec`` command line: a thin layer over the API — parse, call, render.

One module per command group (:mod:`~mlexec.cli.site`, :mod:`~mlexec.cli.validate`,
:mod:`~mlexec.cli.monitor`, :mod:`~mlexec.cli.model`, :mod:`~mlexec.cli.fleet`,
:mod:`~mlexec.cli.tools`) on the one application of :mod:`~mlexec.cli.app`, whose
error handler gives every command the same exit codes: 2 for usage and configuration
errors, 1 for runtime failures, 130 on interrupt.
"""

from __future__ import annotations

import logging
import os

from mlexec.cli import fleet, init, model, monitor, rollout, site, tools, topics, validate
from mlexec.cli.app import MaskSecrets, app, fail
from mlexec.runtime.locks import die_with_parent

__all__ = ["MaskSecrets", "app", "fail", "main"]

_ = (
    fleet,
    init,
    model,
    monitor,
    rollout,
    site,
    tools,
    topics,
    validate,
)  # imported for their commands


def main() -> None:
    """Console-script entry point."""
    die_with_parent()
    logging.basicConfig(
        level=os.environ.get("MLEXEC_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(MaskSecrets())
    app()
