"""bytewax's worker threads keep their Python thread state from one activation to the next.

Without it (``mlexec.runtime.threadstates``), PyO3 creates and deletes a thread state at
every step's every activation on a thread bytewax spawned — which shows from Python as
``threading.local`` storage emptied between two batches of the same worker. These runs
are real clusters (several workers, and a cluster of one process over loopback).
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource

from mlexec.connectors.broker import free_port
from mlexec.runtime.run import execute
from mlexec.runtime.threadstates import HOLD_STEP

ITEMS = 600


class _Kept:
    """Something a worker keeps in its thread-local storage."""


def _counting_flow(local: threading.local, kept: list[weakref.ref[_Kept]]) -> tuple:
    seen: list[tuple[int, int, int]] = []  # (thread, its count so far, item)

    def count(x: int) -> int:
        if not hasattr(local, "count"):
            local.count, local.kept = 0, _Kept()
            kept.append(weakref.ref(local.kept))
        local.count += 1
        seen.append((threading.get_ident(), local.count, x))
        return x

    flow = Dataflow("thread_states")
    items = op.input("in", flow, TestingSource(range(ITEMS), batch_size=5))
    spread = op.redistribute("spread", items)  # every worker gets batches
    out: list[int] = []
    op.output("out", op.map("count", spread, count), TestingSink(out))
    return flow, seen, out


def _assert_lasted(seen: list[tuple[int, int, int]], workers: int) -> None:
    """Each worker counted its items 1, 2, 3, …: its storage lasted from batch to batch."""
    by_thread: dict[int, list[int]] = defaultdict(list)
    for thread, so_far, _ in seen:
        by_thread[thread].append(so_far)
    assert len(by_thread) == workers, f"every worker counted: {sorted(by_thread)}"
    for thread, counts in by_thread.items():
        assert counts == list(range(1, len(counts) + 1)), (thread, counts[:30])


@pytest.mark.parametrize(
    "how",
    [
        {"workers": 2},
        {"workers": 3},
        "a cluster of one process",
    ],
    ids=["2 workers", "3 workers", "cluster of one"],
)
def test_a_workers_thread_local_storage_lasts_the_whole_run_and_goes_with_it(how):
    if how == "a cluster of one process":
        how = {"addresses": [f"127.0.0.1:{free_port()}"], "process_id": 0}
    local, kept = threading.local(), []
    flow, seen, out = _counting_flow(local, kept)
    steps = len(flow.substeps)

    execute(flow, **how)

    assert sorted(out) == list(range(ITEMS))
    workers = how.get("workers", 1)
    _assert_lasted(seen, workers)
    assert len(kept) == workers
    # after the run the states went, and what the workers kept in them with them
    assert [ref() for ref in kept] == [None] * workers
    # the flow itself is as it was, so it runs again
    assert len(flow.substeps) == steps
    assert HOLD_STEP not in {s.step_name for s in flow.substeps}


def test_the_same_flow_runs_again_and_one_worker_runs_on_the_calling_thread():
    local, kept = threading.local(), []
    flow, seen, out = _counting_flow(local, kept)
    execute(flow, workers=2)
    first = len(seen)
    execute(flow)  # one worker: bytewax's run_main, on this (Python) thread

    assert sorted(out) == sorted([*range(ITEMS), *range(ITEMS)])
    mine = [so_far for thread, so_far, _ in seen[first:] if thread == threading.get_ident()]
    assert mine == list(range(1, ITEMS + 1)), "the one worker ran on the caller's thread"


def test_a_run_that_fails_on_a_worker_raises_and_the_next_run_still_works():
    def fail(x: int) -> int:
        if x == 300:
            raise ValueError("record 300 is bad")
        return x

    flow = Dataflow("failing")
    items = op.redistribute("spread", op.input("in", flow, TestingSource(range(ITEMS), 5)))
    op.output("out", op.map("fail", items, fail), TestingSink([]))
    # the error itself reaches the caller: test_run_beside's multi-worker error test
    with pytest.raises(Exception, match='in step "failing.fail'):
        execute(flow, workers=2)

    local, kept = threading.local(), []
    again, seen, out = _counting_flow(local, kept)
    execute(again, workers=2)
    assert sorted(out) == list(range(ITEMS))
    _assert_lasted(seen, 2)
