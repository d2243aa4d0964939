"""The life cycle's reaction to monitoring: after every evaluation, retrain and act on the policy.

It retrains on the alerts a topology names, promotes or rolls back a canary, and steps
a fleet's rollout (:func:`mlexec.lifecycle.rollout.step_rollout`).

Monitoring announces its evaluations to subscribers; :func:`follow` subscribes the
life cycle, so monitoring never imports it.
"""

from __future__ import annotations

import logging
from datetime import datetime

from mlexec.connectors.kafka import client_config
from mlexec.errors import MlexecError
from mlexec.lifecycle.policy import apply_policy, lifecycle_event
from mlexec.lifecycle.registry import registry_site
from mlexec.lifecycle.rollout import step_rollout
from mlexec.lifecycle.training import train
from mlexec.monitoring.columns import monitoring_of
from mlexec.monitoring.evaluate import Evaluation
from mlexec.monitoring.monitor import Monitor
from mlexec.topologies.plan import UseCasePlan

__all__ = ["LifeCycleReaction", "follow"]

_log = logging.getLogger(__name__)


def follow(monitor: Monitor) -> Monitor:
    """Subscribe the life cycle to ``monitor``'s evaluations; returns the monitor."""
    monitor.subscribers.append(LifeCycleReaction(monitor))
    return monitor


class LifeCycleReaction:
    """Retrain on the alerts the topology names; promote or roll back the canary."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def prediction_column(self, uc: UseCasePlan) -> str | None:
        """The output whose distribution a rollout compares: the accuracy's, or the first scalar."""
        mon = uc.usecase.monitoring
        if mon is not None and mon.accuracy is not None:
            return mon.accuracy.output
        table = self.monitor.tables[uc.name]
        return next(
            (
                name
                for name, kind in table.columns
                if name not in uc.features and not kind.startswith("Array")
            ),
            None,
        )

    def __call__(self, uc: UseCasePlan, ev: Evaluation, now: datetime) -> None:
        """Retrain on the alerts the topology names; promote or roll back the canary."""
        conf = client_config(
            self.monitor.plan.topology.sites[registry_site(self.monitor.plan, uc)].kafka
        )
        if uc.from_fleet("infer"):
            try:
                step_rollout(
                    self.monitor.plan,
                    self.monitor.store,
                    conf,
                    self.monitor.site,
                    uc,
                    self.prediction_column(uc),
                    now,
                )
            except Exception as exc:  # noqa: BLE001 - the rollout waits, the life cycle goes on
                _log.error(
                    "%s: the rollout could not be stepped, retrying next round: %s", uc.name, exc
                )
        life = uc.usecase.lifecycle
        if life is None:
            return
        spec = life.training
        triggers = [
            a
            for a in ev.alerts
            if spec is not None and a.kind in spec.retrain_on and a.severity != "resolved"
        ]
        if spec is not None and triggers:
            state = self.monitor.state.load() or {}
            trained = state.get("trained_at", {}).get(uc.name, 0)
            if now.timestamp() - trained >= spec.cooldown.total_seconds():
                watched = set(monitoring_of(uc).watch)
                recorder = (
                    self.monitor.record_reference
                    if watched and watched <= set(uc.features)
                    else None
                )
                try:
                    done = train(
                        self.monitor.plan,
                        self.monitor.site,
                        self.monitor.store,
                        conf,
                        uc,
                        record_reference=recorder,
                    )
                except MlexecError as exc:
                    lifecycle_event(
                        conf,
                        self.monitor.site,
                        uc,
                        "warning",
                        f"{uc.name}: retraining failed: {exc}",
                    )
                else:
                    lifecycle_event(
                        conf,
                        self.monitor.site,
                        uc,
                        "info",
                        f"{uc.name}: retrained on {triggers[0].message()}: version {done.version} "
                        f"{done.metric} {done.candidate_error:.4g} on {done.holdout} held-out rows, "
                        f"production {done.production_version} {done.production_error:.4g}; {done.change}",
                    )
                state.setdefault("trained_at", {})[uc.name] = now.timestamp()
                self.monitor.state.save(state)
        apply_policy(
            self.monitor.store, conf, self.monitor.site, uc, ev.window_start, ev.window_end
        )
