"""The plan a topology implies: topics, feature columns and tables per use case and site.

Pure derivation, no I/O: ``mlexec validate`` prints it, the dataflows build from it,
and later renderers (MirrorMaker 2, compose) read the same names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from topologies.errors import TopologyError
from topologies.schema import Aggregate, KafkaOutput, Topology, UseCase

__all__ = ["ALERTS_TOPIC", "STAGES", "Plan", "TopicSpec", "UseCasePlan", "plan_topology"]

#: Alerts of every use case and part (monitoring, model life cycle, outputs).
ALERTS_TOPIC = "mlexec.alerts"

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
    #: Where outputs put what they could not deliver, with the last error.
    outputs_deadletter_topic: str
    #: Columns after reduction, in order: what a model can take as input.
    features: tuple[str, ...]
    #: The columns fed to the model, in its input order.
    model_inputs: tuple[str, ...]
    #: Sample-store table (in the store's database).
    table: str
    #: Stage → site.
    sites: tuple[tuple[str, str], ...]

    def site(self, stage: str) -> str:
        """The site running ``stage``."""
        return dict(self.sites)[stage]

    def topics(self) -> list[TopicSpec]:
        """Every topic of this use case."""
        parts = self.usecase.input.partitions
        return [
            TopicSpec(self.raw_topic, parts),
            TopicSpec(self.reduced_topic, parts),
            TopicSpec(self.predictions_topic, parts),
            TopicSpec(self.samples_topic, parts),
            TopicSpec(self.deadletter_topic, 1),
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
class Plan:
    """Everything a topology implies, per use case."""

    topology: Topology
    usecases: dict[str, UseCasePlan]

    def usecases_at(self, site: str) -> list[UseCasePlan]:
        """Use cases with at least one stage on ``site``."""
        return [uc for uc in self.usecases.values() if site in dict(uc.sites).values()]

    def topics_at(self, site: str) -> list[TopicSpec]:
        """Topics the processes of ``site`` read or write."""
        seen: dict[str, TopicSpec] = {}
        for uc in self.usecases_at(site):
            for topic in uc.topics():
                seen.setdefault(topic.name, topic)
        return list(seen.values())

    def require_site(self, site: str) -> None:
        """Refuse an unknown site name, naming the ones there are."""
        if site not in self.topology.sites:
            msg = f"no site {site!r} in topology {self.topology.name!r}; sites: {sorted(self.topology.sites)}"
            raise TopologyError(msg)


def _ident(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def feature_columns(uc: UseCase) -> tuple[str, ...]:
    """Columns the reduction produces, in order."""
    if isinstance(uc.reduction, Aggregate):
        return tuple(
            f"{field}_{agg}" for field, aggs in uc.reduction.fields.items() for agg in aggs
        )
    schema = uc.input.schema_
    return tuple(
        name
        for name, kind in schema.items()
        if kind in _NUMERIC and name not in (uc.input.key, uc.input.time)
    )


def plan_topology(topology: Topology, source: str = "<topology>") -> Plan:
    """Derive the plan; refuse model inputs no stage produces (naming the YAML path)."""
    plans: dict[str, UseCasePlan] = {}
    for name, uc in topology.usecases.items():
        features = feature_columns(uc)
        if not features:
            msg = (
                f"{source}: usecases.{name}.input.schema: expected at least one numeric field "
                "(float, int, bool) besides key and time to feed the model, found none"
            )
            raise TopologyError(msg)
        inputs = tuple(uc.model.inputs) if uc.model.inputs is not None else features
        for i, column in enumerate(inputs):
            if column not in features:
                msg = (
                    f"{source}: usecases.{name}.model.inputs.{i}: expected a column of "
                    f"{list(features)}, found {column!r}"
                )
                raise TopologyError(msg)
        plans[name] = UseCasePlan(
            name=name,
            usecase=uc,
            raw_topic=uc.input.topic or f"{name}.raw",
            reduced_topic=f"{name}.reduced",
            predictions_topic=f"{name}.predictions",
            samples_topic=f"{name}.samples",
            deadletter_topic=f"{name}.deadletter",
            outputs_deadletter_topic=f"{name}.outputs.deadletter",
            features=features,
            model_inputs=inputs,
            table=f"samples_{_ident(name)}",
            sites=tuple((stage, topology.site_of(name, stage)) for stage in STAGES),
        )
    return Plan(topology=topology, usecases=plans)
