"""Multivariate drift: a broken correlation no single column shows, found by the reference's PCA."""

from __future__ import annotations

import numpy as np
import pytest

from mlexec.connectors.samplestore import open_store
from mlexec.monitoring.dashboard import DashboardData
from mlexec.monitoring.multivariate import fit_pca
from tests.dataflows.spine import T0, prepared
from tests.monitoring.test_monitor import (
    HOUR_MS,
    _at,
    _direct_topology,
    _monitor_over,
    _monitoring,
    _sample_rows,
)

pytestmark = pytest.mark.integration

N = 5_000
WATCHED = ["f0", "f1", "f2", "f3"]


def _pairs(rng: np.random.Generator, related: bool) -> dict[str, np.ndarray]:
    """f1 follows f0 and f3 follows f2 (correlation 0.9) — or all four are independent."""
    a, b = rng.normal(size=N), rng.normal(size=N)
    noise = np.sqrt(1 - 0.9**2)
    if related:
        return {"f0": a, "f1": 0.9 * a + noise * rng.normal(size=N),
                "f2": b, "f3": 0.9 * b + noise * rng.normal(size=N)}  # fmt: skip
    return {"f0": a, "f1": rng.normal(size=N), "f2": b, "f3": rng.normal(size=N)}


def test_a_broken_correlation_alerts_as_multivariate_drift_only(broker, tmp_path, uid):
    monitoring = _monitoring(
        T0,
        every="1h",
        watch={f: {"psi": {"warning": 0.1}, "ks": {"warning": 0.05}} for f in WATCHED},
        multivariate={"thresholds": {"warning": 1.5}},
    )
    path = _direct_topology(tmp_path, broker.bootstrap, uid, monitoring)
    topology, plan, uc, conf = prepared(path)
    rng = np.random.default_rng(3)
    rows = _sample_rows(T0, N, rng, **_pairs(rng, related=True))  # the reference
    rows += _sample_rows(T0 + HOUR_MS, N, rng, **_pairs(rng, related=True))  # alike
    broken = _pairs(rng, related=False)
    broken["f0"][::50] = np.nan  # some cells missing: taken at the reference mean
    rows += _sample_rows(T0 + 2 * HOUR_MS, N, rng, **broken)
    with open_store(topology.sites["here"].sample_store) as store:
        monitor = _monitor_over(store, plan, uc, rows)
        (alike,) = monitor.run_once(_at(T0 + 2 * HOUR_MS))
        (drifted,) = monitor.run_once(_at(T0 + 3 * HOUR_MS))
        board = DashboardData(plan, "here", store, hours=24 * 365 * 10).usecase(uc.name)

    assert alike.values[("multivariate", "reconstruction")] == pytest.approx(1.0, abs=0.1)
    assert alike.alerts == []
    ratio = drifted.values[("multivariate", "reconstruction")]
    assert ratio > 5  # two of four standardised variances no longer explained: ~10×
    # every column alone is as it was: only the multivariate statistic alerts
    assert {(a.subject, a.statistic) for a in drifted.alerts} == {
        ("multivariate", "reconstruction")
    }
    assert all(drifted.values[(f, "psi")] < 0.1 for f in WATCHED)
    assert board["drift"]["reconstruction"]["multivariate"]["v"][-1] == pytest.approx(ratio)
    assert board["thresholds"]["reconstruction"][0]["value"] == 1.5


def test_the_components_keep_the_declared_variance_and_skip_constant_columns():
    rng = np.random.default_rng(1)
    a = rng.normal(size=4000)
    rows = np.column_stack(
        [a, a + 0.01 * rng.normal(size=4000), rng.normal(size=4000), np.ones(4000)]
    )
    pca = fit_pca(rows, ["a", "a2", "b", "one"], variance=0.65)
    assert pca.columns == ("a", "a2", "b")  # the constant column carries nothing
    assert pca.components.shape == (1, 3)  # a and a2 together: 2 of 3 standardised variances
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(1), atol=1e-9)
