"""Dataflows: operators and connectors assembled per site, and the ``mlexec`` CLI."""

from dataflows.run import SiteRun, prepare_site, run_site
from dataflows.site import build_flow
from dataflows.usecase import UseCaseRuntime

__all__ = ["SiteRun", "UseCaseRuntime", "build_flow", "prepare_site", "run_site"]
