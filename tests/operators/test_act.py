"""Which predictions become actions: the `when` filter and the per-key debounce, on a test clock."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from mlexec.operators.act import ActionFilter, ActionFilterError, Debouncer


def _p(key: str, label: int, probs: list[float] | None = None) -> dict:
    return {
        "id": f"t:0:{key}{label}",
        "key": key,
        "time": 1,
        "model": "m",
        "version": "1",
        "variant": "production",
        "outputs": {"label": label, "probabilities": probs or [1.0 - label, float(label)]},
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_filter_on_scalar_and_vector_outputs_and_metadata():
    preds = [_p("a", 0), _p("b", 1), _p("c", 1, [0.4, 0.6])]
    assert ActionFilter("label = 1")(preds).tolist() == [False, True, True]
    assert ActionFilter("probabilities_1 > 0.9")(preds).tolist() == [False, True, False]
    assert ActionFilter("key <> 'b' AND label = 1")(preds).tolist() == [False, False, True]
    assert ActionFilter(None)(preds).tolist() == [True, True, True]


def test_a_bad_condition_is_refused_with_its_text():
    with pytest.raises(ActionFilterError, match="nosuch"):
        ActionFilter("nosuch > 1")([_p("a", 1)])


def test_debounce_every_lets_one_action_per_key_per_interval():
    clock = Clock()
    d = Debouncer(timedelta(seconds=10), None, clock=clock)
    assert d([_p("a", 1), _p("a", 1), _p("b", 1)]).tolist() == [True, False, True]
    clock.now += 9.999
    assert d([_p("a", 1), _p("b", 0)]).tolist() == [False, False]
    clock.now += 0.001
    assert d([_p("a", 1), _p("b", 0), _p("a", 1)]).tolist() == [True, True, False]


def test_debounce_on_change_acts_only_when_the_class_changes():
    d = Debouncer(None, "label", clock=Clock())
    labels = [0, 0, 1, 1, 1, 0, 1]
    assert d([_p("a", x) for x in labels]).tolist() == [True, False, True, False, False, True, True]
    assert d([_p("b", 1), _p("a", 1)]).tolist() == [True, False]  # per key


def test_debounce_both_needs_a_change_and_the_interval():
    clock = Clock()
    d = Debouncer(timedelta(seconds=5), "label", clock=clock)
    assert d([_p("a", 0)]).tolist() == [True]
    clock.now += 1
    assert d([_p("a", 1)]).tolist() == [False]  # changed, but too soon
    clock.now += 5
    assert d([_p("a", 1), _p("a", 0)]).tolist() == [True, False]


def test_debounce_state_survives_a_restart_and_stays_bounded():
    clock = Clock()
    d = Debouncer(timedelta(seconds=60), None, clock=clock, max_keys=3)
    d([_p(k, 1) for k in "abcd"])  # 'a' is forgotten: only three keys are kept
    again = Debouncer(timedelta(seconds=60), None, clock=clock, max_keys=3, state=d.state())
    clock.now += 1
    assert again([_p(k, 1) for k in "bcda"]).tolist() == [False, False, False, True]
    assert len(again.state()) == 3
    assert isinstance(again([]), np.ndarray)
