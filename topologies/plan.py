"""The plan a topology implies: topics, feature columns and tables per use case and site.

Pure derivation, no I/O: ``mlexec validate`` prints it, the dataflows build from it,
and later renderers (MirrorMaker 2, compose) read the same names.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from functools import cached_property

from mlexec.errors import TopologyError
from mlexec.topologies.schema import (
    Aggregate,
    Identity,
    KafkaOutput,
    OnRequest,
    SequenceReduction,
    Topology,
    UseCase,
    aggregation_column,
)

__all__ = [
    "ALERTS_TOPIC",
    "METRICS_TOPIC",
    "MODELS_TOPIC",
    "STAGES",
    "Plan",
    "TopicSpec",
    "Transfer",
    "UseCasePlan",
    "feature_columns",
    "plan_topology",
    "reduction_columns",
    "remote_name",
]

#: Alerts of every use case and part (monitoring, model life cycle, outputs).
ALERTS_TOPIC = "mlexec.alerts"
#: Model artifacts, compacted; published in the cloud, carried down to the edges.
MODELS_TOPIC = "mlexec.models"
#: Runtime health snapshots of every dataflow process, read by the monitor.
METRICS_TOPIC = "mlexec.metrics"


def remote_name(source_site: str, topic: str) -> str:
    """A topic's name on the other side of a link (MirrorMaker 2's default policy)."""
    return f"{source_site}.{topic}"


#: Stages of a use case in pipeline order.
STAGES = ("connectors", "dispatch", "infer", "store", "act")

_NUMERIC = ("float", "int", "bool")


@dataclass(frozen=True)
class TopicSpec:
    """A topic a site needs, with its partition count and topic configs."""

    name: str
    partitions: int
    config: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class UseCasePlan:
    """Names and columns derived from one use case."""

    name: str
    usecase: UseCase
    raw_topic: str
    reduced_topic: str
    predictions_topic: str
    samples_topic: str
    deadletter_topic: str
    #: On-request dispatch: where requests arrive and (by default) replies go.
    requests_topic: str
    replies_topic: str
    #: Labels for predictions (by record id, or key and event time), read by the monitor.
    feedback_topic: str
    #: Per-window profiles of the watched columns (``monitoring.profiles``), for the store.
    profiles_topic: str
    #: Where outputs put what they could not deliver, with the last error.
    outputs_deadletter_topic: str
    #: Columns after reduction, in order: what a model can take as input.
    features: tuple[str, ...]
    #: The columns fed to the model, in its input order (all inputs, in input order).
    model_inputs: tuple[str, ...]
    #: The type of each feature: the schema's (``float``, ``int``, ``bool``, ``str``)
    #: for fields passed through, ``float`` for what a reduction computes.
    feature_kinds: tuple[tuple[str, str], ...]
    #: Sample-store table (in the store's database).
    table: str
    #: Stage → site, or fleet: the stage runs on each of its members.
    sites: tuple[tuple[str, str], ...]
    #: Fleet → its members, for the fleets this use case is placed on.
    fleets: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def kind(self, column: str) -> str:
        """The type of feature ``column`` (``float`` for a computed one)."""
        return dict(self.feature_kinds).get(column, "float")

    @property
    def declared_inputs(self) -> tuple[str, ...] | dict[str, list[str]] | None:
        """``model.inputs`` as the model loader takes it (``input_name`` folded in)."""
        model = self.usecase.model
        if model.input_name is not None and not isinstance(model.inputs, dict):
            return {model.input_name: list(model.inputs or self.features)}
        return (
            model.inputs
            if isinstance(model.inputs, dict)
            else (tuple(model.inputs) if model.inputs is not None else None)
        )

    def site(self, stage: str) -> str:
        """The site running ``stage`` (or the fleet, on each of whose members it runs)."""
        return dict(self.sites)[stage]

    def members(self, placed: str) -> tuple[str, ...]:
        """The sites a placement stands for: a fleet's members, or the one site."""
        return dict(self.fleets).get(placed, (placed,))

    def from_fleet(self, stage: str) -> bool:
        """Whether ``stage`` runs on a fleet (its output comes from every member)."""
        return self.site(stage) in dict(self.fleets)

    def seen_from(self, site: str) -> UseCasePlan:
        """The use case as member ``site`` of a fleet runs it: the fleet's stages on it."""
        placed = {fleet for fleet, members in self.fleets if site in members}
        if not placed:
            return self
        sites = tuple((stage, site if s in placed else s) for stage, s in self.sites)
        return replace(self, sites=sites)

    def read_names(self, topic: str, producer: str, consumer: str) -> tuple[str, ...]:
        """The names ``topic`` (written by stage ``producer``) has where ``consumer`` runs.

        The same name on the same site; across a link, the mirrored ``<site>.<topic>`` —
        one per member when the producer runs on a fleet.
        """
        made_on = self.site(producer)
        if made_on == self.site(consumer):
            return (topic,)
        return tuple(remote_name(m, topic) for m in self.members(made_on))

    def read_name(self, topic: str, producer: str, consumer: str) -> str:
        """The one name ``topic`` has where ``consumer`` runs (see :meth:`read_names`)."""
        names = self.read_names(topic, producer, consumer)
        if len(names) != 1:
            msg = (
                f"{self.name}: {topic} comes from {len(names)} fleet members to where "
                f"{consumer} runs: read it with read_names"
            )
            raise ValueError(msg)
        return names[0]

    def site_of_topic(self, name: str, topic: str, producer: str) -> str | None:
        """The site that produced ``name``, when ``producer`` runs there; else ``None``.

        ``name`` is ``topic`` itself, or a member's mirrored copy ``<member>.<topic>``.
        """
        placed = self.site(producer)
        if name == topic:
            return placed if placed not in dict(self.fleets) else None
        member, _, rest = name.partition(".")
        return member if rest == topic and member in self.members(placed) else None

    @property
    def split(self) -> bool:
        """Whether reduction and inference run on different sites (via ``<uc>.reduced``)."""
        return self.site("dispatch") != self.site("infer")

    @property
    def profiled(self) -> bool:
        """Whether the inference site sends profiles of the watched columns."""
        mon = self.usecase.monitoring
        return mon is not None and mon.profiles is not None

    @property
    def on_request(self) -> bool:
        return isinstance(self.usecase.dispatch, OnRequest)

    def topics(self) -> list[TopicSpec]:
        """Every topic of this use case."""
        parts = self.usecase.input.partitions
        requests = (
            [TopicSpec(self.requests_topic, parts), TopicSpec(self.replies_topic, parts)]
            if self.on_request
            else []
        )
        return [
            TopicSpec(self.raw_topic, parts),
            TopicSpec(self.reduced_topic, parts),
            TopicSpec(self.predictions_topic, parts),
            TopicSpec(self.samples_topic, parts),
            TopicSpec(self.deadletter_topic, 1),
            TopicSpec(self.feedback_topic, parts),
            *([TopicSpec(self.profiles_topic, parts)] if self.profiled else []),
            *requests,
            *self.output_topics(),
        ]

    def output_topics(self) -> list[TopicSpec]:
        """Topics the outputs write on the site's own cluster: Kafka outputs, their dead letters."""
        outputs = self.usecase.outputs
        if not outputs:
            return []
        parts = self.usecase.input.partitions
        return [
            *(
                TopicSpec(out.topic, parts)
                for out in outputs
                if isinstance(out, KafkaOutput) and out.kafka is None
            ),
            TopicSpec(self.outputs_deadletter_topic, 1),
            *([TopicSpec(ALERTS_TOPIC, 1)] if any(o.source == "alerts" for o in outputs) else []),
        ]


