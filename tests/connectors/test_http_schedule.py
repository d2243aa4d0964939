"""When the HTTP source polls: interval, cron, and a tick missed while it was stopped."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from mlexec.connectors.sources import open_source
from mlexec.topologies.schema import UseCase


def _source(schedule: dict[str, str], state: dict | None):
    usecase = UseCase.model_validate(
        {
            "input": {
                "key": "k",
                "time": "t",
                "schema": {"k": "str", "t": "timestamp", "x": "float"},
            },
            "connectors": [{"kind": "http", "url": "http://127.0.0.1:9/none", **schedule}],
            "dispatch": {"kind": "microbatch"},
            "model": {"name": "m", "version": "1", "path": "m.onnx"},
        }
    )
    return open_source(usecase.connectors[0], usecase.input, state, kafka_conf={})


def test_a_first_run_polls_at_once():
    assert _source({"every": "1h"}, None).wait() == 0


def test_an_interval_counts_from_the_last_poll():
    src = _source({"every": "1h"}, {"last_poll": time.time() - 600, "validators": {}})
    assert src.wait() == pytest.approx(3000, abs=5)


def test_cron_waits_for_its_next_tick():
    now = datetime.now(UTC)
    src = _source({"cron": "0 2 * * *"}, {"last_poll": now.timestamp(), "validators": {}})
    next_two = now.replace(hour=2, minute=0, second=0, microsecond=0)
    if next_two <= now:
        next_two += timedelta(days=1)
    assert src.wait() == pytest.approx((next_two - now).total_seconds(), abs=5)


def test_a_tick_missed_while_stopped_is_polled_at_once():
    last = datetime.now(UTC) - timedelta(days=1, minutes=1)  # a daily tick passed since
    src = _source({"cron": "0 2 * * *"}, {"last_poll": last.timestamp(), "validators": {}})
    assert src.wait() == 0
