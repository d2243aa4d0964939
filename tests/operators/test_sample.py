"""Sampling: a rate that holds statistically and repeats exactly, and a condition that keeps all."""

from __future__ import annotations

import math

import numpy as np

from mlexec.operators.infer import Predictions
from mlexec.operators.records import Records
from mlexec.operators.sample import Sampler


def _pred(n: int, offset: int = 0) -> Predictions:
    ids = np.arange(offset, offset + n, dtype=np.uint64)
    recs = Records(
        [f"r:0:{i}" for i in ids.tolist()],
        ids,
        ["k"] * n,
        np.zeros(n, np.int64),
        {"a": np.linspace(0, 1, n)},
    )
    score = (np.arange(n) % 100) / 100.0
    return Predictions(recs, {"score": score, "probs": np.column_stack([1 - score, score])}, 0.1)


def test_rate_is_within_statistical_tolerance_and_deterministic():
    n, rate = 50_000, 0.05
    sampler = Sampler(rate, None, ["a"])
    keep, reasons = sampler(_pred(n))
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(keep.sum() - n * rate) < 4 * sigma
    assert set(reasons[keep].tolist()) == {"rate"}
    again, _ = Sampler(rate, None, ["a"])(_pred(n))
    assert (again == keep).all()


def test_condition_keeps_every_match_and_can_read_vector_outputs():
    keep, reasons = Sampler(0.0, "probs_1 >= 0.97 or a < 0.001", ["a"])(_pred(1000))
    score = (np.arange(1000) % 100) / 100.0
    expected = (score >= 0.97) | (np.linspace(0, 1, 1000) < 0.001)
    assert (keep == expected).all()
    assert set(reasons[keep].tolist()) == {"condition"}
