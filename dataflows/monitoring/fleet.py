"""A fleet seen from the cloud: each member's last health report, and whether it is online.

Every member's processes report their runtime health on ``mlexec.metrics``; its link
carries them up as ``<member>.mlexec.metrics`` and the cloud's monitor keeps them in
``mlexec_metrics`` under the member's name (taken from the topic, never the message).
:func:`fleet_status` reads the latest of each, per member: when it was last heard
from, how far behind its pipeline is, how fast it reads, its dead-letter rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from mlexec.connectors.samplestore import SampleStore
from mlexec.monitoring.sql import (
    ALERTS_TABLE,
    METRICS_TABLE,
    SERVING_TABLE,
    Segmenting,
    accuracy_sql,
    feedback_table,
    grid_ks,
    grids_sql,
    quote,
    sql_time,
    tables_ddl,
)
from mlexec.topologies.plan import Plan, UseCasePlan

__all__ = ["MemberStatus", "fleet_status", "fleet_view"]


@dataclass(frozen=True)
class MemberStatus:
    """One member as the cloud last heard of it."""

    member: str
    #: ``online``, ``offline`` (not heard from for ``offline_after``) or ``never seen``.
    state: str
    last_seen: datetime | None = None
    lag: float | None = None
    records_per_s: float | None = None
    deadletter_rate: float | None = None
    #: The digest of the topology its pipeline runs (``Plan.digest``), last reported.
    topology: str | None = None
    #: Use case → the routing its pipeline serves (production, canary, A/B, shadow).
    models: dict[str, Any] | None = None
    #: Records waiting on the member to go up its link, as its mirror last said.
    link_backlog: float | None = None
    #: A follower's last word on the desired state (``applied v2: …``, ``refused v3 …``).
    desired: str | None = None

    def serves(self) -> str:
        """What it serves, for people: ``vib 3 (canary 4 10%)``."""
        parts = []
        for uc, r in sorted((self.models or {}).items()):
            text = f"{uc} {r.get('production') or '-'}"
            if r.get("canary"):
                text += f" (canary {r['canary'][0]} {r['canary'][1]:.0%})"
            text += "".join(f" (ab {name} {v})" for name, v, _ in r.get("ab") or [])
            text += "".join(f" (shadow {v})" for v in r.get("shadow") or [])
            parts.append(text)
        return ", ".join(parts)


def fleet_status(
    store: SampleStore,
    members: tuple[str, ...],
    now: datetime,
    offline_after: timedelta = timedelta(seconds=60),
) -> list[MemberStatus]:
    """Every member's state, in inventory order."""
    for statement in tables_ddl(store.database):  # a cloud that never monitored yet
        store.command(statement)
    if not members:
        return []
    names = ", ".join(quote(m) for m in members)
    frame = store.query(
        "SELECT site, max(t) AS last_seen, sumIf(v, name = 'lag') AS lag, "
        "sumIf(v, name = 'records_in_per_s') AS rate, maxIf(v, name = 'deadletter_rate') AS dead, "
        "countIf(name = 'deadletter_rate') AS rated, sumIf(v, name = 'link_backlog') AS backlog, "
        "countIf(name = 'link_backlog') AS linked "
        "FROM (SELECT site, part, usecase, name, max(time) AS t, argMax(value, time) AS v "
        f"FROM `{store.database}`.{METRICS_TABLE} WHERE site IN ({names}) "
        "GROUP BY site, part, usecase, name) GROUP BY site"
    )
    heard = {row["site"]: row for row in frame.iter_rows(named=True)}
    serving = store.query(
        "SELECT site, argMax(topology, time) AS topology, argMax(models, time) AS models "
        f"FROM `{store.database}`.{SERVING_TABLE} WHERE site IN ({names}) "
        "AND startsWith(part, 'pipeline') GROUP BY site"
    )
    serves = {row["site"]: row for row in serving.iter_rows(named=True)}
    reports = store.query(  # what `mlexec follow` on the member applied or refused, last
        f"SELECT site, argMax(message, time) AS said FROM `{store.database}`.{ALERTS_TABLE} "
        f"WHERE site IN ({names}) AND kind = 'lifecycle' AND statistic = 'desired' GROUP BY site"
    )
    desired = {row["site"]: row["said"] for row in reports.iter_rows(named=True)}
    out = []
    for member in members:
        row = heard.get(member)
        if row is None:
            out.append(MemberStatus(member, "never seen", desired=desired.get(member)))
            continue
        seen: datetime = row["last_seen"]
        online = now - seen <= offline_after
        said = serves.get(member)
        out.append(
            MemberStatus(
                member,
                "online" if online else "offline",
                seen,
                float(row["lag"]),
                float(row["rate"]),
                float(row["dead"]) if row["rated"] else None,
                said["topology"] if said else None,
                orjson.loads(said["models"]) if said else None,
                float(row["backlog"]) if row["linked"] else None,
                desired.get(member),
            )
        )
    return out


