"""Topologies: the declarative description of sites, links and use cases."""

from mlexec.errors import MlexecError, TopologyError
from mlexec.topologies.loader import load_topology, parse_topology
from mlexec.topologies.plan import Plan, plan_topology
from mlexec.topologies.schema import Topology, UseCase

__all__ = [
    "MlexecError",
    "Plan",
    "Topology",
    "TopologyError",
    "UseCase",
    "load_topology",
    "parse_topology",
    "plan_topology",
]
