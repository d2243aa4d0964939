"""``mlexec up``: supervise a site's processes, restart what crashes, scale on lag.

The site's parts (:class:`~mlexec.runtime.part.PartSpec`): ``connect`` (its
connectors), ``pipeline`` (dispatch → infer, bytewax recovery on), ``store`` (samples →
the sample store), ``act`` (outputs) and one ``mirror`` per link that starts at the
site, each started by :func:`~mlexec.runtime.part.spawn_part`. Each is restarted after
it exits, with a backoff that doubles up to 30 s and resets after a minute of health;
none is trusted to stay up. Every part resumes from its own checkpoint or recovery
state, so a restart loses nothing, and ids make what it repeats removable (predictions
carry record ids, samples are de-duplicated by record id in ClickHouse).

The pipeline's lag is the fetch-side end of each raw topic partition minus the offset
its bytewax recovery state has processed (bytewax keeps offsets there, not in consumer
groups). With a ``scale`` policy the orchestrator restarts the pipeline with one more
worker after the lag stays above ``out_above`` for ``sustain``, and with one fewer after
it stays below ``in_below``. ``mlexec status`` reads the status file it keeps.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mlexec.connectors.runner import Checkpoint
from mlexec.runtime.lag import pipeline_lag
from mlexec.runtime.locks import stop_child
from mlexec.runtime.part import PartSpec, spawn_part
from mlexec.topologies.plan import Plan

__all__ = [
    "PartStatus",
    "Supervisor",
    "read_status",
    "status_path",
]

_log = logging.getLogger(__name__)

_HEALTHY = 60.0  # seconds up after which the restart backoff starts again from 1 s
_OBSERVE_EVERY = 5.0  # seconds between lag readings without a scale policy
_TICK = 0.2


def status_path(plan: Plan, site: str) -> Path:
    """Where ``mlexec up`` keeps the status of a site's processes."""
    state_dir = Path(plan.topology.sites[site].state_dir)
    return state_dir / "up" / f"{plan.topology.name}-{site}.json"


def read_status(plan: Plan, site: str) -> dict[str, Any] | None:
    """The status ``mlexec up`` last wrote for ``site``, if it ever ran."""
    return Checkpoint(status_path(plan, site)).load()


@dataclass
class PartStatus:
    """One supervised process."""

    name: str
    spec: PartSpec
    pid: int | None = None
    state: str = "starting"
    restarts: int = 0
    started_at: float = 0.0
    last_exit: int | None = None
    workers: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    next_start: float = 0.0
    backoff: float = 1.0

    def public(self) -> dict[str, Any]:
        """What ``mlexec status`` shows."""
        shown = ("name", "pid", "state", "restarts", "started_at", "last_exit", "workers")
        return {"spec": dataclasses.asdict(self.spec)} | {n: getattr(self, n) for n in shown}


def stages_at(plan: Plan, site: str) -> tuple[bool, bool]:
    """Whether ``site`` runs a pipeline (a dispatch or infer stage) and a store.

    Read from the plan alone — the use cases' models are the parts' to load (and
    :meth:`~mlexec.runtime.site.Site.supervisor` checks them before anything starts),
    so a supervisor stays a small process.
    """
    process = store = False
    for uc in plan.chosen_at(site, None):
        on_site = {stage for stage, s in uc.sites if s == site}
        process |= bool({"dispatch", "infer"} & on_site)
        store |= "store" in on_site
    return process, store


