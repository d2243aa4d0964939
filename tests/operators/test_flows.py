"""The dispatch rules inside a bytewax flow, on one worker and on two (``entry_point``).

The logic tests drive each rule on a test clock; these run the same logic as the site's
flow does — keyed by bucket through ``stateful_batch`` — so on two workers each holds
the state of some buckets, and every record must still land in exactly one dispatch.
"""

from __future__ import annotations

from datetime import timedelta

from mlexec.operators.dispatch import CountLogic
from mlexec.operators.windows import WindowLogic, WindowShape
from tests.operators.test_dispatch import Clock, _groups, _records, _run, _slice

BUCKETS = 4


def _key(t: int) -> str:
    return f"m{(t // 1000) % 8}"  # eight machines, two per bucket


def test_tumbling_windows_in_a_flow_group_each_record_once(entry_point):
    times = list(range(0, 60_000, 500))
    items = []
    for chunk in range(6):  # six consumed batches, each split into its buckets
        part = times[chunk * 20 : chunk * 20 + 20]
        for b in range(BUCKETS):
            mine = [t for t in part if int(_key(t)[1:]) % BUCKETS == b]
            items.append((f"b{b}", _slice(_records(0, mine, [_key(t) for t in mine], mine))))
    shape = WindowShape.tumbling(timedelta(seconds=10))
    got = _run(
        items, lambda s: WindowLogic(shape, partitions=1, now=Clock(), resume=s), entry_point
    )
    windows = _groups(got)
    seen = sorted(rid for ids in windows.values() for rid in ids)
    assert seen == sorted(f"raw:0:{t}" for t in times)  # every record once
    for (key, start), ids in windows.items():
        assert ids == [
            f"raw:0:{t}" for t in times if _key(t) == key and start <= t < start + 10_000
        ]


def test_count_windows_in_a_flow_keep_each_keys_arrival_order(entry_point):
    items = [
        (f"b{b}", _records(b, list(range(i * 5, i * 5 + 5)), [f"k{b}"] * 5, list(range(5))))
        for i in range(6)
        for b in range(BUCKETS)
    ]
    got = _run(items, lambda s: CountLogic(4, resume=s), entry_point)
    groups = _groups(got)
    for b in range(BUCKETS):
        mine = [groups[(f"k{b}", g)] for g in range(7)]  # 30 records: 7 full groups of 4
        assert [rid for ids in mine for rid in ids] == [f"raw:{b}:{o}" for o in range(28)]
        assert all(len(ids) == 4 for ids in mine)
