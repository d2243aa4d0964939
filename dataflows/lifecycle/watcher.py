"""The registry watcher: follows ``mlexec.models`` (and its mirrored copies) in a dataflow process.

It loads new versions — verifying the sha256 and that inputs and outputs fit the use
case — and swaps the routers. A version that is tampered with or does not fit is
refused with an alert on ``mlexec.alerts``, and what serves keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING

from mlexec.connectors.batchsource import send_alert
from mlexec.connectors.kafka import ensure_topics
from mlexec.connectors.reading import BACKGROUND_TUNING, TopicReader, read_topic
from mlexec.lifecycle.protocol import (
    Assembler,
    RegistryError,
    Routing,
)
from mlexec.lifecycle.registry import check_fits, registry_topics
from mlexec.lifecycle.router import ModelRouter
from mlexec.operators.infer import ModelError, OnnxModel, model_for
from mlexec.topologies.plan import MODELS_TOPIC, Plan

__all__ = [
    "RegistryWatcher",
]

_log = logging.getLogger(__name__)


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
                try:
                    self.registry.add(key, value)
                except Exception as exc:  # noqa: BLE001 - a bad message must not stop it
                    self._alert("?", f"unreadable registry message {key!r}: {exc}")
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
        # not strict: a mirrored copy of the registry may not exist yet
        reader = TopicReader(self.conf, "mlexec-registry", strict=False, settings=BACKGROUND_TUNING)
        try:
            reader.assign((t, 0, self._next.get(t, OFFSET_BEGINNING)) for t in self.topics)
            while not self._stop.is_set():
                for msg in reader.poll(100, self._poll):
                    try:
                        event = self.registry.add(msg.key(), msg.value())
                    except Exception as exc:  # noqa: BLE001 - a bad message must not stop it
                        self._alert("?", f"unreadable registry message {msg.key()!r}: {exc}")
                        continue
                    if event is not None and event[1] in self.routers:
                        self._serve(event[1])
        finally:
            reader.close()

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
        routing = routing or self.registry.routing_for(usecase, self.site)
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
            model = model_for(uc, path, name=manifest.name, version=version)
            check_fits(uc, model, router.default, what)
            return model
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
