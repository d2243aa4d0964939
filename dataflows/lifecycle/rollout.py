"""Rollouts in waves: a model version reaches a fleet's members a wave at a time.

A rollout is a ``rollout:<uc>`` message on the registry (its state, the waves' members)
and a routing of their own for the members it reached (``routing:<uc>@<member>``),
both mirrored down to every member like any registry message. A member that was
offline when its wave started gets its routing when its link is back, and says what
it serves in its heartbeat (``mlexec model fleet-status`` compares the two).

The cloud's monitor steps the rollout after each evaluation (:func:`step_rollout`):

- the wave is rolled back — every member it reached serves the use case's routing
  again, the version is retired — when an alert of the use case was raised since the
  wave began (the cloud's drift, quality, accuracy or health, or one a member raised:
  a version it refused, a fallback), or when the predictions of the members it reached
  are further (KS) from the version before's — over the event times both served (on the
  members the wave did not reach yet), so that inputs drifting with time do not count
  against the version; none overlapping, none compared — than the fleet's ``rollout.max_distance``, or err more than
  ``rollout.max_error_increase`` where labels exist;
- otherwise, once the wave has soaked (``rollout.soak``) and its members sent
  ``rollout.min_samples`` samples of the version, the next wave starts; after the last
  one the version serves production for the whole fleet and the members' own routings
  end.

Members pinned to a version (:func:`pin`) are left alone by every rollout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from mlexec.connectors.kafka import ensure_topics, produce_records
from mlexec.connectors.samplestore import SampleStore
from mlexec.lifecycle.policy import lifecycle_event
from mlexec.lifecycle.protocol import (
    Assembler,
    RegistryError,
    Routing,
    follow_message,
    key_shares,
    routing_message,
)
from mlexec.lifecycle.registry import current_routing, read_registry
from mlexec.monitoring.sql import (
    ALERTS_TABLE,
    accuracy_sql,
    feedback_table,
    grid_ks,
    quote,
    sql_time,
    tables_ddl,
    variants_sql,
)
from mlexec.topologies.plan import MODELS_TOPIC, Plan, UseCasePlan
from mlexec.topologies.schema.fleets import Fleet, Wave
from mlexec.topologies.schema.fleets import Rollout as RolloutSpec

__all__ = [
    "MemberRollout",
    "Rollout",
    "fleet_of_usecase",
    "halt_rollout",
    "pin",
    "plan_waves",
    "rollout_of",
    "rollout_status",
    "start_rollout",
    "step_rollout",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rollout:
    """A version on its way to a fleet: its waves, the one serving now, and its state."""

    usecase: str
    fleet: str
    version: str
    #: What the fleet served before (what a rollback returns to).
    previous: str | None
    waves: tuple[tuple[str, ...], ...]
    soak_s: float
    #: Index of the wave that serves the version now.
    wave: int
    #: When it started (epoch ms).
    wave_started: int
    started: int
    #: ``soaking`` (the only state that moves), ``halted``, ``rolled back`` or ``done``.
    state: str = "soaking"
    message: str = ""

    def reached(self) -> tuple[str, ...]:
        """Every member the version was sent to so far."""
        return tuple(m for wave in self.waves[: self.wave + 1] for m in wave)

    def wave_of(self, member: str) -> int | None:
        return next((i for i, wave in enumerate(self.waves) if member in wave), None)

    def value(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def parse(cls, value: bytes) -> Rollout:
        doc = orjson.loads(value)
        return cls(
            usecase=doc["usecase"],
            fleet=doc["fleet"],
            version=doc["version"],
            previous=doc.get("previous"),
            waves=tuple(tuple(w) for w in doc["waves"]),
            soak_s=float(doc["soak_s"]),
            wave=int(doc["wave"]),
            wave_started=int(doc["wave_started"]),
            started=int(doc["started"]),
            state=doc.get("state", "soaking"),
            message=doc.get("message", ""),
        )

    def message_of(self) -> tuple[bytes, bytes]:
        return f"rollout:{self.usecase}".encode(), self.value()


def rollout_of(registry: Assembler, usecase: str) -> Rollout | None:
    """The use case's latest rollout on the registry, if it ever had one."""
    value = registry.rollouts.get(usecase)
    return Rollout.parse(value) if value else None


