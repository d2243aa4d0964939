"""Runtime health of a site's dataflow process: on a Prometheus endpoint and on ``mlexec.metrics``.

The numbers come from the process's own progress, never from consumer groups (bytewax
keeps offsets in its recovery store): the batch sources record, per partition, the
next offset to process and the fetch-side end of the partition, so the lag is
``end - next``; the sinks count what they hand to the broker per topic; the publish
step records each dispatch's size and inference latency.

Per use case: records read, predictions, dead letters and samples written, dispatches
and their mean size, inference latency p50 / p99 over the last dispatches, consumer
lag; for the store: samples read and the samples still waiting in Kafka (its backlog).
A :class:`Reporter` thread sends a snapshot with per-second rates to ``mlexec.metrics``
every few seconds; the monitor writes them into the metrics table.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mlexec.connectors.batchsource import PROGRESS, STALLS
from mlexec.connectors.delivery import ReliableProducer
from mlexec.connectors.kafka import PRODUCED
from mlexec.topologies.plan import METRICS_TOPIC, Plan

__all__ = [
    "Reporter",
    "RuntimeHealth",
    "flush_reporters",
    "observe_dispatch",
    "observe_expired",
    "serve_metrics",
]

_log = logging.getLogger(__name__)

#: Per use case: (inference latency in ms, rows) of its latest dispatches.
_DISPATCHES: dict[str, deque[tuple[float, int]]] = {}
#: Per use case: [dispatches, rows] since the process started.
_DISPATCHED: dict[str, list[int]] = {}
_RECENT = 2048


def observe_dispatch(usecase: str, latency_ms: float, rows: int) -> None:
    """Record one inference: its latency and how many rows the dispatch held."""
    recent = _DISPATCHES.get(usecase)
    if recent is None:
        recent = _DISPATCHES[usecase] = deque(maxlen=_RECENT)
        _DISPATCHED[usecase] = [0, 0]
    recent.append((latency_ms, rows))
    totals = _DISPATCHED[usecase]
    totals[0] += 1
    totals[1] += rows


#: Per use case: sample rows that reached the store already past their retention (the
#: TTL on event time deletes them at once: historical data, or a clock far behind).
_EXPIRED: dict[str, int] = {}


def observe_expired(usecase: str, rows: int, retention: str) -> None:
    """Count sample rows stored already past retention; warn once per use case."""
    if rows <= 0:
        return
    if usecase not in _EXPIRED:
        _log.warning(
            "%s: %d sample rows arrived with event times already past the retention of %s "
            "(or before 1970); the store's TTL removes them at once. Counted as "
            "samples_expired; count the retention from storing (retention_from: stored, the "
            "default) or give a longer one to keep historical data",
            usecase,
            rows,
            retention,
        )
    _EXPIRED[usecase] = _EXPIRED.get(usecase, 0) + rows


#: Counters (the rest are gauges), with their help text.
_COUNTERS = {
    "records_in": "Records read from the raw (or reduced) topics",
    "predictions": "Predictions (and replies) written",
    "deadletters": "Records written to the dead-letter topic",
    "samples": "Sample rows written to the samples topic",
    "dispatches": "Dispatches run through the model",
    "samples_read": "Sample rows the store dataflow read",
    "samples_expired": "Sample rows that arrived past their retention (removed by the TTL)",
    "fetch_stalls": "Times the broker's fetches delivered next to nothing while records waited",
}
_GAUGES = {
    "lag": "Records behind the end of the topics this process reads",
    "dispatch_rows": "Mean rows per dispatch over the latest dispatches",
    "latency_p50_ms": "Inference latency p50 over the latest dispatches, ms",
    "latency_p99_ms": "Inference latency p99 over the latest dispatches, ms",
    "store_backlog": "Samples waiting in Kafka for the sample store",
}


class RuntimeHealth:
    """What one process of a site (``pipeline`` or ``store``) has done, per use case."""

    def __init__(
        self, plan: Plan, site: str, part: str, routers: Mapping[str, Any] | None = None
    ) -> None:
        self.site = site
        self.part = part
        #: Use case → its router (what the pipeline serves), for the heartbeat.
        self._routers = dict(routers or {})
        self._digest = plan.digest
        self._reads: dict[str, tuple[str, str]] = {}
        self._writes: dict[str, tuple[str, str]] = {}
        for uc in plan.usecases_at(site):
            n = uc.name
            if uc.site("dispatch") == site:
                self._reads[uc.read_name(uc.raw_topic, "connectors", "dispatch")] = (n, "in")
            elif uc.site("infer") == site:
                self._reads[uc.read_name(uc.reduced_topic, "dispatch", "infer")] = (n, "in")
            if uc.site("store") == site:
                for name in uc.read_names(uc.samples_topic, "infer", "store"):
                    self._reads[name] = (n, "store")
            self._writes[uc.predictions_topic] = (n, "predictions")
            self._writes[uc.replies_topic] = (n, "predictions")
            self._writes[uc.deadletter_topic] = (n, "deadletters")
            self._writes[uc.samples_topic] = (n, "samples")
        self._last: tuple[float, dict[tuple[str, str], float]] | None = None

    def values(self) -> dict[tuple[str, str], float]:
        """(use case, measure) → value, now."""
        out: dict[tuple[str, str], float] = {}

        def add(uc: str, name: str, value: float) -> None:
            out[(uc, name)] = out.get((uc, name), 0.0) + value

        for (topic, _partition), (done, end, read) in list(PROGRESS.items()):
            role = self._reads.get(topic)
            if role is None:
                continue
            uc, kind = role
            if kind == "in":
                add(uc, "records_in", read)
                add(uc, "lag", max(0, end - done))
            else:
                add(uc, "samples_read", read)
                add(uc, "store_backlog", max(0, end - done))
        for topic, count in list(PRODUCED.items()):
            role = self._writes.get(topic)
            if role is not None:
                add(role[0], role[1], count)
        for topic, stalls in list(STALLS.items()):
            role = self._reads.get(topic)
            if role is not None:
                add(role[0], "fetch_stalls", stalls)
        for uc, expired in list(_EXPIRED.items()):
            if any(u == uc and kind == "store" for u, kind in self._reads.values()):
                add(uc, "samples_expired", expired)
        for uc, recent in list(_DISPATCHES.items()):
            if not any(u == uc for u, _ in self._writes.values()):
                continue
            done_, rows = _DISPATCHED[uc]
            add(uc, "dispatches", done_)
            if recent:
                lat = np.fromiter((r[0] for r in list(recent)), dtype=np.float64)
                sizes = np.fromiter((r[1] for r in list(recent)), dtype=np.float64)
                add(uc, "latency_p50_ms", float(np.percentile(lat, 50)))
                add(uc, "latency_p99_ms", float(np.percentile(lat, 99)))
                add(uc, "dispatch_rows", float(sizes.mean()))
        return out

    def collect(self) -> Iterator[Metric]:
        """Prometheus metric families (``mlexec_<measure>``, label ``usecase``)."""
        values = self.values()
        families: dict[str, Any] = {}
        for name, text in _COUNTERS.items():
            families[name] = CounterMetricFamily(f"mlexec_{name}", text, labels=["usecase"])
        for name, text in _GAUGES.items():
            families[name] = GaugeMetricFamily(f"mlexec_{name}", text, labels=["usecase"])
        for (uc, name), value in sorted(values.items()):
            families[name].add_metric([uc], value)
        yield from families.values()

    def report(self) -> dict[str, Any]:
        """A snapshot for ``mlexec.metrics``: values, per-second rates, the dead-letter rate."""
        now = time.time()
        values = self.values()
        rows = [{"usecase": uc, "name": name, "value": v} for (uc, name), v in values.items()]
        if self._last is not None:
            then, before = self._last
            span = max(now - then, 1e-3)
            for (uc, name), v in values.items():
                if name in _COUNTERS:
                    rate = max(0.0, v - before.get((uc, name), 0.0)) / span
                    rows.append({"usecase": uc, "name": f"{name}_per_s", "value": rate})
            for uc in {u for u, _ in values}:
                read = values.get((uc, "records_in"), 0.0) - before.get((uc, "records_in"), 0.0)
                dead = values.get((uc, "deadletters"), 0.0) - before.get((uc, "deadletters"), 0.0)
                if read > 0:
                    rows.append({"usecase": uc, "name": "deadletter_rate", "value": dead / read})
        self._last = (now, values)
        return {
            "time": int(now * 1000),
            "site": self.site,
            "part": self.part,
            "rows": rows,
            "serving": self.serving(),
        }

    def serving(self) -> dict[str, Any]:
        """What this process serves: the topology's digest, and each use case's routing."""
        models = {}
        for uc, router in self._routers.items():
            r = router.routing
            models[uc] = {
                "production": r.production,
                "canary": list(r.canary) if r.canary else None,
                "ab": [list(v) for v in r.ab],
                "shadow": list(r.shadow),
            }
        return {"topology": self._digest, "models": models}


class HealthSource(Protocol):
    """What a :class:`Reporter` sends: a snapshot (time, site, part, rows) when asked."""

    def report(self) -> dict[str, Any]: ...


class Reporter:
    """Sends the process's health to ``mlexec.metrics`` every ``every`` seconds, and at stop."""

    def __init__(self, health: HealthSource, conf: dict[str, Any], every: float = 10.0) -> None:
        self._health = health
        self._producer = ReliableProducer(conf, what="runtime health", **{"linger.ms": 50})
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlexec-health", daemon=True)

    def start(self) -> Reporter:
        self._thread.start()
        _RUNNING.append(self)
        return self

    def send(self) -> None:
        snapshot = self._health.report()
        key = f"{snapshot['site']}/{snapshot['part']}".encode()
        self._producer.produce(METRICS_TOPIC, orjson.dumps(snapshot), key=key)
        self._producer.poll(0)  # raises an earlier snapshot's delivery error: logged by the caller

    def _run(self) -> None:
        self._health.report()  # the baseline for the first rates
        while not self._stop.wait(self._every):
            try:
                self.send()
            except Exception as exc:  # noqa: BLE001 - health must never stop the dataflow
                _log.warning("sending runtime health failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self in _RUNNING:
            _RUNNING.remove(self)
        self._thread.join(5.0)
        self.final()

    def final(self, timeout: float = 5.0) -> None:
        """Send a last snapshot and wait (at most ``timeout``) for it to be delivered."""
        try:
            self.send()
            self._producer.flush(timeout)
        except Exception as exc:  # noqa: BLE001 - health must never stop the dataflow
            _log.warning("sending runtime health failed: %s", exc)


_RUNNING: list[Reporter] = []


def flush_reporters(timeout: float = 5.0) -> None:
    """The last snapshot of every running reporter: for a process about to exit at once."""
    for reporter in list(_RUNNING):
        reporter.final(timeout)


def metrics_address() -> str:
    """Where metrics are served: 127.0.0.1, unless ``MLEXEC_METRICS_ADDRESS`` says.

    In a pod, probes and Prometheus reach it on the pod's address: ``0.0.0.0`` there.
    """
    return os.environ.get("MLEXEC_METRICS_ADDRESS", "127.0.0.1")


def serve_metrics(health: RuntimeHealth, port: int) -> None:
    """Serve ``health`` (and nothing else) for Prometheus at :func:`metrics_address`."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(health)  # type: ignore[arg-type]
    start_http_server(port, addr=metrics_address(), registry=registry)