@dataclass(frozen=True)
class Transfer:
    """Topics one direction of a link carries: produced on ``source``, needed on ``target``."""

    source: str
    target: str
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """Everything a topology implies, per use case."""

    topology: Topology
    usecases: dict[str, UseCasePlan]

    @cached_property
    def digest(self) -> str:
        """The topology's fingerprint (secrets masked): equal on every site that loaded it.

        The files the loader resolves against the topology's directory (models,
        pre-models, reduction packages, references) count relative to it, so a copy of
        the topology and its files elsewhere (a follower's bundle) has the same digest.
        """
        if not self.topology.directory:
            text = self.topology.model_dump_json()
            return hashlib.sha256(text.encode()).hexdigest()[:12]
        doc = self.topology.model_dump(mode="json")
        here = self.topology.directory + "/"
        for uc in doc["usecases"].values():
            monitoring = uc.get("monitoring") or {}
            for part, key in (
                (uc.get("model"), "path"),
                (uc.get("reduction"), "path"),
                (uc.get("reduction"), "package"),
                (monitoring.get("reference"), "path"),
            ):
                if not isinstance(part, dict):
                    continue
                value = part.get(key)
                if isinstance(value, str) and value.startswith(here):
                    part[key] = "${TOPOLOGY_DIR}/" + value[len(here) :]
        text = json.dumps(doc, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def usecases_at(self, site: str) -> list[UseCasePlan]:
        """Use cases with at least one stage on ``site``, as ``site`` sees them.

        On a fleet's member, the stages placed on the fleet are on the member.
        """
        seen = (uc.seen_from(site) for uc in self.usecases.values())
        return [uc for uc in seen if site in dict(uc.sites).values()]

    def usecases_seen(self, site: str) -> dict[str, UseCasePlan]:
        """Every use case by name, as ``site`` sees it (see :meth:`usecases_at`)."""
        return {name: uc.seen_from(site) for name, uc in self.usecases.items()}

    def chosen_at(
        self, site: str, usecase: str | None = None, stage: str | None = None
    ) -> list[UseCasePlan]:
        """The use cases with a stage (``stage``, or any) on ``site``, or just ``usecase``.

        Refuses an unknown site or use case, naming the ones there are.
        """
        self.require_site(site)
        if usecase is not None and usecase not in self.usecases:
            msg = (
                f"no use case {usecase!r} in topology {self.topology.name!r}; "
                f"use cases: {sorted(self.usecases)}"
            )
            raise TopologyError(msg)
        return [
            uc
            for uc in self.usecases_at(site)
            if (usecase is None or uc.name == usecase) and (stage is None or uc.site(stage) == site)
        ]

    def topics_at(self, site: str) -> list[TopicSpec]:
        """Topics the processes of ``site`` read or write."""
        # every process may report health or raise an alert, and follows the registry
        seen: dict[str, TopicSpec] = {
            name: self.topic_spec(name) for name in (METRICS_TOPIC, ALERTS_TOPIC, MODELS_TOPIC)
        }
        for uc in self.usecases_at(site):
            for spec in uc.topics():
                seen.setdefault(spec.name, spec)
            parts = uc.usecase.input.partitions
            hops = [
                (uc.samples_topic, "infer", "store"),
                (uc.predictions_topic, "infer", "act"),
                (uc.reduced_topic, "dispatch", "infer"),
            ]
            if uc.on_request:
                hops.append((uc.replies_topic, "infer", "dispatch"))
            if uc.profiled:
                hops.append((uc.profiles_topic, "infer", "store"))
            for topic, producer, consumer in hops:
                if uc.site(consumer) == site:
                    for name in uc.read_names(topic, producer, consumer):
                        seen.setdefault(name, TopicSpec(name, parts))
        return list(seen.values())

    def needs(self) -> dict[tuple[str, str], set[str]]:
        """Per (producing site, consuming site), the use-case topics the placement moves."""
        return {pair: set(topics) for pair, topics in self._needs.items()}

    @cached_property
    def _needs(self) -> dict[tuple[str, str], frozenset[str]]:
        """:meth:`needs`, worked out once (a fleet's thousand links ask for it each)."""
        moves: dict[tuple[str, str], set[str]] = {}
        for uc in self.usecases.values():
            hops = [
                (uc.raw_topic, "connectors", "dispatch"),
                (uc.reduced_topic, "dispatch", "infer"),
                (uc.samples_topic, "infer", "store"),
            ]
            if uc.on_request:
                hops.append((uc.replies_topic, "infer", "dispatch"))
            if uc.profiled:
                hops.append((uc.profiles_topic, "infer", "store"))
            if uc.usecase.outputs:
                hops.append((uc.predictions_topic, "infer", "act"))
            for topic, producer, consumer in hops:
                if uc.usecase.connectors or producer != "connectors":
                    a, b = uc.site(producer), uc.site(consumer)
                    if a == b:
                        continue
                    for made in uc.members(a):
                        for read in uc.members(b):
                            moves.setdefault((made, read), set()).add(topic)
        return {pair: frozenset(topics) for pair, topics in moves.items()}

    def metrics_topics_at(self, site: str) -> list[str]:
        """The runtime health topics a monitor on ``site`` reads: its own, and its edges'."""
        return [
            METRICS_TOPIC,
            *(
                remote_name(link.source, METRICS_TOPIC)
                for link in self.topology.links
                if link.target == site
            ),
        ]

    def alerts_topics_at(self, site: str) -> list[str]:
        """The alerts mirrored up to ``site`` from its edges (a fleet's members'), by edge."""
        return [
            remote_name(link.source, ALERTS_TOPIC)
            for link in self.topology.links
            if link.target == site
        ]

    def transfers(self) -> list[Transfer]:
        """Both directions of every link: what the placement needs, alerts and health up, models down."""
        return list(self._transfers)

    @cached_property
    def _transfers(self) -> tuple[Transfer, ...]:
        needs = self._needs
        out = []
        for link in self.topology.links:
            up = needs.get((link.source, link.target), set()) | {ALERTS_TOPIC, METRICS_TOPIC}
            down = needs.get((link.target, link.source), set()) | {MODELS_TOPIC}
            out.append(Transfer(link.source, link.target, tuple(sorted(up))))
            out.append(Transfer(link.target, link.source, tuple(sorted(down))))
        return tuple(out)

    def transfer(self, source: str, target: str) -> Transfer:
        """What flows from ``source`` to ``target`` over the link between them."""
        return self._by_pair[(source, target)]

    @cached_property
    def _by_pair(self) -> dict[tuple[str, str], Transfer]:
        return {(t.source, t.target): t for t in self._transfers}

    def topic_spec(self, name: str) -> TopicSpec:
        """Partitions and configs of a topic the topology names (alerts, models included)."""
        if name == MODELS_TOPIC:
            return TopicSpec(name, 1, (("cleanup.policy", "compact"),))
        if name.endswith(METRICS_TOPIC):  # health snapshots: a week is plenty in Kafka
            return TopicSpec(name, 1, (("retention.ms", str(7 * 86_400_000)),))
        for uc in self.usecases.values():
            for spec in uc.topics():
                if spec.name == name:
                    return spec
        return TopicSpec(name, 1)

    def usecase_named(self, name: str) -> UseCasePlan:
        """The use case ``name``; an unknown name is refused, naming the ones there are."""
        if name not in self.usecases:
            msg = f"no use case {name!r}; use cases: {sorted(self.usecases)}"
            raise TopologyError(msg)
        return self.usecases[name]

    def require_site(self, site: str) -> None:
        """Refuse an unknown site name, naming the ones there are."""
        if site not in self.topology.sites:
            msg = f"no site {site!r} in topology {self.topology.name!r}; sites: {sorted(self.topology.sites)}"
            raise TopologyError(msg)


def _ident(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


#: The one column a sequence reduction gives: ``[length, fields]`` per reduced row.
SEQUENCE_COLUMN = "sequence"


def sequence_kind(length: int, fields: int) -> str:
    """The feature kind of a sequence column: ``sequence[<length>,<fields>]``."""
    return f"sequence[{length},{fields}]"


def reduction_columns(uc: UseCase) -> tuple[str, ...]:
    """Columns the reduction itself produces, in order (before any stateful ones)."""
    red = uc.reduction
    if isinstance(red, Aggregate):
        return tuple(aggregation_column(f, a) for f, aggs in red.fields.items() for a in aggs)
    if isinstance(red, SequenceReduction):
        return (SEQUENCE_COLUMN,)
    if not isinstance(red, Identity):
        return tuple(red.columns)
    schema = uc.input.schema_
    return tuple(
        name
        for name, kind in schema.items()
        if kind in (*_NUMERIC, "str") and name not in (uc.input.key, uc.input.time)
    )


def feature_columns(uc: UseCase, source: str = "<topology>", name: str = "?") -> tuple[str, ...]:
    """Columns the reduction produces, in order: its own, then ``_ewma`` and ``_diff`` ones."""
    base = reduction_columns(uc)
    state = uc.reduction.stateful
    if state is None:
        return base
    wanted = [("ewma", c) for c in (state.ewma.columns if state.ewma else [])]
    wanted += [("diff", c) for c in state.diff]
    for kind, column in wanted:
        if column not in base:
            path = "ewma.columns" if kind == "ewma" else "diff"
            msg = (
                f"{source}: usecases.{name}.reduction.stateful.{path}: expected a reduced "
                f"column of {list(base)}, found {column!r}"
            )
            raise TopologyError(msg)
    return base + tuple(f"{c}_{kind}" for kind, c in wanted)


#: What a fleet's members run of a use case placed on it: all of these, or none.
_FLEET_STAGES = ("connectors", "dispatch", "infer")


def _check_fleet_placement(uc: UseCasePlan, source: str) -> None:
    """A fleet runs a use case's front (connectors, dispatch, infer) on every member.

    Store and act run on each member too (the same fleet) or on one site that serves
    the whole fleet, e.g. the cloud.
    """
    fleets = dict(uc.fleets)
    if not fleets:
        return
    placed = dict(uc.sites)
    front = {placed[st] for st in _FLEET_STAGES if st != "connectors" or uc.usecase.connectors}
    for stage in ("store", "act"):
        if placed[stage] in fleets and front != {placed[stage]}:
            msg = (
                f"{source}: usecases.{uc.name}.placement.{stage}: the fleet that runs infer, "
                f"or a site that serves the whole fleet, found fleet {placed[stage]!r}"
            )
            raise TopologyError(msg)
    if len(front) != 1 or not front <= set(fleets):
        where = ", ".join(f"{st}: {placed[st]}" for st in _FLEET_STAGES)
        msg = (
            f"{source}: usecases.{uc.name}.placement: a fleet runs a use case's connectors, "
            f"dispatch and infer together, on every member; found {where}"
        )
        raise TopologyError(msg)


def plan_topology(topology: Topology, source: str = "<topology>") -> Plan:
    """Derive the plan; refuse model inputs no stage produces (naming the YAML path)."""
    plans: dict[str, UseCasePlan] = {}
    for name, uc in topology.usecases.items():
        features = feature_columns(uc, source, name)
        if not features:
            msg = (
                f"{source}: usecases.{name}.input.schema: expected at least one field "
                "(float, int, bool, str) besides key and time to feed the model, found none"
            )
            raise TopologyError(msg)
        declared = uc.model.inputs
        if isinstance(declared, dict):
            paths = [(f"{k}.{i}", c) for k, cols in declared.items() for i, c in enumerate(cols)]
            inputs = tuple(c for cols in declared.values() for c in cols)
        else:
            inputs = tuple(declared) if declared is not None else features
            paths = [(str(i), c) for i, c in enumerate(inputs)]
        for where, column in paths:
            if column not in features:
                msg = (
                    f"{source}: usecases.{name}.model.inputs.{where}: expected a column of "
                    f"{list(features)}, found {column!r}"
                )
                raise TopologyError(msg)
        schema = uc.input.schema_
        identity = isinstance(uc.reduction, Identity)
        kinds: tuple[tuple[str, str], ...] = tuple(
            (c, schema[c] if identity and c in schema else "float") for c in features
        )
        if isinstance(uc.reduction, SequenceReduction):
            kinds = (
                (SEQUENCE_COLUMN, sequence_kind(uc.reduction.length, len(uc.reduction.fields))),
            )
        plans[name] = UseCasePlan(
            name=name,
            usecase=uc,
            raw_topic=uc.input.topic or f"{name}.raw",
            reduced_topic=f"{name}.reduced",
            predictions_topic=f"{name}.predictions",
            samples_topic=f"{name}.samples",
            deadletter_topic=f"{name}.deadletter",
            requests_topic=f"{name}.requests",
            replies_topic=f"{name}.replies",
            feedback_topic=f"{name}.feedback",
            profiles_topic=f"{name}.profiles",
            outputs_deadletter_topic=f"{name}.outputs.deadletter",
            features=features,
            model_inputs=inputs,
            feature_kinds=kinds,
            table=f"samples_{_ident(name)}",
            sites=(sites := tuple((stage, topology.site_of(name, stage)) for stage in STAGES)),
            fleets=tuple(
                (fleet, topology.fleets[fleet].names)
                for fleet in sorted({s for _, s in sites} & set(topology.fleets))
            ),
        )
        _check_fleet_placement(plans[name], source)
    plan = Plan(topology=topology, usecases=plans)
    linked = {frozenset((link.source, link.target)) for link in topology.links}
    for (a, b), topics in sorted(plan.needs().items()):
        if frozenset((a, b)) not in linked:
            msg = (
                f"{source}: links: topics {sorted(topics)} are produced on site {a!r} and needed "
                f"on site {b!r}, but no link connects them; add links: [{{source: {a}, target: {b}}}]"
            )
            raise TopologyError(msg)
    return plan
