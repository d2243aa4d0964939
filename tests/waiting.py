"""The one wait helper of the test suite: poll observable state, never sleep a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition", every: float = 0.2
) -> Any:
    """Poll ``predicate`` until it returns something true (returned); fail naming ``what``.

    An exception from ``predicate`` counts as "not yet" (a topic that does not exist yet,
    a broker reconnecting) until the deadline, when the last one is shown.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            found = predicate()
        except Exception as exc:  # noqa: BLE001 - not there yet; shown if it never is
            last, found = exc, None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}") from last
        time.sleep(every)


def settled(read: Callable[[], Any], timeout: float = 60.0, what: str = "a settled value") -> Any:
    """Read until two reads in a row agree (what was in flight has landed); that value."""
    previous: list[Any] = []

    def same() -> bool:
        value = read()
        agreed = bool(previous) and previous[-1] == value
        previous.append(value)
        return agreed

    wait_for(same, timeout, what, every=0.5)
    return previous[-1]