def fleet_of_usecase(plan: Plan, uc: UseCasePlan) -> tuple[str, Fleet]:
    """The fleet whose members run the use case's inference."""
    name = uc.site("infer")
    fleet = plan.topology.fleets.get(name)
    if fleet is None:
        msg = f"{uc.name} infers on site {name!r}, not on a fleet: publish and promote instead"
        raise RegistryError(msg)
    return name, fleet


def plan_waves(
    fleet: Fleet,
    waves: Sequence[Wave],
    skip: set[str] = frozenset(),  # type: ignore[assignment]
) -> tuple[tuple[str, ...], ...]:
    """The members of each wave, in inventory order; ``skip`` (pinned) in none.

    A share wave takes the members whose stable hash of their name is below the share;
    a label wave those that carry all its labels; a member is in the first wave that
    takes it. The members no wave takes form a last wave. Empty waves are left out.
    """
    members = [m for m in fleet.members if m.name not in skip]
    shares = dict(
        zip((m.name for m in members), key_shares([m.name for m in members]), strict=True)
    )
    taken: set[str] = set()
    out: list[tuple[str, ...]] = []
    for wave in [*waves, None]:
        picked = tuple(
            m.name
            for m in members
            if m.name not in taken
            and (
                wave is None
                or (wave.share is not None and shares[m.name] < wave.share)
                or (wave.labels is not None and wave.labels.items() <= m.labels.items())
            )
        )
        taken.update(picked)
        if picked:
            out.append(picked)
    return tuple(out)


def _meant(registry: Assembler, uc: UseCasePlan, member: str) -> Routing:
    return registry.routing_for(uc.name, member) or current_routing(registry, uc)


def _send_wave(
    registry: Assembler, uc: UseCasePlan, rollout: Rollout, wave: int
) -> list[tuple[bytes, bytes]]:
    """Each member of ``wave`` gets a routing of its own: what it served, the version promoted."""
    out = []
    change = f"rollout of {rollout.version}: wave {wave + 1} of {len(rollout.waves)}"
    for member in rollout.waves[wave]:
        routing = _meant(registry, uc, member)
        if routing.pinned:
            continue  # pinned since the rollout began: left alone
        if routing.production == rollout.version:
            continue  # already there (a member that caught up before)
        promoted = routing.promote(rollout.version)
        out.append(routing_message(replace(promoted, member=member, pinned=False, change=change)))
    return out


def start_rollout(
    plan: Plan,
    conf: dict[str, Any],
    uc: UseCasePlan,
    version: str,
    *,
    waves: Sequence[Wave] | None = None,
    soak_s: float | None = None,
    now_ms: int | None = None,
) -> Rollout:
    """Send ``version`` (published before) to the first wave of the use case's fleet."""
    name, fleet = fleet_of_usecase(plan, uc)
    ensure_topics(conf, [plan.topic_spec(MODELS_TOPIC)])
    registry = read_registry(conf)
    if (uc.name, version) not in registry.manifests and version != uc.usecase.model.version:
        msg = f"{uc.name} has no published version {version}: mlexec model publish it first"
        raise RegistryError(msg)
    running = rollout_of(registry, uc.name)
    if running is not None and running.state == "soaking":
        msg = (
            f"{uc.name}: the rollout of {running.version} is at wave {running.wave + 1} of "
            f"{len(running.waves)}; halt or roll it back first (mlexec model rollout --halt)"
        )
        raise RegistryError(msg)
    fleet_routing = current_routing(registry, uc)
    if fleet_routing.production == version:
        msg = f"{uc.name} version {version} already serves the fleet {name}"
        raise RegistryError(msg)
    pinned = {
        m.name
        for m in fleet.members
        if (r := registry.routings.get(f"{uc.name}@{m.name}")) and r.pinned
    }
    spec = fleet.rollout
    planned = plan_waves(fleet, spec.waves if waves is None else waves, pinned)
    if not planned:
        msg = f"fleet {name}: every member is pinned; nothing to roll out to"
        raise RegistryError(msg)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    rollout = Rollout(
        usecase=uc.name,
        fleet=name,
        version=version,
        previous=fleet_routing.production,
        waves=planned,
        soak_s=spec.soak.total_seconds() if soak_s is None else soak_s,
        wave=0,
        wave_started=now,
        started=now,
        message=f"wave 1 of {len(planned)}: {len(planned[0])} member(s)",
    )
    produce_records(
        conf, MODELS_TOPIC, [*_send_wave(registry, uc, rollout, 0), rollout.message_of()]
    )
    _log.warning("%s: rollout of %s, %s", uc.name, version, rollout.message)
    return rollout


