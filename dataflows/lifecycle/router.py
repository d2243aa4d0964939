"""Serving inside a dataflow: a use case's routing and its loaded sessions as one object.

:class:`ModelRouter` is read once per batch, so a swap takes effect between batches —
never inside one; a version that fails at serve time falls back to the last good one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from mlexec.errors import MlexecError
from mlexec.lifecycle.protocol import (
    Routing,
    key_shares,
)
from mlexec.operators.infer import OnnxModel, Predictions
from mlexec.operators.records import Records
from mlexec.topologies.plan import UseCasePlan

__all__ = [
    "Inferred",
    "ModelRouter",
    "ServeError",
]

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- serving


@dataclass(frozen=True)
class Inferred:
    """One group of a batch's predictions: which version made them, as which variant."""

    predictions: Predictions
    model: OnnxModel
    variant: str
    #: Shadow predictions go to the sample store only.
    shadow: bool = False


@dataclass(frozen=True)
class _Served:
    routing: Routing
    models: dict[str, OnnxModel]


class ServeError(MlexecError):
    """A version failed on a batch at serve time; the router fell back (see ``message``)."""

    def __init__(self, version: str, reason: str, fallback: str | None) -> None:
        self.version = version
        self.reason = reason
        self.fallback = fallback
        then = (
            f"version {fallback} serves instead"
            if fallback
            else "no version that served before is left to fall back to"
        )
        super().__init__(f"model version {version} failed at serve time: {reason}; {then}")


class _VersionFailed(Exception):
    def __init__(self, version: str, exc: Exception) -> None:
        self.version = version
        self.reason = f"{type(exc).__name__}: {str(exc)[:500]}"


class ModelRouter:
    """The versions serving one use case and the split of its keys between them.

    A version that raises on a batch at serve time never stops the flow: the router
    falls back to the last production version that served (as Triton's explicit model
    control and KServe's last good revision do), remembers the failed version in
    :attr:`failed` so the registry's routing to it is not applied again, and raises
    :class:`ServeError` for that batch, whose records the dataflow dead-letters.
    """

    def __init__(self, plan: UseCasePlan, default: OnnxModel) -> None:
        self.plan = plan
        self.default = default
        self._served = _Served(
            Routing(plan.name, production=default.version), {default.version: default}
        )
        #: The last production version that served a batch, and its session.
        self._good: OnnxModel | None = None
        #: Versions that failed at serve time → why.
        self.failed: dict[str, str] = {}
        #: Called with the fallback routing (the registry watcher persists it).
        self.on_fallback: Callable[[Routing, str], None] | None = None

    @property
    def routing(self) -> Routing:
        return self._served.routing

    def models(self) -> dict[str, OnnxModel]:
        return dict(self._served.models)

    def swap(self, routing: Routing, models: dict[str, OnnxModel]) -> None:
        """Serve ``routing`` from the next batch on (one reference assignment: atomic)."""
        self._served = _Served(routing, dict(models))

    def __call__(self, records: Records) -> list[Inferred]:
        served = self._served  # one read per batch: a swap never splits a batch
        try:
            out = self._route(served, records)
        except _VersionFailed as failed:
            raise self._fall_back(served, failed.version, failed.reason) from None
        production = served.models.get(served.routing.production or "")
        if production is not None:
            self._good = production
        return out

    def _fall_back(self, served: _Served, version: str, reason: str) -> ServeError:
        self.failed[version] = reason
        routing, models = served.routing, dict(served.models)
        good = self._good if self._good is not None and self._good.version != version else None
        if good is None and self.default.version != version:
            good = self.default  # the topology's own model, checked at start: the last resort
        if version == routing.production:
            fallback = good.version if good is not None else None
            if good is not None:
                models[good.version] = good
        else:
            fallback = routing.production
        change = f"version {version} failed at serve time; {fallback or 'nothing'} serves"
        if fallback is not None and self._served is served:
            new = replace(
                routing,
                production=fallback,
                canary=None if routing.canary and routing.canary[0] == version else routing.canary,
                ab=tuple(a for a in routing.ab if a[1] != version),
                shadow=tuple(v for v in routing.shadow if v != version),
                change=change,
            )
            self.swap(new, {v: models[v] for v in new.serving() if v in models})
            if self.on_fallback is not None:
                try:
                    self.on_fallback(new, version)
                except Exception as exc:  # noqa: BLE001 - persisting it must not stop serving
                    _log.error("could not record the fallback routing: %s", exc)
        return ServeError(version, reason, fallback)

    def _route(self, served: _Served, records: Records) -> list[Inferred]:
        routing, models = served.routing, served.models
        assert routing.production is not None
        production = models[routing.production]
        out: list[Inferred] = []
        if (routing.canary or routing.ab) and len(records):
            shares = key_shares(records.keys)
            taken = np.zeros(len(records), dtype=bool)
            splits = list(routing.ab)
            if not splits and routing.canary is not None:
                splits = [("canary", routing.canary[0], routing.canary[1])]
            low = 0.0
            for variant, version, share in splits:
                mask = (shares >= low) & (shares < low + share)
                low += share
                taken |= mask
                if mask.any():
                    model = models[version]
                    out.append(Inferred(_run(model, records.take(mask)), model, variant))
            rest = ~taken
            if rest.any():
                part = records if rest.all() else records.take(rest)
                out.append(Inferred(_run(production, part), production, "production"))
        else:
            out.append(Inferred(_run(production, records), production, "production"))
        for version in routing.shadow:
            model = models[version]
            out.append(Inferred(_run(model, records), model, "shadow", shadow=True))
        return out


def _run(model: OnnxModel, records: Records) -> Predictions:
    try:
        return model(records)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise _VersionFailed(model.version, exc) from exc
