"""The topology: sites, fleets, links and use cases, with their cross-references checked."""

from __future__ import annotations

from pydantic import (
    Field,
    PrivateAttr,
    model_validator,
)

from mlexec.topologies.schema.common import Name, _Model
from mlexec.topologies.schema.fleets import Fleet
from mlexec.topologies.schema.sites import Site, TransferLink
from mlexec.topologies.schema.usecase import UseCase

__all__ = ["Topology"]


# ---------------------------------------------------------------------- topology


class Topology(_Model):
    """Sites, the links between them, and the use cases they run.

    A fleet's members are in ``sites`` (and their links in ``links``) like any other
    site; ``fleets`` keeps the declaration, and a stage may be placed on a fleet.
    """

    name: Name
    sites: dict[Name, Site] = Field(min_length=1)
    fleets: dict[Name, Fleet] = {}
    links: list[TransferLink] = []
    usecases: dict[Name, UseCase] = Field(min_length=1)
    #: The directory relative paths were resolved against (the loader sets it).
    _directory: str | None = PrivateAttr(default=None)

    @property
    def directory(self) -> str | None:
        """The topology file's directory, resolved, when it was loaded from a file."""
        return self._directory

    @model_validator(mode="after")
    def _references(self) -> Topology:
        sites = set(self.sites)
        for name, fleet in self.fleets.items():
            if name in sites:
                msg = f"fleets.{name}: a name no site has, found site {name!r} too"
                raise ValueError(msg)
            if fleet.link is not None and fleet.link.target not in sites:
                msg = (
                    f"fleets.{name}.link.target: a site of {sorted(set(sites) - set(fleet.names))}"
                    f", found {fleet.link.target!r}"
                )
                raise ValueError(msg)
        placeable = sites | set(self.fleets)
        for i, link in enumerate(self.links):
            for end in ("source", "target"):
                if getattr(link, end) not in sites:
                    msg = (
                        f"links.{i}.{end}: a site of {_listed(sites)}, found {getattr(link, end)!r}"
                    )
                    raise ValueError(msg)
            if link.source == link.target:
                msg = f"links.{i}.target: a site other than the source, found {link.target!r}"
                raise ValueError(msg)
            for end in (link.source, link.target):
                protocol = self.sites[end].kafka.security.protocol
                if link.secure and protocol not in ("ssl", "sasl_ssl"):
                    msg = (
                        f"links.{i}.secure: a secure link needs TLS (protocol ssl or sasl_ssl) at "
                        f"both ends; site {end!r} has protocol {protocol!r} (set "
                        f"sites.{end}.kafka.security, or secure: false on a trusted network)"
                    )
                    raise ValueError(msg)
        for uc_name, uc in self.usecases.items():
            for stage, site in uc.placement.model_dump().items():
                if site is None and len(sites) > 1 and stage != "act":
                    msg = (
                        f"usecases.{uc_name}.placement.{stage}: with several sites each stage "
                        f"needs a site or fleet of {_listed(placeable)}, found none"
                    )
                    raise ValueError(msg)
                if site is not None and site not in placeable:
                    msg = (
                        f"usecases.{uc_name}.placement.{stage}: a site or fleet of "
                        f"{_listed(placeable)}, found {site!r}"
                    )
                    raise ValueError(msg)
        return self

    def fleet_of(self, site: str) -> str | None:
        """The fleet ``site`` is a member of, if any."""
        for name, fleet in self.fleets.items():
            if site in fleet.names:
                return name
        return None

    def site_of(self, usecase: str, stage: str) -> str:
        """The site (or fleet) that runs ``stage`` of ``usecase``."""
        placed: str | None = getattr(self.usecases[usecase].placement, stage)
        if placed is None and stage == "act":
            return self.site_of(usecase, "infer")
        return placed if placed is not None else next(iter(self.sites))


def _listed(names: set[str], most: int = 12) -> str:
    """``names`` sorted, at most ``most`` of them: a fleet's hundred members stay short."""
    ordered = sorted(names)
    if len(ordered) <= most:
        return str(ordered)
    return f"{ordered[:most]} and {len(ordered) - most} more"