def _end_member_routings(
    registry: Assembler, uc: UseCasePlan, members: Sequence[str]
) -> list[tuple[bytes, bytes]]:
    """The members serve the use case's routing again, unless pinned meanwhile."""
    out = []
    for member in members:
        own = registry.routings.get(f"{uc.name}@{member}")
        if own is not None and not own.pinned:
            out.append(follow_message(uc.name, member))
    return out


def _roll_back(
    conf: dict[str, Any], registry: Assembler, uc: UseCasePlan, rollout: Rollout, why: str
) -> Rollout:
    fleet_routing = current_routing(registry, uc)
    retired = (
        fleet_routing
        if rollout.version in fleet_routing.retired
        else fleet_routing.retire(rollout.version)
    )
    back = replace(
        rollout, state="rolled back", message=f"wave {rollout.wave + 1}: {why}; rolled back"
    )
    produce_records(
        conf,
        MODELS_TOPIC,
        [
            *_end_member_routings(registry, uc, rollout.reached()),
            routing_message(replace(retired, change=f"rollout of {rollout.version} rolled back")),
            back.message_of(),
        ],
    )
    return back


def _trouble(
    store: SampleStore, uc: UseCasePlan, rollout: Rollout, spec: RolloutSpec, output: str | None
) -> tuple[str | None, int]:
    """Why the wave must roll back (or ``None``), and its samples of the version."""
    db = f"`{store.database}`"
    for statement in tables_ddl(store.database):  # a cloud that never monitored yet
        store.command(statement)
    alerts = store.query(
        f"SELECT site, kind, message FROM {db}.{ALERTS_TABLE} WHERE usecase = {quote(uc.name)} "
        f"AND time >= fromUnixTimestamp64Milli({rollout.wave_started}, 'UTC') "
        "AND severity IN ('warning', 'critical') AND kind != 'lifecycle' ORDER BY time LIMIT 1"
    )
    if alerts.height:
        row = alerts.row(0, named=True)
        return f"{row['kind']} alert from {row['site']}: {row['message']}", 0
    samples = f"{db}.`{uc.table}`"
    reached = ", ".join(quote(m) for m in rollout.reached())
    mine = (
        f"model_version = {quote(rollout.version)} AND site IN ({reached}) AND variant != 'shadow'"
    )
    previous = f"model_version = {quote(rollout.previous or '')} AND variant != 'shadow'"
    spans = store.query(
        f"SELECT countIf({mine}) AS n, minIf(event_time, {mine}) AS lo_mine, "
        f"maxIf(event_time, {mine}) AS hi_mine, countIf({previous}) AS n_before, "
        f"minIf(event_time, {previous}) AS lo_before, maxIf(event_time, {previous}) AS hi_before "
        f"FROM {samples} FINAL"
    ).row(0, named=True)
    count = int(spans["n"])
    if not count or not spans["n_before"]:
        return None, count
    # both over the event times both served (the members the wave did not reach yet, or
    # before it): inputs that drift with time must not pass for a model that drifts
    lo, hi = max(spans["lo_mine"], spans["lo_before"]), min(spans["hi_mine"], spans["hi_before"])
    during = f"event_time >= {sql_time(lo)} AND event_time <= {sql_time(hi)}"
    mine_during, before = f"{mine} AND {during}", f"{previous} AND {during}"
    both = store.query(
        f"SELECT countIf({mine_during}) AS mine, countIf({before}) AS before FROM {samples} FINAL"
    ).row(0, named=True)
    enough = min(int(both["mine"]), int(both["before"])) >= spec.min_samples
    if output is not None and spec.max_distance is not None and enough:
        grids = [
            store.query(f"SELECT grid FROM ({variants_sql(samples, output, where)})")["grid"]
            for where in (mine_during, before)
        ]
        distance = grid_ks(grids[0][0], grids[1][0])
        if distance > spec.max_distance:
            return (
                f"its predictions are {distance:.3f} (KS) from {rollout.previous}'s, "
                f"above {spec.max_distance}",
                count,
            )
    acc = uc.usecase.monitoring.accuracy if uc.usecase.monitoring else None
    if acc is not None and spec.max_error_increase is not None:
        feedback = f"{db}.`{feedback_table(uc)}`"
        errors = {
            who: store.query(accuracy_sql(samples, feedback, acc.output, where))
            for who, where in (("mine", mine_during), ("before", before))
        }
        labelled = {
            who: int(frame["labelled"].sum()) if frame.height else 0
            for who, frame in errors.items()
        }
        if min(labelled.values()) >= spec.min_labels:
            err = {
                who: float((frame[acc.metric] * frame["labelled"]).sum()) / labelled[who]
                for who, frame in errors.items()
            }
            if err["mine"] - err["before"] > spec.max_error_increase:
                return (
                    f"its {acc.metric} is {err['mine']:.4g} against {rollout.previous}'s "
                    f"{err['before']:.4g}",
                    count,
                )
    return None, count


