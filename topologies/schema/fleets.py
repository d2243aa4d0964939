"""Fleets: one site template, many members, each a site like any other.

A fleet is declared once — a site template whose strings may name ``${site.name}`` and
``${site.<var>}``, its members (inline, or from an inventory file) and the link every
member has to the site that serves the fleet. The loader (:mod:`topologies.fleets`)
turns every member into a site of its own and every member's link into a link, before
the topology is validated; what is kept here is the declaration, for the plan (which
members a stage placed on the fleet runs on) and for ``mlexec validate``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import Field, model_validator

from mlexec.topologies.schema.common import ByteRate, Duration, Name, _Model

__all__ = ["Fleet", "FleetLink", "FleetMember", "Rollout", "Wave"]


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
    #: The most records each member keeps waiting to go up (see ``links[].backlog``).
    backlog: int | None = Field(default=None, ge=1)


class Wave(_Model):
    """Which members a wave of a rollout reaches (beyond the waves before it).

    ``share``: the members whose stable hash of their name is below it (a member in the
    first 10 % stays there for every rollout); ``labels``: the members with all of them.
    """

    share: float | None = Field(default=None, gt=0.0, le=1.0)
    labels: dict[str, str] | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> Wave:
        if (self.share is None) == (self.labels is None):
            msg = "a wave is either a share of the members (share: 0.25) or labels ({ring: canary})"
            raise ValueError(msg)
        return self


class Rollout(_Model):
    """How a new model version reaches a fleet: in waves, each soaking before the next."""

    #: In order; members no wave picks form a last wave of their own.
    waves: list[Wave] = Field(default_factory=lambda: [Wave(share=0.1), Wave(share=1.0)])
    #: How long a wave serves the version, its monitoring clean, before the next one starts.
    soak: Duration = timedelta(minutes=30)
    #: The wave's samples of the new version the soak needs before it can pass.
    min_samples: int = Field(default=200, ge=1)
    #: Roll back when the wave's predictions are further (KS) from the version before's.
    max_distance: float | None = Field(default=0.3, gt=0.0, le=1.0)
    #: Roll back when, with labels, its error (``monitoring.accuracy``) is higher by more.
    max_error_increase: float | None = Field(default=0.0, ge=0.0)
    #: Labelled samples each of the two needs before their errors are compared.
    min_labels: int = Field(default=50, ge=1)


class Fleet(_Model):
    """A site template and its members; stages placed on the fleet run on every member."""

    #: The site every member is, with ``${site.name}`` / ``${site.<var>}`` in its strings.
    site: dict[str, Any] = Field(min_length=1)
    #: Members, the inventory's followed by the ones written inline.
    members: list[FleetMember] = []
    #: Where the members came from: a CSV or YAML file (relative to the topology).
    inventory: str | None = None
    link: FleetLink | None = None
    #: How ``mlexec model rollout`` brings a version to the members.
    rollout: Rollout = Rollout()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)
