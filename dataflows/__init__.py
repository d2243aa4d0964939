"""mlexec: a machine-learning execution environment for streams — one topology, every site.

The package is the repository's ``dataflows/`` (flows, runtime, monitoring, life cycle,
the CLI) with ``mlexec.topologies``, ``mlexec.connectors`` and ``mlexec.operators``
beneath it. The names a user calls are importable from here; they load on first use, so
``import mlexec`` (and every ``mlexec`` command) stays quick::

    from mlexec import Site

    site = Site.load("topologies/demo.yaml", "edge")
    site.run_to_end()  # or site.start() ... site.stop(); site.status(); site.dataflow()

The whole API: docs/api.md.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("mlexec")
except PackageNotFoundError:  # pragma: no cover - running from a tree that is not installed
    __version__ = "0+unknown"

#: Public name → the module that defines it.
_API = {
    "MlexecError": "mlexec.errors",
    "TopologyError": "mlexec.errors",
    "ConnectorError": "mlexec.errors",
    "StoreError": "mlexec.errors",
    "RegistryError": "mlexec.errors",
    "RecordError": "mlexec.errors",
    "Plan": "mlexec.topologies.plan",
    "Topology": "mlexec.topologies.schema",
    "load_topology": "mlexec.topologies.loader",
    "parse_topology": "mlexec.topologies.loader",
    "plan_topology": "mlexec.topologies.plan",
    "SiteRun": "mlexec.runtime.run",
    "prepare_site": "mlexec.runtime.run",
    "prepare_resources": "mlexec.runtime.run",
    "run_pipeline": "mlexec.runtime.run",
    "run_store": "mlexec.runtime.run",
    "run_site": "mlexec.runtime.run",
    "build_flow": "mlexec.flow",
    "UseCaseRuntime": "mlexec.usecase",
    "Supervisor": "mlexec.runtime.supervisor",
    "Site": "mlexec.runtime.site",
    "SiteStatus": "mlexec.runtime.site",
    "PartSpec": "mlexec.runtime.part",
    "run_part": "mlexec.runtime.part",
    "spawn_part": "mlexec.runtime.part",
    "site_dataflow": "mlexec.runtime.run",
    "Monitor": "mlexec.monitoring.monitor",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        msg = f"module 'mlexec' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
