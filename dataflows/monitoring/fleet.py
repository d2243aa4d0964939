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
from mlexec.monitoring.sql import METRICS_TABLE, SERVING_TABLE, quote, tables_ddl

__all__ = ["MemberStatus", "fleet_status"]


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
        "countIf(name = 'deadletter_rate') AS rated "
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
    out = []
    for member in members:
        row = heard.get(member)
        if row is None:
            out.append(MemberStatus(member, "never seen"))
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
            )
        )
    return out