def step_rollout(
    plan: Plan,
    store: SampleStore,
    conf: dict[str, Any],
    site: str,
    uc: UseCasePlan,
    output: str | None,
    now: datetime,
) -> str | None:
    """Roll the wave back, start the next one, or finish; what was done (``None``: soaking).

    ``output`` is the prediction column whose distribution is compared with the one of
    the version before (``None``: the model has no scalar output to compare).
    """
    registry = read_registry(conf)
    rollout = rollout_of(registry, uc.name)
    if rollout is None or rollout.state != "soaking":
        return None
    fleet = plan.topology.fleets.get(rollout.fleet)
    spec = fleet.rollout if fleet is not None else RolloutSpec()
    why, samples = _trouble(store, uc, rollout, spec, output)
    if why is not None:
        back = _roll_back(conf, registry, uc, rollout, why)
        lifecycle_event(
            conf, site, uc, "warning", f"{uc.name}: rollout of {rollout.version}, {back.message}"
        )
        return back.message
    now_ms = int(now.timestamp() * 1000)
    if now_ms - rollout.wave_started < rollout.soak_s * 1000 or samples < spec.min_samples:
        return None
    if rollout.wave + 1 < len(rollout.waves):
        nxt = replace(
            rollout,
            wave=rollout.wave + 1,
            wave_started=now_ms,
            message=f"wave {rollout.wave + 2} of {len(rollout.waves)}: "
            f"{len(rollout.waves[rollout.wave + 1])} member(s); wave {rollout.wave + 1} soaked "
            f"clean on {samples} samples",
        )
        produce_records(
            conf, MODELS_TOPIC, [*_send_wave(registry, uc, nxt, nxt.wave), nxt.message_of()]
        )
        lifecycle_event(
            conf, site, uc, "info", f"{uc.name}: rollout of {rollout.version}, {nxt.message}"
        )
        return nxt.message
    fleet_routing = current_routing(registry, uc)
    promoted = fleet_routing.promote(rollout.version)
    done = replace(
        rollout,
        state="done",
        message=f"every wave soaked clean; {rollout.version} serves the fleet",
    )
    produce_records(
        conf,
        MODELS_TOPIC,
        [
            routing_message(replace(promoted, change=f"rollout of {rollout.version} done")),
            *_end_member_routings(registry, uc, rollout.reached()),
            done.message_of(),
        ],
    )
    lifecycle_event(
        conf, site, uc, "info", f"{uc.name}: rollout of {rollout.version}: {done.message}"
    )
    return done.message


def halt_rollout(conf: dict[str, Any], uc: UseCasePlan, *, roll_back: bool) -> Rollout:
    """Stop the use case's rollout where it is, or roll back every member it reached."""
    registry = read_registry(conf)
    rollout = rollout_of(registry, uc.name)
    if rollout is None or rollout.state != "soaking":
        state = "never had one" if rollout is None else f"its last one is {rollout.state}"
        msg = f"{uc.name} has no rollout in progress ({state})"
        raise RegistryError(msg)
    if roll_back:
        return _roll_back(conf, registry, uc, rollout, "rolled back by hand")
    halted = replace(rollout, state="halted", message=f"halted at wave {rollout.wave + 1} by hand")
    produce_records(conf, MODELS_TOPIC, [halted.message_of()])
    return halted


