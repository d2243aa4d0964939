"""Model life cycle: the registry on ``mlexec.models``, hot-swapping and traffic routing.

- :func:`publish_model` and :func:`change_routing` write the registry (``mlexec model``):
  a version's chunks and manifest, then the use case's new routing. A version is
  immutable: republishing it with other bytes is refused.
- :class:`ModelRouter` serves one use case inside a dataflow: it holds the current
  routing and its loaded sessions as one object, read once per batch, so a swap takes
  effect between batches — never inside one.
- :class:`RegistryWatcher` follows the registry in the dataflow process (the local topic
  and the copies mirrored from other sites), loads new versions — verifying the sha256
  and that inputs and outputs fit the use case — and swaps the routers. A version that
  is tampered with or does not fit is refused with an alert on ``mlexec.alerts``, and
  what serves keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from mlexec.connectors.batchsource import send_alert
from mlexec.connectors.kafka import CONSUMER_TUNING, ensure_topics, produce_records, read_topic
from mlexec.operators.infer import ModelError, ModelInfo, OnnxModel, Predictions, describe_model
from mlexec.operators.records import Records
from mlexec.operators.registry import (
    Assembler,
    Manifest,
    RegistryError,
    Routing,
    artifact_messages,
    key_shares,
    manifest_of,
    routing_message,
)
from mlexec.topologies.errors import MlexecError
from mlexec.topologies.plan import MODELS_TOPIC, Plan, UseCasePlan, remote_name

__all__ = [
    "Inferred",
    "ModelRouter",
    "RegistryWatcher",
    "ServeError",
    "change_routing",
    "check_fits",
    "publish_model",
    "read_registry",
    "current_routing",
    "registry_site",
    "registry_topics",
]

_log = logging.getLogger(__name__)


def registry_site(plan: Plan, uc: UseCasePlan) -> str:
    """Where a use case's versions are published: whence models come down to its infer site."""
    infer = uc.site("infer")
    down = [link.target for link in plan.topology.links if link.source == infer]
    return down[0] if down else infer


def registry_topics(plan: Plan, site: str) -> list[str]:
    """Where a site's dataflows find models: its own registry and the ones mirrored down."""
    return [
        MODELS_TOPIC,
        *(
            remote_name(link.target, MODELS_TOPIC)
            for link in plan.topology.links
            if link.source == site
        ),
    ]


def check_fits(uc: UseCasePlan, info: ModelInfo, default: ModelInfo, what: str) -> None:
    """Refuse a model whose input width or outputs differ from what the use case serves."""
    width = len(uc.model_inputs)
    if info.width is not None and info.width != width:
        msg = f"{what} takes {info.width} features; use case {uc.name} gives {width}: {list(uc.model_inputs)}"
        raise RegistryError(msg)
    wanted = uc.usecase.model.outputs or [o[0] for o in default.outputs]
    have = {o[0]: o for o in info.outputs}
    expected = {o[0]: o for o in default.outputs if o[0] in wanted}
    for name, spec in expected.items():
        if name not in have:
            msg = f"{what} has no output {name!r} (its outputs: {sorted(have)})"
            raise RegistryError(msg)
        if have[name][1:] != spec[1:]:
            msg = (
                f"{what} output {name!r} is {have[name][1]} × {have[name][2] or 1}; the use case "
                f"serves {spec[1]} × {spec[2] or 1} (the samples table has that column)"
            )
            raise RegistryError(msg)


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


# ----------------------------------------------------------------------- watcher


