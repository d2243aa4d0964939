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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from connectors.kafka import CONSUMER_TUNING, ensure_topics, produce_records, read_topic
from operators.infer import ModelError, ModelInfo, OnnxModel, Predictions, describe_model
from operators.records import Records
from operators.registry import (
    Assembler,
    Manifest,
    RegistryError,
    Routing,
    artifact_messages,
    key_shares,
    manifest_of,
    routing_message,
)
from topologies.plan import ALERTS_TOPIC, MODELS_TOPIC, Plan, UseCasePlan, remote_name

__all__ = [
    "Inferred",
    "ModelRouter",
    "RegistryWatcher",
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


class ModelRouter:
    """The versions serving one use case and the split of its keys between them."""

    def __init__(self, plan: UseCasePlan, default: OnnxModel) -> None:
        self.plan = plan
        self.default = default
        self._served = _Served(
            Routing(plan.name, production=default.version), {default.version: default}
        )

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
                    out.append(Inferred(model(records.take(mask)), model, variant))
            rest = ~taken
            if rest.any():
                part = records if rest.all() else records.take(rest)
                out.append(Inferred(production(part), production, "production"))
        else:
            out.append(Inferred(production(records), production, "production"))
        for version in routing.shadow:
            model = models[version]
            out.append(Inferred(model(records), model, "shadow", shadow=True))
        return out


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

    def _saved(self, usecase: str) -> Routing | None:
        path = self.cache_dir / usecase / "serving.json"
        return Routing.parse(path.read_bytes()) if path.exists() else None

    def _serve(self, usecase: str, routing: Routing | None = None) -> bool:
        """Serve the registry's routing (or ``routing``); ``False`` if it was refused."""
        router = self.routers[usecase]
        routing = routing or self.registry.routings.get(usecase)
        if routing is None or routing == router.routing:
            return True
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
        saved = self.cache_dir / usecase / "serving.json"
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.with_suffix(".tmp").write_bytes(routing.value())
        saved.with_suffix(".tmp").replace(saved)
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
        _log.error("model registry: %s", message)
        alert = {
            "kind": "model",
            "usecase": usecase,
            "site": self.site,
            "severity": "critical",
            "message": message,
            "at": int(time.time() * 1000),
        }
        try:
            produce_records(self.conf, ALERTS_TOPIC, [(usecase.encode(), orjson.dumps(alert))])
        except Exception as exc:  # noqa: BLE001 - an alert that cannot be sent is logged
            _log.error("could not send the alert: %s", exc)


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