def resume_rollout(conf: dict[str, Any], uc: UseCasePlan, *, now_ms: int | None = None) -> Rollout:
    """Go on with a halted rollout: its wave soaks again, from now, and is judged anew."""
    registry = read_registry(conf)
    rollout = rollout_of(registry, uc.name)
    if rollout is None or rollout.state != "halted":
        state = "never had one" if rollout is None else f"its last one is {rollout.state}"
        msg = f"{uc.name} has no halted rollout to resume ({state})"
        raise RegistryError(msg)
    started = int(time.time() * 1000) if now_ms is None else now_ms
    resumed = replace(
        rollout,
        state="soaking",
        wave_started=started,
        message=f"resumed at wave {rollout.wave + 1} by hand; it soaks again",
    )
    produce_records(conf, MODELS_TOPIC, [resumed.message_of()])
    return resumed


def pin(plan: Plan, conf: dict[str, Any], uc: UseCasePlan, member: str, version: str | None) -> str:
    """Pin ``member`` to ``version`` (its own; rollouts pass it by), or unpin it (``None``)."""
    _, fleet = fleet_of_usecase(plan, uc)
    if member not in fleet.names:
        msg = f"{member!r} is not a member of the fleet {uc.site('infer')!r} that serves {uc.name}"
        raise RegistryError(msg)
    ensure_topics(conf, [plan.topic_spec(MODELS_TOPIC)])
    registry = read_registry(conf)
    if version is None:
        produce_records(conf, MODELS_TOPIC, [follow_message(uc.name, member)])
        return f"{member} serves {uc.name}'s routing again"
    if (uc.name, version) not in registry.manifests and version != uc.usecase.model.version:
        msg = f"{uc.name} has no published version {version}: mlexec model publish it first"
        raise RegistryError(msg)
    before = _meant(registry, uc, member)
    history = (
        (*before.history, before.production)
        if before.production not in (None, version)
        else before.history
    )
    routing = Routing(
        uc.name,
        production=version,
        history=history,
        member=member,
        pinned=True,
        change=f"{member} pinned to {version}",
    )
    produce_records(conf, MODELS_TOPIC, [routing_message(routing)])
    return routing.change


@dataclass(frozen=True)
class MemberRollout:
    """One member during (or after) a rollout: what it is meant to serve, what it serves."""

    member: str
    #: 1-based; ``None`` when the rollout does not reach it (pinned, or not in it).
    wave: int | None
    pinned: bool
    meant: str | None
    #: The production version its pipeline last said it serves (``None``: never heard).
    serves: str | None
    #: ``online``, ``offline`` or ``never seen`` (:func:`mlexec.monitoring.fleet.fleet_status`).
    state: str

    @property
    def caught_up(self) -> bool:
        return self.serves is not None and self.serves == self.meant


def rollout_status(
    plan: Plan,
    registry: Assembler,
    store: SampleStore,
    uc: UseCasePlan,
    now: datetime,
    offline_after: timedelta,
) -> tuple[Rollout | None, list[MemberRollout]]:
    """The use case's rollout and every member of its fleet, in inventory order."""
    from mlexec.monitoring.fleet import fleet_status

    _, fleet = fleet_of_usecase(plan, uc)
    rollout = rollout_of(registry, uc.name)
    heard = {m.member: m for m in fleet_status(store, fleet.names, now, offline_after)}
    out = []
    for member in fleet.names:
        own = registry.routings.get(f"{uc.name}@{member}")
        said = heard[member].models or {}
        wave = rollout.wave_of(member) if rollout is not None else None
        out.append(
            MemberRollout(
                member,
                None if wave is None else wave + 1,
                bool(own and own.pinned),
                _meant(registry, uc, member).production,
                (said.get(uc.name) or {}).get("production"),
                heard[member].state,
            )
        )
    return rollout, out