class RegistryWatcher:
    """Follows the registry in a dataflow process and swaps the routers it serves."""

    def __init__(
        self,
        plan: Plan,
        site: str,
        routers: dict[str, ModelRouter],
        conf: dict[str, Any],
        cache_dir: Path,
        *,
        poll: float = 0.2,
    ) -> None:
        self.plan = plan
        self.site = site
        self.routers = routers
        self.conf = conf
        self.cache_dir = cache_dir
        self.topics = registry_topics(plan, site)
        self.registry = Assembler()
        self._poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refused: set[tuple[str, str]] = set()
        self._next: dict[str, int] = {}

    def catch_up(self) -> None:
        """Read the registry to its end and serve what it says, before the flow starts."""
        ensure_topics(self.conf, [self.plan.topic_spec(MODELS_TOPIC)])
        for topic in self.topics:
            try:
                messages = read_topic(self.conf, topic)
            except Exception as exc:  # noqa: BLE001 - a missing mirror copy is not fatal
                _log.info("registry topic %s not readable yet: %s", topic, exc)
                continue
            for key, value, _headers, _partition, offset in messages:
                self.registry.add(key, value)
                self._next[topic] = offset + 1
        for name, router in self.routers.items():
            router.failed.update(self._failed(name))
            router.on_fallback = lambda routing, version, name=name: self._fell_back(
                name, routing, version
            )
        for name in self.routers:
            saved = self._saved(name)  # what served before a restart serves until replaced
            if saved is not None:
                self._serve(name, saved)
            self._serve(name)

    def start(self) -> RegistryWatcher:
        self._thread = threading.Thread(target=self._follow, name="mlexec-registry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def _follow(self) -> None:
        consumer = Consumer(
            {
                **self.conf,
                **CONSUMER_TUNING,
                "group.id": "mlexec-registry",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.assign(
                [TopicPartition(t, 0, self._next.get(t, OFFSET_BEGINNING)) for t in self.topics]
            )
            while not self._stop.is_set():
                for msg in consumer.consume(100, self._poll):
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            _log.debug("registry: %s", err)
                        continue
                    try:
                        event = self.registry.add(msg.key(), msg.value())
                    except Exception as exc:  # noqa: BLE001 - a bad message must not stop it
                        self._alert("?", f"unreadable registry message {msg.key()!r}: {exc}")
                        continue
                    if event is not None and event[1] in self.routers:
                        self._serve(event[1])
        finally:
            consumer.close()

    def _failed(self, usecase: str) -> dict[str, str]:
        path = self.cache_dir / usecase / "failed.json"
        return dict(orjson.loads(path.read_bytes())) if path.exists() else {}

    def _fell_back(self, usecase: str, routing: Routing, version: str) -> None:
        """A version failed at serve time: keep the fallback and the failure across restarts."""
        router = self.routers[usecase]
        self._write(usecase, "failed.json", orjson.dumps(router.failed))
        self._write(usecase, "serving.json", routing.value())
        self._alert(usecase, f"{routing.change} ({router.failed.get(version, '')})")

    def _write(self, usecase: str, name: str, data: bytes) -> None:
        path = self.cache_dir / usecase / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_bytes(data)
        path.with_suffix(".tmp").replace(path)

    def _saved(self, usecase: str) -> Routing | None:
        path = self.cache_dir / usecase / "serving.json"
        return Routing.parse(path.read_bytes()) if path.exists() else None

    def _serve(self, usecase: str, routing: Routing | None = None) -> bool:
        """Serve the registry's routing (or ``routing``); ``False`` if it was refused."""
        router = self.routers[usecase]
        routing = routing or self.registry.routings.get(usecase)
        if routing is None or routing == router.routing:
            return True
        broken = sorted(routing.serving() & set(router.failed))
        if broken:
            key = (usecase, routing.change)
            if key not in self._refused:
                self._refused.add(key)
                self._alert(
                    usecase,
                    f"version {broken[0]} failed at serve time ({router.failed[broken[0]]}); "
                    f"{routing.change or 'the new routing'} is not applied, "
                    f"{router.routing.production} keeps serving",
                )
            return False
        loaded = router.models()
        models: dict[str, OnnxModel] = {}
        try:
            for version in sorted(routing.serving()):
                models[version] = loaded.get(version) or self._load(router, version)
        except RegistryError as exc:
            key = (usecase, routing.change)
            if key not in self._refused:
                self._refused.add(key)
                self._alert(
                    usecase,
                    f"{exc}; {routing.change or 'the new routing'} is not applied, "
                    f"{router.routing.production} keeps serving",
                )
            return False
        router.swap(routing, models)
        self._write(usecase, "serving.json", routing.value())
        _log.warning("%s: %s", usecase, routing.change or "routing changed")
        return True

    def _load(self, router: ModelRouter, version: str) -> OnnxModel:
        uc = router.plan
        manifest = self.registry.manifests.get((uc.name, version))
        if manifest is None and version == router.default.version:
            return router.default  # the topology's own model file
        data = self.registry.artifact(uc.name, version)
        assert manifest is not None
        path = self.cache_dir / uc.name / f"{version}-{manifest.sha256[:16]}.onnx"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        what = f"{uc.name} version {version}"
        try:
            info = describe_model(path, uc.usecase.model.input_name)
            check_fits(uc, info, router.default.info, what)
            return OnnxModel(
                path,
                manifest.name,
                version,
                uc.model_inputs,
                input_name=uc.usecase.model.input_name,
                outputs=uc.usecase.model.outputs,
            )
        except ModelError as exc:
            msg = f"{what}: {exc}"
            raise RegistryError(msg) from exc

    def _alert(self, usecase: str, message: str) -> None:
        alert = {
            "kind": "model",
            "usecase": usecase,
            "site": self.site,
            "severity": "critical",
            "message": message,
            "at": int(time.time() * 1000),
        }
        send_alert(self.conf, alert)


# ---------------------------------------------------------------------- clients


def read_registry(conf: dict[str, Any]) -> Assembler:
    """The registry on a site's own ``mlexec.models``, as it is now."""
    registry = Assembler()
    for key, value, *_ in read_topic(conf, MODELS_TOPIC):
        registry.add(key, value)
    return registry


def current_routing(registry: Assembler, uc: UseCasePlan) -> Routing:
    """The use case's routing; before any change, the topology's model serves production."""
    return registry.routings.get(uc.name) or Routing(uc.name, production=uc.usecase.model.version)


def publish_model(
    plan: Plan,
    conf: dict[str, Any],
    uc: UseCasePlan,
    path: Path,
    version: str,
    stage: str = "candidate",
    traffic: float = 0.0,
) -> tuple[Manifest, Routing]:
    """Check ``path`` fits the use case, then put it on the registry at ``stage``."""
    ensure_topics(conf, [plan.topic_spec(MODELS_TOPIC)])
    try:
        info = describe_model(path, uc.usecase.model.input_name)
        default = describe_model(uc.usecase.model.path, uc.usecase.model.input_name)
    except ModelError as exc:
        raise RegistryError(str(exc)) from exc
    check_fits(uc, info, default, f"model {path}")
    registry = read_registry(conf)
    data = path.read_bytes()
    routing = current_routing(registry, uc).publish(version, stage, traffic)
    inputs = [(info.input_name, ["n", info.width])]
    outputs = [(n, k, ["n", w] if w else ["n"]) for n, k, w in info.outputs]
    name = uc.usecase.model.name
    manifest = manifest_of(uc.name, name, version, data, inputs, outputs, stage, traffic)
    before = registry.manifests.get((uc.name, version))
    if before is not None and before.sha256 != manifest.sha256:
        msg = f"{uc.name} version {version} is published with other bytes: versions are immutable, choose a new one"
        raise RegistryError(msg)
    produce_records(
        conf, MODELS_TOPIC, [*artifact_messages(manifest, data), routing_message(routing)]
    )
    return manifest, routing


def change_routing(
    conf: dict[str, Any], uc: UseCasePlan, change: Callable[[Routing], Routing]
) -> Routing:
    """Apply ``change`` to the use case's routing and publish the result."""
    registry = read_registry(conf)
    routing = change(current_routing(registry, uc))
    for version in routing.serving():
        if version != uc.usecase.model.version and (uc.name, version) not in registry.manifests:
            msg = f"{uc.name} has no published version {version}; mlexec model list shows those there are"
            raise RegistryError(msg)
    produce_records(conf, MODELS_TOPIC, [routing_message(routing)])
    return routing
