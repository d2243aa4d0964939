"""A site's dataflow lag, read from their recovery state; a stalled pipeline, from history.

bytewax keeps each source partition's next offset in its recovery store, not in consumer
groups: the lag is the fetch-side end of each partition (Tansu's ListOffsets answer is
only a lower bound) minus that offset, as of the last committed epoch — a snapshot of
an epoch not yet committed can be ahead of what the sinks (the store's insert) have
done. A log shorter than what was processed (a broker that lost it) or a missing topic
makes the lag unknown — :class:`LagUnknown` says why —
never a made-up 0.
"""

from __future__ import annotations

import logging
import pickle
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlexec.connectors.batchsource import resume_offset
from mlexec.connectors.kafka import client_config
from mlexec.connectors.reading import high_watermarks
from mlexec.errors import MlexecError
from mlexec.topologies.plan import Plan, UseCasePlan

__all__ = ["LagUnknown", "pipeline_lag", "stalled", "store_backlog"]

_log = logging.getLogger(__name__)


def pipeline_lag(plan: Plan, site: str, usecase: str | None = None) -> tuple[int, int] | None:
    """(records behind, records processed) of the site's pipeline, from its recovery state.

    For every use case, or only ``usecase``; ``None`` when the pipeline has not
    snapshotted yet.
    """
    raw = _flow_lag(
        plan,
        site,
        "pipeline",
        "_raw",
        lambda uc: uc.read_name(uc.raw_topic, "connectors", "dispatch"),
        usecase,
    )
    reduced = _flow_lag(  # inference of rows reduced on another site
        plan,
        site,
        "pipeline",
        "_reduced-in",
        lambda uc: uc.read_name(uc.reduced_topic, "dispatch", "infer"),
        usecase,
    )
    if raw is None or reduced is None:
        return raw or reduced
    return raw[0] + reduced[0], raw[1] + reduced[1]


def store_backlog(plan: Plan, site: str, usecase: str | None = None) -> tuple[int, int] | None:
    """(samples waiting in Kafka, samples stored) of the site's store dataflow."""
    return _flow_lag(
        plan,
        site,
        "store",
        "_samples",
        lambda uc: uc.read_names(uc.samples_topic, "infer", "store")[0],
        usecase,
    )


def recovered_parts(state_dir: Path, flow: str) -> dict[str, list[str]]:
    """Step (``<uc>_samples``) → the source parts the flow's recovery state holds."""
    out: dict[str, set[str]] = {}
    for db in sorted((state_dir / "recovery" / flow).glob("part-*.sqlite3")):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                rows = conn.execute("SELECT DISTINCT step_id, state_key FROM snaps").fetchall()
        except sqlite3.Error as exc:  # created but not yet initialised
            _log.info("recovery state %s not readable yet: %s", db, exc)
            continue
        for step_id, key in rows:
            out.setdefault(str(step_id).rsplit(".", 1)[-1], set()).add(str(key))
    return {step: sorted(keys) for step, keys in out.items()}


def _flow_lag(
    plan: Plan,
    site: str,
    part: str,
    suffix: str,
    topic_of: Callable[[UseCasePlan], str],
    only: str | None = None,
) -> tuple[int, int] | None:
    flow = f"{plan.topology.name}-{site}-{part}"
    db_dir = Path(plan.topology.sites[site].state_dir) / "recovery" / flow
    #: (use case, topic or None for the source's one topic, partition) → offset done
    done: dict[tuple[str, str | None, int], int] = {}
    for db in sorted(db_dir.glob("part-*.sqlite3")):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                # committed snapshots only: a snapshot of an epoch that is not committed
                # yet may be ahead of the sinks' (the store's insert of those rows)
                rows = conn.execute(
                    "SELECT step_id, state_key, ser_change FROM snaps s WHERE snap_epoch = "
                    "(SELECT max(snap_epoch) FROM snaps t WHERE t.step_id = s.step_id "
                    "AND t.state_key = s.state_key AND t.snap_epoch <= "
                    "(SELECT max(commit_epoch) FROM commits)) AND step_id LIKE ? ESCAPE '\\'",
                    (f"%{suffix.replace('_', chr(92) + '_')}",),
                ).fetchall()
        except sqlite3.Error as exc:  # created but not yet initialised, or being replaced
            _log.info("recovery state %s not readable yet: %s", db, exc)
            continue
        for step_id, state_key, change in rows:
            usecase = step_id.rsplit(".", 1)[-1].removesuffix(suffix)
            if usecase in plan.usecases and change is not None and only in (None, usecase):
                state = pickle.loads(change)  # noqa: S301 - our own recovery store
                # one topic's parts are partitions; several topics' (a fleet's), topic/partition
                of, _, number = str(state_key).rpartition("/")
                done[(usecase, of or None, int(number))] = resume_offset(state)
    if not done:
        return None
    conf = client_config(plan.topology.sites[site].kafka)
    behind = processed = 0
    ends: dict[str, dict[int, int]] = {}
    past: list[str] = []
    for (usecase, named, partition), offset in done.items():
        offset = max(offset, 0)  # before the first record the state says "the beginning"
        topic = named or topic_of(plan.usecases_seen(site)[usecase])
        if topic not in ends:
            ends[topic] = high_watermarks(conf, topic)
            if not ends[topic]:
                msg = f"topic {topic!r} is missing on {conf.get('bootstrap.servers')}"
                raise LagUnknown(msg)
        end = ends[topic].get(partition)
        if end is None:
            msg = f"partition {partition} of {topic!r} is missing (was the topic re-created?)"
            raise LagUnknown(msg)
        if offset > end:
            past.append(f"{topic}[{partition}] processed to {offset}, log ends at {end}")
        behind += max(0, end - offset)
        processed += offset
    if past:
        msg = (
            "the broker's log is shorter than what was processed — it lost its log "
            "(a restart of a memory broker?); the dataflow starts over on the new log: "
            + "; ".join(past[:4])
        )
        raise LagUnknown(msg)
    return behind, processed


def stalled(history: list[dict[str, Any]], *, at_least: float = 30.0) -> tuple[int, float] | None:
    """(records waiting, seconds) of a pipeline that has stopped processing, or ``None``.

    Read off the supervisor's lag history: nothing processed for ``at_least`` seconds
    while records waited.
    """
    if not history or history[-1]["lag"] <= 0 or "processed" not in history[-1]:
        return None
    last = history[-1]
    since = last["at"]
    for entry in reversed(history):
        if entry.get("processed") != last["processed"] or entry["lag"] <= 0:
            break
        since = entry["at"]
    waited = last["at"] - since
    return (int(last["lag"]), waited) if waited >= at_least else None


class LagUnknown(MlexecError):
    """The lag cannot be measured right now; the message says why."""