def fleet_view(
    store: SampleStore,
    plan: Plan,
    uc: UseCasePlan,
    output: str | None,
    now: datetime,
    since: datetime,
    offline_after: timedelta = timedelta(seconds=60),
) -> dict[str, Any]:
    """A fleet use case member by member: state, what it serves, its predictions and errors.

    Since ``since``: each member's samples, the distance (KS) of its predictions of
    ``output`` from the whole fleet's, its error where labels exist
    (``monitoring.accuracy``), and its warnings and critical alerts.
    """
    name = str(uc.site("infer"))
    fleet = plan.topology.fleets[name]
    members = fleet_status(store, fleet.names, now, offline_after)
    db = f"`{store.database}`"
    samples = f"{db}.`{uc.table}`"
    where = f"event_time >= {sql_time(since)} AND variant != 'shadow'"
    grids: dict[str, dict[str, Any]] = {}
    whole: list[float] = []
    if output is not None:
        frame = store.query(grids_sql(samples, output, where, "site"))
        grids = {row["key"]: row for row in frame.iter_rows(named=True)}
        every = store.query(grids_sql(samples, output, where, "''"))
        whole = list(every["grid"][0]) if every.height else []
    acc = uc.usecase.monitoring.accuracy if uc.usecase.monitoring else None
    errors: dict[str, tuple[int, float]] = {}
    if acc is not None:
        by_site = Segmenting(column="site", min_rows=1, largest=len(fleet.names) + 1)
        feedback = f"{db}.`{feedback_table(uc)}`"
        frame = store.query(accuracy_sql(samples, feedback, acc.output, where, by_site))
        for row in frame.iter_rows(named=True):
            n, total = errors.get(row["segment"], (0, 0.0))
            errors[row["segment"]] = (
                n + row["labelled"],
                total + row[acc.metric] * row["labelled"],
            )
    alerts = store.query(
        f"SELECT site, count() AS n FROM {db}.{ALERTS_TABLE} WHERE usecase = {quote(uc.name)} "
        f"AND time >= {sql_time(since)} AND severity IN ('warning', 'critical') GROUP BY site"
    )
    raised = dict(zip(alerts["site"], alerts["n"], strict=True)) if alerts.height else {}
    rows = []
    for m in members:
        grid = grids.get(m.member)
        labelled, total = errors.get(m.member, (0, 0.0))
        rows.append(
            {
                "member": m.member,
                "state": m.state,
                "last_seen": int(m.last_seen.timestamp() * 1000) if m.last_seen else None,
                "lag": m.lag,
                "records_per_s": m.records_per_s,
                "deadletter_rate": m.deadletter_rate,
                "serves": m.serves(),
                "current_topology": m.topology == plan.digest if m.topology else None,
                "samples": int(grid["samples"]) if grid else 0,
                "mean_prediction": float(grid["mean_output"]) if grid else None,
                "distance": grid_ks(list(grid["grid"]), whole) if grid and whole else None,
                "labelled": labelled,
                "error": total / labelled if labelled else None,
                "alerts": int(raised.get(m.member, 0)),
            }
        )
    counts = {s: sum(r["state"] == s for r in rows) for s in ("online", "offline", "never seen")}
    return {
        "fleet": name,
        "usecase": uc.name,
        "output": output,
        "metric": acc.metric if acc is not None else None,
        "counts": counts,
        "members": rows,
    }