def part_specs(
    plan: Plan, site: str, topology_path: Path, dashboard_port: int | None = None
) -> dict[str, PartSpec]:
    """The processes a supervisor runs for ``site``, by name."""
    path = str(topology_path)
    process, store = stages_at(plan, site)
    usecases = plan.usecases_at(site)
    specs: dict[str, PartSpec] = {}
    if any(uc.usecase.connectors and uc.site("connectors") == site for uc in usecases):
        specs["connect"] = PartSpec("connect", path, site)
    if process:
        specs["pipeline"] = PartSpec(
            "pipeline", path, site, workers=plan.topology.sites[site].pipeline.workers
        )
    if store:
        specs["store"] = PartSpec("store", path, site, dashboard_port=dashboard_port)
    if any(uc.usecase.outputs and uc.site("act") == site for uc in usecases):
        specs["act"] = PartSpec("act", path, site)
    for link in plan.topology.links:
        if link.source == site:
            name = f"mirror {link.source}:{link.target}"
            specs[name] = PartSpec("mirror", path, site, link=f"{link.source}:{link.target}")
    return specs


#: Per part, the fields of a use case it reads (``None``: all but those excluded).
_READS: dict[str, tuple[str, ...]] = {
    "connect": ("input", "connectors", "placement"),
    "act": ("input", "model", "outputs", "placement"),
    "mirror": ("input", "placement"),
}
_IGNORES: dict[str, tuple[str, ...]] = {
    "pipeline": ("connectors", "outputs", "retention"),
    "store": ("connectors", "outputs", "sampling"),  # the pipeline samples
}


def part_digests(plan: Plan, site: str) -> dict[str, str]:
    """Per part of ``site``, a digest of the configuration it runs on.

    Two versions of a topology with the same digest for a part run that part the
    same way, so a supervisor that serves the second keeps the part running
    (:meth:`Supervisor.reconfigure`). Conservative by construction: the site's own
    settings and every field a part might read count; a mirror also counts both ends
    of its link and the topics the link carries. A file (a model, a package) counts by
    its content, not its path: the same model in another directory is the same.
    """
    topology = plan.topology
    settings = topology.sites[site].model_dump(mode="json")
    usecases = {
        uc.name: _by_content(uc.usecase.model_dump(mode="json", by_alias=True))
        for uc in plan.usecases_at(site)
    }
    transfers = [
        [t.source, t.target, list(t.topics)]
        for t in plan.transfers()
        if site in (t.source, t.target)
    ]
    out = {}
    for name, spec in part_specs(plan, site, Path()).items():
        part = spec.part
        if part in _READS:
            seen = {u: {k: d.get(k) for k in _READS[part]} for u, d in usecases.items()}
        else:
            seen = {
                u: {k: v for k, v in d.items() if k not in _IGNORES[part]}
                for u, d in usecases.items()
            }
        # what crosses the site's links: a member added to a fleet changes the cloud's
        doc: dict[str, Any] = {"site": settings, "usecases": seen, "transfers": transfers}
        if part == "mirror" and spec.link is not None:
            source, _, target = spec.link.partition(":")
            link = next(lk for lk in topology.links if (lk.source, lk.target) == (source, target))
            doc["link"] = link.model_dump(mode="json")
            doc["target"] = topology.sites[target].model_dump(mode="json")
            doc["topics"] = [
                [t.source, t.target, list(t.topics)]
                for t in plan.transfers()
                if {t.source, t.target} == {source, target}
            ]
        out[name] = hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return out


