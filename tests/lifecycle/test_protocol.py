"""The routing state machine and the key split, as pure logic: no broker, no model."""

from __future__ import annotations

import numpy as np
import pytest

from mlexec.errors import RegistryError
from mlexec.lifecycle.protocol import Assembler, Routing, key_shares, routing_message


def test_a_version_goes_candidate_canary_production_then_rolls_back():
    r = Routing("uc").publish("1", "production", 0.0)
    assert r.production == "1" and r.serving() == {"1"}
    r = r.publish("2", "candidate", 0.0)
    assert r.stage_of("2") == "candidate" and r.serving() == {"1"}
    r = r.publish("2", "canary", 0.25)
    assert r.stage_of("2") == "canary 25%" and r.serving() == {"1", "2"}
    r = r.promote("2")
    assert (r.production, r.canary, r.history) == ("2", None, ("1",))
    r = r.rollback()
    assert (r.production, r.history, r.retired) == ("1", (), ("2",))
    assert r.change == "rolled back from 2 to 1"


def test_shadow_and_ab_variants_serve_beside_production_and_retire_ends_them():
    r = Routing("uc", production="1").publish("2", "shadow", 0.0)
    r = r.split([("a", "3", 0.3), ("b", "4", 0.2)])
    assert r.serving() == {"1", "2", "3", "4"}
    assert r.stage_of("3") == "a 30%" and r.stage_of("2") == "shadow"
    r = r.retire("3").retire("2")
    assert r.serving() == {"1", "4"} and r.stage_of("3") == "retired"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.promote("1"), "already serves production"),
        (lambda r: Routing("uc").rollback(), "no earlier production version"),
        (lambda r: r.retire("1"), "serves production"),
        (lambda r: r.publish("2", "canary", 1.0), "between 0 and 1"),
        (lambda r: r.publish("2", "staging", 0.0), "a stage of"),
        (lambda r: r.split([("a", "2", 0.7), ("b", "3", 0.6)]), "add up to at most 1"),
        (lambda r: r.split([("a", "2", 0.1), ("a", "3", 0.1)]), "distinct variant names"),
        (lambda r: r.split([("production", "2", 0.1)]), "distinct variant names"),
    ],
)
def test_an_impossible_change_is_refused_with_the_reason(change, message):
    with pytest.raises(RegistryError, match=message):
        change(Routing("uc", production="1"))


def test_a_routing_survives_its_message_and_the_latest_wins():
    first = Routing("uc", production="1", history=("0",))
    second = first.publish("2", "canary", 0.1)
    registry = Assembler()
    for routing in (first, second):
        key, value = routing_message(routing)
        registry.add(key, value)
    (kept,) = registry.routings.values()
    assert (kept.production, kept.canary, kept.history) == ("1", ("2", 0.1), ("0",))
    assert Routing.parse(second.value()) == kept


def test_key_shares_are_stable_uniform_and_split_keys_by_share():
    keys = [f"machine-{i}" for i in range(20_000)]
    shares = key_shares(keys)
    assert np.array_equal(shares, key_shares(keys))  # sticky: the same key, the same share
    assert ((shares >= 0) & (shares < 1)).all()
    assert abs(float((shares < 0.3).mean()) - 0.3) < 0.02  # a 30 % canary takes ~30 % of keys
    assert len(np.unique(shares)) > 19_900
