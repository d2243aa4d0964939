"""Fleets: one site template, many members, each a site like any other.

A fleet is declared once — a site template whose strings may name ``${site.name}`` and
``${site.<var>}``, its members (inline, or from an inventory file) and the link every
member has to the site that serves the fleet. The loader (:mod:`topologies.fleets`)
turns every member into a site of its own and every member's link into a link, before
the topology is validated; what is kept here is the declaration, for the plan (which
members a stage placed on the fleet runs on) and for ``mlexec validate``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mlexec.topologies.schema.common import ByteRate, Name, _Model

__all__ = ["Fleet", "FleetLink", "FleetMember"]


class FleetMember(_Model):
    """One member: its name (the site's), labels to pick it by, its template values."""

    name: Name
    labels: dict[str, str] = {}
    vars: dict[str, str] = {}


class FleetLink(_Model):
    """The link every member has: up to ``target`` (the cloud), models back down."""

    target: Name
    secure: bool = True
    #: Each member's link at most this much a second each way (``256KiB/s``).
    bandwidth: ByteRate | None = None


class Fleet(_Model):
    """A site template and its members; stages placed on the fleet run on every member."""

    #: The site every member is, with ``${site.name}`` / ``${site.<var>}`` in its strings.
    site: dict[str, Any] = Field(min_length=1)
    #: Members, the inventory's followed by the ones written inline.
    members: list[FleetMember] = []
    #: Where the members came from: a CSV or YAML file (relative to the topology).
    inventory: str | None = None
    link: FleetLink | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)