def _by_content(value: Any) -> Any:
    """``value`` with every path of an existing file replaced by the file's sha256."""
    if isinstance(value, dict):
        return {k: _by_content(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_by_content(v) for v in value]
    if isinstance(value, str) and value.startswith("/") and Path(value).is_file():
        with Path(value).open("rb") as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    return value


class Supervisor:
    """Start, watch and restart a site's processes; scale the pipeline on lag."""

    def __init__(
        self,
        plan: Plan,
        site: str,
        topology_path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        lag: Callable[[], tuple[int, int] | None] | None = None,
        backoff: tuple[float, float] = (1.0, 30.0),
        dashboard_port: int | None = None,
    ) -> None:
        plan.require_site(site)
        self.plan = plan
        self.site = site
        self._clock = clock
        self._backoff = backoff
        self._lag = lag or (lambda: pipeline_lag(self.plan, site))
        settings = plan.topology.sites[site]
        self.policy = settings.pipeline.scale
        self.workers = settings.pipeline.workers
        self._dashboard_port = dashboard_port
        self.parts: dict[str, PartStatus] = {}
        for name, spec in part_specs(plan, site, topology_path, dashboard_port).items():
            self._add(name, spec)
        if "pipeline" in self.parts:
            self.parts["pipeline"].workers = self.workers
        self._digests = part_digests(plan, site)
        self._lock = threading.Lock()
        self.history: list[dict[str, Any]] = []
        self._above_since: float | None = None
        self._below_since: float | None = None
        self._next_check = 0.0
        self._next_write = 0.0
        self._last_lag: tuple[float, int, int] | None = None
        #: What of the supervisor's own work fails right now, and why.
        self.problems: dict[str, str] = {}

    def _add(self, name: str, spec: PartSpec) -> None:
        self.parts[name] = PartStatus(name, spec, backoff=self._backoff[0])

    # ---------------------------------------------------------------- running

    def run(self, stop: threading.Event) -> None:
        """Supervise until ``stop`` is set; then stop every process and write the status.

        No error of the supervisor's own bookkeeping — the status file (a full disk),
        reading the lag, scaling, starting a process — stops the site: it is logged,
        kept in :attr:`problems` for ``mlexec status`` and tried again on the next tick.
        """
        try:
            while not stop.is_set():
                with self._lock:
                    self._tick()
                stop.wait(_TICK)
        finally:
            with self._lock:
                for part in self.parts.values():
                    self._stop(part, "stopped")
                self._guarded("status file", self._write)

    def reconfigure(self, plan: Plan, topology_path: Path) -> dict[str, list[str]]:
        """Serve ``plan`` (another version of the topology) from now on.

        Only the parts whose configuration changed (:func:`part_digests`) restart; the
        others keep running and take the new file at their next start. Parts the new
        version no longer has stop; new ones start. Returns the names, by what happened
        to them: ``restarted``, ``kept``, ``started``, ``stopped``.
        """
        digests = part_digests(plan, self.site)
        specs = part_specs(plan, self.site, topology_path, self._dashboard_port)
        done: dict[str, list[str]] = {"restarted": [], "kept": [], "started": [], "stopped": []}
        with self._lock:
            for name in [n for n in self.parts if n not in specs]:
                self._stop(self.parts.pop(name), "stopped")
                done["stopped"].append(name)
            for name, spec in specs.items():
                part = self.parts.get(name)
                if part is None:
                    self._add(name, spec)
                    done["started"].append(name)
                    continue
                if spec.part == "pipeline" and part.workers is not None:
                    spec = dataclasses.replace(spec, workers=part.workers)
                part.spec = spec
                if digests[name] == self._digests.get(name):
                    done["kept"].append(name)
                    continue
                self._stop(part, "restarting: the topology changed")
                part.next_start = self._clock()
                part.backoff = self._backoff[0]
                done["restarted"].append(name)
            self.plan, self._digests = plan, digests
            self.policy = plan.topology.sites[self.site].pipeline.scale
        return done

    def note(self, what: str, problem: str | None) -> None:
        """Keep (or clear) a problem of ``what`` for ``mlexec status``, from any thread."""
        with self._lock:
            if problem is None:
                self.problems.pop(what, None)
            else:
                self.problems[what] = problem

    def _tick(self) -> None:
        """One round: watch every process, read the lag (and scale), write the status."""
        now = self._clock()
        for part in self.parts.values():
            self._guarded(f"process {part.name}", self._watch, part, now)
        if "pipeline" in self.parts and now >= self._next_check:
            if self.policy is not None:
                self._next_check = now + self.policy.every.total_seconds()
                self._guarded("scaling", self._scale, now)
            else:  # the lag history alone: status tells a stalled pipeline by it
                self._next_check = now + _OBSERVE_EVERY
                self._guarded("lag", self._observe, now)
        if now >= self._next_write:
            self._next_write = now + 1.0
            self._guarded("status file", self._write)

    def _guarded(self, what: str, step: Callable[..., object], *args: Any) -> None:
        try:
            step(*args)
        except Exception as exc:  # noqa: BLE001 - bookkeeping must never stop the site
            text = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                text = f"the disk of {exc.filename or 'the state directory'} is full ({exc})"
            if self.problems.get(what) != text:
                _log.error("%s: %s (the site keeps running; retrying)", what, text)
            self.problems[what] = text
        else:
            if self.problems.pop(what, None) is not None:
                _log.warning("%s: works again", what)

    def _spec(self, part: PartStatus) -> PartSpec:
        if part.name == "pipeline":
            return dataclasses.replace(part.spec, workers=part.workers or 1)
        return part.spec

    def _watch(self, part: PartStatus, now: float) -> None:
        proc = part.process
        if proc is not None:
            code = proc.poll()
            if code is None:
                if now - part.started_at > _HEALTHY:
                    part.backoff = self._backoff[0]
                return
            part.last_exit = code
            part.process, part.pid = None, None
            part.restarts += 1
            part.state = f"exited {code}; restarting in {part.backoff:.0f}s"
            part.next_start = now + part.backoff
            _log.warning("%s exited with %s; restarting in %.0fs", part.name, code, part.backoff)
            part.backoff = min(part.backoff * 2, self._backoff[1])
            return
        if now >= part.next_start:
            part.process = spawn_part(self._spec(part), new_session=True)
            part.pid = part.process.pid
            part.started_at = now
            part.state = "running"

    def _stop(self, part: PartStatus, state: str) -> None:
        stop_child(part.process)
        part.process, part.pid = None, None
        part.state = state

    def _observe(self, now: float) -> tuple[int, int] | None:
        """Read the lag; keep it, its rate and the workers in :attr:`history`."""
        measured = self._lag()
        if measured is None:
            return None
        behind, processed = measured
        if self._last_lag is not None:
            t0, _, p0 = self._last_lag
            rate = (processed - p0) / max(now - t0, 1e-9)
        else:
            rate = 0.0
        self._last_lag = (now, behind, processed)
        workers = self.parts["pipeline"].workers or 1
        self.history.append(
            {
                "at": now,
                "wall": time.time(),
                "lag": behind,
                "processed": processed,
                "rate": rate,
                "workers": workers,
            }
        )
        del self.history[:-50]
        return measured

    def _scale(self, now: float) -> None:
        policy = self.policy
        assert policy is not None
        measured = self._observe(now)
        if measured is None:
            return
        behind, _processed = measured
        pipeline = self.parts["pipeline"]
        workers = pipeline.workers or 1
        sustain = policy.sustain.total_seconds()
        self._above_since = (self._above_since or now) if behind > policy.out_above else None
        self._below_since = (self._below_since or now) if behind < policy.in_below else None
        target = workers
        if self._above_since is not None and now - self._above_since >= sustain:
            target = min(workers + 1, policy.max_workers)
        elif self._below_since is not None and now - self._below_since >= sustain:
            target = max(workers - 1, policy.min_workers)
        if target != workers:
            _log.warning("lag %d: restarting the pipeline with %d workers", behind, target)
            self._stop(pipeline, f"rescaling to {target} workers")
            pipeline.workers = target
            pipeline.next_start = now
            pipeline.backoff = self._backoff[0]
            self._above_since = self._below_since = None

    def _write(self) -> None:
        lag = self._last_lag
        Checkpoint(status_path(self.plan, self.site)).save(
            {
                "site": self.site,
                "supervisor": os.getpid(),
                "parts": [p.public() for p in self.parts.values()],
                "lag": None if lag is None else {"behind": lag[1], "processed": lag[2]},
                "history": self.history,
                "problems": self.problems,
                "written_at": time.time(),
            }
        )
