"""The profiles of a site's dataflow: served records → ``<uc>.profiles`` → the store.

On the inference site, every served record's watched columns are profiled per batch
(:func:`partials_of`) and folded into one profile per window
(:class:`~operators.profile.ProfileLogic`), sent one message per column; on the store's
site (:func:`stored_profiles`) the messages become rows of ``mlexec_profiles``, and any
that does not add up a dead letter. :mod:`monitoring.profiles` merges and judges them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from mlexec.connectors.batchsource import KafkaBatchSource
from mlexec.connectors.kafka import Outgoing
from mlexec.connectors.reading import BACKGROUND_TUNING
from mlexec.lifecycle.router import Inferred, ServeError
from mlexec.monitoring.profiles import PROFILES_TABLE, profile_rows
from mlexec.operators.profile import Partial, ProfileLogic, partials
from mlexec.operators.records import DeadLetter
from mlexec.operators.reduce import Reduced
from mlexec.topologies.plan import UseCasePlan
from mlexec.usecase import UseCaseRuntime

__all__ = ["partials_of", "profile_branch", "stored_profiles"]


def partials_of(
    rt: UseCaseRuntime, reduced: Reduced, groups: list[Inferred] | ServeError
) -> list[tuple[str, Partial]]:
    """Per-batch profiles of the watched columns of every record served (not the shadow's).

    A window's correction re-emits rows already profiled: it is left out.
    """
    mon = rt.plan.usecase.monitoring
    assert mon is not None and mon.profiles is not None
    if isinstance(groups, ServeError) or reduced.correction:
        return []
    window = int(mon.profiles.window.total_seconds() * 1000)
    out = []
    for group in groups:
        if group.shadow:
            continue
        pred = group.predictions
        columns = {
            c: pred.records.columns[c] if c in rt.plan.features else pred.outputs[c]
            for c in mon.watch
        }
        got = partials(
            pred.records.times, pred.records.record_ids, columns, window, mon.profiles.accuracy
        )
        out += [("profile", p) for p in got]
    return out


def profile_branch(
    rt: UseCaseRuntime,
    predicted: Stream[tuple[Reduced, list[Inferred] | ServeError, list[DeadLetter]]],
) -> Stream[Outgoing]:
    """Served records → one profile per window and watched column on ``<uc>.profiles``."""
    plan = rt.plan
    n = plan.name
    mon = plan.usecase.monitoring
    assert mon is not None and mon.profiles is not None
    conf = mon.profiles
    pieces = op.flat_map(f"{n}_profile-batch", predicted, lambda rp: partials_of(rt, rp[0], rp[1]))
    windows = op.stateful_batch(
        f"{n}_profile",
        pieces,
        lambda state: ProfileLogic(
            n,
            plan.site("infer"),
            conf.window,
            conf.lateness,
            conf.idle_close,
            conf.accuracy,
            resume=state,
        ),
    )
    return op.map(
        f"{n}_publish-profiles",
        op.key_rm(f"{n}_profile-unkey", windows),
        lambda w: Outgoing(plan.profiles_topic, w.messages()),
    )


def _site_of(plan: UseCasePlan, topic: str) -> str:
    """The site whose profiles come on ``topic`` ('' for none: every message refused)."""
    return plan.site_of_topic(topic, plan.profiles_topic, "infer") or ""


def stored_profiles(
    flow: Dataflow,
    rt: UseCaseRuntime,
    conf: dict[str, Any],
    until_end: bool,
    recovered: Mapping[str, Sequence[str]],
) -> tuple[Stream[tuple[str, Any]], Stream[list[DeadLetter]]]:
    """``<uc>.profiles`` (as read on the store's site) → rows for the store, dead letters."""
    plan = rt.plan
    n = plan.name
    names = plan.read_names(plan.profiles_topic, "infer", "store")
    source = KafkaBatchSource(
        conf,
        names,
        until_end=until_end,
        group=f"mlexec-{n}-profiles",
        context={"usecase": n},
        settings=BACKGROUND_TUNING,
        qualified=plan.from_fleet("infer"),
        retired=recovered.get(f"{n}_profiles", ()),
    )
    read = op.map(
        f"{n}_profile-rows",
        op.input(f"{n}_profiles", flow, source),
        lambda b: profile_rows(n, b, _site_of(plan, b.topic)),
    )
    stored = op.filter_map(
        f"{n}_profiles-stored",
        read,
        lambda s: (PROFILES_TABLE, (PROFILES_TABLE, s[0])) if s[0] else None,
    )
    refused = op.filter_map(f"{n}_bad-profiles", read, lambda s: s[1] or None)
    return stored, refused
