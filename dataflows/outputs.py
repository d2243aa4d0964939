"""Acting on the answer: each declared output consumes ``<uc>.predictions`` and delivers.

One :class:`OutputRunner` per output, in a thread of ``mlexec act``. A step consumes
what the predictions topic has, keeps what the ``when`` filter and the debounce let
through, hands it to the sink, sends what the sink could not deliver to
``<uc>.outputs.deadletter`` with the last error, and — once the sink says everything
is durable — checkpoints the next offsets, the debounce state and the sink's state in
``<state_dir>/outputs/<topology>/<usecase>.<name>.json``. Partitions are assigned, not
group-joined, so several outputs read the same topic independently.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Message,
)

from mlexec.connectors.delivery import ReliableProducer
from mlexec.connectors.kafka import client_config, ensure_topics
from mlexec.connectors.outputs import Action, FileSink, HttpSink, KafkaSink, MqttSink, OutputSink
from mlexec.connectors.reading import TopicReader
from mlexec.connectors.runner import Checkpoint, SiteParts, StatusCollector, run_restarting
from mlexec.errors import TopologyError
from mlexec.operators.act import ActionFilter, ActionFilterError, Debouncer
from mlexec.topologies.plan import ALERTS_TOPIC, Plan, TopicSpec
from mlexec.topologies.schema import FileOutput, HttpOutput, KafkaOutput, MqttOutput, Output

__all__ = ["OutputCollector", "OutputRunner", "OutputStatus", "prepare_outputs", "run_outputs"]

_STEP = 1000  # predictions consumed per step


@dataclass
class OutputStatus:
    """What an output has done since its process started; exported to Prometheus."""

    usecase: str
    output: str
    kind: str
    target: str = ""
    consumed: int = 0
    delivered: int = 0
    filtered: int = 0
    debounced: int = 0
    retried: int = 0
    deadlettered: int = 0
    errors: int = 0
    #: Seconds from a prediction being produced to its delivery: total and count.
    latency_sum: float = 0.0
    latency_count: int = 0
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


class OutputRunner:
    """Deliver one use case's predictions to one output."""

    def __init__(
        self,
        *,
        output_id: str,
        config: Output,
        status: OutputStatus,
        make_sink: Callable[[dict[str, Any] | None], OutputSink],
        conf: dict[str, Any],
        predictions_topic: str,
        deadletter_topic: str,
        checkpoint: Checkpoint,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.output_id = output_id
        self.config = config
        self.status = status
        self._make_sink = make_sink
        self._conf = conf
        self._topic = predictions_topic
        self._dead = deadletter_topic
        self.checkpoint = checkpoint
        self._clock = clock
        self._filter = ActionFilter(config.when)

    def run(self, stop: threading.Event, *, once: bool = False) -> None:
        """Run until ``stop`` is set or, with ``once``, until the predictions are all handled."""
        run_restarting(
            lambda: self._run(stop, once),
            stop,
            once=once,
            status=self.status,
            what=f"output {self.output_id}",
        )

    def _run(self, stop: threading.Event, once: bool) -> None:
        saved = self.checkpoint.load() or {}
        offsets = {int(p): o for p, o in saved.get("offsets", {}).items()}
        debounce = self.config.debounce
        debouncer = (
            Debouncer(
                debounce.every,
                debounce.on_change,
                max_keys=debounce.max_keys,
                clock=self._clock,
                state=saved.get("debounce"),
            )
            if debounce is not None
            else None
        )
        reader = TopicReader(self._conf, "mlexec-act", reset=self.config.start)
        sink: OutputSink | None = None
        producer = ReliableProducer(self._conf, what=f"output {self.output_id}")
        try:
            default = OFFSET_BEGINNING if self.config.start == "earliest" else OFFSET_END
            reader.assign_topics(
                [self._topic], {(self._topic, p): o for p, o in offsets.items()}, default=default
            )
            sink = self._make_sink(saved.get("sink"))
            with self.status.lock:
                self.status.target = sink.target
            dirty = False  # state not checkpointed yet
            while not stop.is_set():
                good = reader.poll(_STEP, 0.2)
                if good:
                    self._step(good, sink, debouncer, producer)
                    for msg in good:
                        offsets[cast(int, msg.partition())] = cast(int, msg.offset()) + 1
                    dirty = True
                dirty = sink.tick() or dirty
                if dirty and sink.commit():
                    self._save(offsets, debouncer, sink)
                    dirty = False
                if once and not good and reader.done:
                    break
            sink.close()
            if sink.commit():
                self._save(offsets, debouncer, sink)
        finally:
            reader.close()
            producer.flush(30.0)

    def _step(
        self,
        messages: list[Message],
        sink: OutputSink,
        debouncer: Debouncer | None,
        producer: ReliableProducer,
    ) -> None:
        predictions: list[dict[str, Any]] = []
        produced_at: list[float] = []
        raw: list[bytes] = []
        broken: list[tuple[bytes, str]] = []
        for msg in messages:
            value = msg.value() or b""
            try:
                prediction = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                broken.append((value, f"not a prediction (JSON): {exc}"))
                continue
            if not isinstance(prediction, dict):
                broken.append((value, "expected a JSON object"))
                continue
            if "id" not in prediction:
                if self.config.source == "predictions":
                    broken.append((value, "not a prediction: expected an object with an id"))
                    continue
                prediction["id"] = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"
                value = orjson.dumps(prediction)
            predictions.append(prediction)
            raw.append(value)
            produced_at.append(msg.timestamp()[1] / 1000.0)
        keep = self._filter(predictions)
        filtered = int((~keep).sum())
        debounced = 0
        if debouncer is not None:
            chosen = [p for p, k in zip(predictions, keep, strict=True) if k]
            spared = debouncer(chosen)
            debounced = int((~spared).sum())
            it = iter(spared)
            keep = keep.copy()
            for i, k in enumerate(keep):
                if k:
                    keep[i] = next(it)
        actions = [
            Action(str(p["id"]), str(p.get("key")), p, raw[i])
            for i, p in enumerate(predictions)
            if keep[i]
        ]
        retried_before = sink.retried
        failures = sink.deliver(actions) if actions else []
        now = time.time()
        failed_ids = {a.id for a, _ in failures}
        latencies = [
            now - produced_at[i]
            for i, p in enumerate(predictions)
            if keep[i] and str(p["id"]) not in failed_ids
        ]
        dead = [(a.value, reason) for a, reason in failures] + broken
        if dead:
            self._dead_letter(producer, dead)
        with self.status.lock:
            s = self.status
            s.consumed += len(messages)
            s.filtered += filtered
            s.debounced += debounced
            s.delivered += len(actions) - len(failures)
            s.deadlettered += len(dead)
            s.retried += sink.retried - retried_before
            s.latency_sum += sum(latencies)
            s.latency_count += len(latencies)
            if failures:
                s.last_error = failures[-1][1]

    def _dead_letter(self, producer: ReliableProducer, dead: list[tuple[bytes, str]]) -> None:
        for value, reason in dead:
            headers: list[tuple[str, str | bytes | None]] = [
                ("mlexec.output", self.output_id.encode()),
                ("mlexec.reason", reason.encode()),
                ("mlexec.stage", b"output"),
            ]
            producer.produce(self._dead, value, headers=headers)
        producer.flush(60.0)

    def _save(self, offsets: dict[int, int], debouncer: Debouncer | None, sink: OutputSink) -> None:
        self.checkpoint.save(
            {
                "output": self.output_id,
                "offsets": {str(p): o for p, o in offsets.items()},
                "debounce": debouncer.state() if debouncer is not None else None,
                "sink": sink.state(),
                "saved_at": time.time(),
            }
        )


class OutputCollector(StatusCollector):
    """Prometheus metrics of a set of outputs."""

    def __init__(self, statuses: list[OutputStatus]) -> None:
        super().__init__(
            "mlexec_output",
            statuses,
            labels=["usecase", "output", "kind"],
            counters={
                "consumed": "Predictions read from the predictions topic",
                "delivered": "Predictions delivered",
                "filtered": "Predictions the 'when' condition left out",
                "debounced": "Predictions the debounce left out",
                "retried": "Delivery attempts that failed and were tried again",
                "deadlettered": "Predictions sent to the output dead-letter topic",
                "errors": "Failed steps (the output starts over from its checkpoint)",
                "latency_sum": "Seconds from prediction to delivery, summed",
                "latency_count": "Deliveries the latency sum covers",
            },
        )


#: The runners of a site's outputs and the topics they need.
SiteOutputs = SiteParts[OutputRunner]


def _make_sink(
    config: Output, conf: dict[str, Any], output_id: str, state: dict[str, Any] | None
) -> OutputSink:
    if isinstance(config, KafkaOutput):
        if config.kafka is not None:  # another cluster: its topic is made here, never auto
            target = client_config(config.kafka)
            ensure_topics(target, [TopicSpec(config.topic, 1)])
            return KafkaSink(config, target)
        return KafkaSink(config, conf)
    if isinstance(config, HttpOutput):
        return HttpSink(config)
    if isinstance(config, MqttOutput):
        return MqttSink(config, client_id=f"mlexec-{output_id}".replace("/", "-"))
    if isinstance(config, FileOutput):
        return FileSink(config, state)
    msg = f"unknown output kind {config.kind!r}"  # pragma: no cover - the schema refuses it
    raise ValueError(msg)


def prepare_outputs(
    plan: Plan,
    site: str,
    usecase: str | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> SiteOutputs:
    """Build (without starting) the runners of the outputs whose ``act`` stage is on ``site``."""
    topology = plan.topology
    settings = topology.sites[site]
    conf = client_config(settings.kafka)
    state_dir = Path(settings.state_dir) / "outputs" / topology.name
    runners: list[OutputRunner] = []
    topics: dict[str, TopicSpec] = {}
    for uc in plan.chosen_at(site, usecase, "act"):
        # a fleet's predictions come on one mirrored topic per member: a runner each
        sources = uc.read_names(uc.predictions_topic, "infer", "act")
        for i, config in enumerate(uc.usecase.outputs):
            name = config.name or config.kind
            try:
                ActionFilter(config.when)
            except ActionFilterError as exc:
                msg = f"usecases.{uc.name}.outputs.{i}.when: expected {exc}"
                raise TopologyError(msg) from exc
            reads = [ALERTS_TOPIC] if config.source == "alerts" else list(sources)
            for topic in reads:
                # a fleet's runners are named by member however many there are, so a
                # second member never renames (and re-delivers) the first one's
                member = uc.site_of_topic(topic, uc.predictions_topic, "infer")
                of = f".{member}" if member and uc.from_fleet("infer") else ""
                output_id = f"{topology.name}/{uc.name}/{name}{of}"
                runners.append(
                    OutputRunner(
                        output_id=output_id,
                        config=config,
                        status=OutputStatus(uc.name, f"{name}{of}", config.kind),
                        make_sink=functools.partial(_make_sink, config, conf, output_id),
                        conf=conf,
                        predictions_topic=topic,
                        deadletter_topic=uc.outputs_deadletter_topic,
                        checkpoint=Checkpoint(state_dir / f"{uc.name}.{name}{of}.json"),
                        clock=clock,
                    )
                )
        parts = uc.usecase.input.partitions
        for predictions in sources:
            topics.setdefault(predictions, TopicSpec(predictions, parts))
        for spec in uc.output_topics():
            topics.setdefault(spec.name, spec)
    return SiteParts("output", site, runners, list(topics.values()), conf)


def run_outputs(
    outputs: SiteOutputs, stop: threading.Event | None = None, *, once: bool = False
) -> None:
    """Run every output until ``stop`` is set, or with ``once`` until each has caught up."""
    outputs.run(stop, once=once)
