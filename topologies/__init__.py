"""Topologies: the declarative description of sites, links and use cases."""

from topologies.errors import MlexecError, TopologyError
from topologies.loader import load_topology, parse_topology
from topologies.plan import Plan, plan_topology
from topologies.schema import Topology, UseCase

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
