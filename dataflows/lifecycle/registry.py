"""The registry's clients: where a use case's registry lives, publishing a version, changing its routing.

- :func:`publish_model` and :func:`change_routing` write the registry (``mlexec model``):
  a version's chunks and manifest, then the use case's new routing. A version is
  immutable: republishing it with other bytes is refused.
  The router (:mod:`mlexec.lifecycle.router`) serves what it says; the watcher
  (:mod:`mlexec.lifecycle.watcher`) follows it in the dataflow process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlexec.connectors.kafka import ensure_topics, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.errors import TopologyError
from mlexec.lifecycle.protocol import (
    Assembler,
    Manifest,
    RegistryError,
    Routing,
    artifact_messages,
    manifest_of,
    routing_message,
)
from mlexec.operators.infer import ModelError, OnnxModel, model_for
from mlexec.topologies.plan import MODELS_TOPIC, Plan, UseCasePlan, remote_name

__all__ = [
    "change_routing",
    "check_fits",
    "current_routing",
    "publish_model",
    "publish_trained_on",
    "read_registry",
    "registry_site",
    "registry_topics",
]

_log = logging.getLogger(__name__)


def registry_site(plan: Plan, uc: UseCasePlan) -> str:
    """Where a use case's versions are published: whence models come down to its infer site."""
    infer = uc.site("infer")
    members = uc.members(infer)  # a fleet's: where every member's models come from
    down = [link.target for link in plan.topology.links if link.source in members]
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


def check_fits(uc: UseCasePlan, model: OnnxModel, default: OnnxModel, what: str) -> None:
    """Refuse a version whose outputs differ from what the use case serves and stores.

    That the use case can feed it was checked when ``model`` was loaded for it (inputs by
    name, types cast, widths, feature names); here its outputs must be the ones the
    samples table, the predictions and monitoring were made for: same names, kinds,
    widths and class labels.
    """
    for name in default.outputs:
        if name not in model.outputs:
            have = [o.name for o in model.signature.outputs]
            msg = f"{what} has no output {name!r} (its outputs: {have})"
            raise RegistryError(msg)
        mine, theirs = model.signature.output(name), default.signature.output(name)
        if (mine.kind, mine.width) != (theirs.kind, theirs.width):
            msg = (
                f"{what} output {name!r} is {mine.describe()}; the use case serves "
                f"{theirs.describe()} (the samples table has that column)"
            )
            raise RegistryError(msg)
        if mine.classes != theirs.classes:
            msg = (
                f"{what} output {name!r} gives classes {list(mine.classes or [])}; the use "
                f"case serves {list(theirs.classes or [])} (its stored probabilities are in "
                "that order)"
            )
            raise RegistryError(msg)


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
        model = model_for(uc, path, version=version)
        default = model_for(uc)
    except ModelError as exc:
        msg = f"{path} does not fit use case {uc.name}: {exc}"
        raise RegistryError(msg) from exc
    check_fits(uc, model, default, f"model {path}")
    registry = read_registry(conf)
    data = path.read_bytes()
    routing = current_routing(registry, uc).publish(version, stage, traffic)
    inputs = [
        (f.spec.name, [f.spec.element, *("n" if d is None else d for d in f.spec.shape)])
        for f in model.feeds
    ]
    outputs = [
        (o.name, o.kind, ["n", o.width, *(o.classes or ())] if o.width else ["n"])
        for o in model.signature.outputs
        if o.name in model.outputs
    ]
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


def publish_trained_on(
    plan: Plan,
    conf: dict[str, Any],
    uc: UseCasePlan,
    path: Path,
    version: str,
    training_data: Path,
    *,
    stage: str = "candidate",
    traffic: float = 0.0,
    source: str = "<topology>",
) -> tuple[Manifest, Routing]:
    """:func:`publish_model`, and its training data recorded as reference ``model:<version>``.

    The data must hold every watched column; it is checked before anything is published.
    """
    from mlexec.connectors.samplestore import open_store
    from mlexec.monitoring.monitor import Monitor
    from mlexec.monitoring.references import read_reference_file

    frame = read_reference_file(str(training_data))
    watched = list(uc.usecase.monitoring.watch) if uc.usecase.monitoring else []
    missing = [c for c in watched if c not in frame.columns]
    if not watched or missing:
        msg = (
            f"--training-data: {training_data} becomes the reference of the watched values "
            f"({watched or 'none: declare monitoring.watch'}); missing columns: {missing}"
        )
        raise TopologyError(msg)
    published = publish_model(plan, conf, uc, path, version, stage, traffic)
    where = str(uc.site("store"))
    with open_store(plan.topology.sites[where].sample_store) as store:
        monitor = Monitor(plan, where, store, usecase=uc.name, source=source)
        monitor.prepare()
        monitor.record_reference(uc, frame, f"model:{version}")
    return published


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
