"""Retry with exponential backoff and jitter, for everything that talks to a remote service."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from mlexec.errors import ConnectorError
from mlexec.topologies.schema import Backoff

__all__ = ["HttpStatusError", "RetryableError", "check_http", "with_backoff"]

#: HTTP answers worth another attempt besides every 5xx.
_RETRY_STATUS = {408, 425, 429}

_log = logging.getLogger(__name__)

T = TypeVar("T")


class RetryableError(ConnectorError):
    """A failure worth another attempt (timeouts, 5xx, a lost connection)."""


def with_backoff(
    attempt: Callable[[], T],
    backoff: Backoff,
    *,
    what: str,
    on_retry: Callable[[Exception], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``attempt`` until it returns, up to ``backoff.attempts`` times.

    Only :class:`RetryableError` is retried, waiting ``initial``, doubling up to ``max``
    (±20 % jitter); the last error is raised when the attempts are spent.
    """
    delay = backoff.initial.total_seconds()
    for number in range(1, backoff.attempts + 1):
        try:
            return attempt()
        except RetryableError as exc:
            if number == backoff.attempts:
                raise
            if on_retry is not None:
                on_retry(exc)
            _log.info("%s: %s; attempt %d in %.2fs", what, exc, number + 1, delay)
            sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not secrecy
            delay = min(delay * 2, backoff.max.total_seconds())
    msg = "attempts must be at least 1"  # pragma: no cover - the schema says so
    raise ValueError(msg)


class HttpStatusError(ConnectorError):
    """An HTTP answer that another attempt will not change (a 4xx other than 408/429)."""


def check_http(request: Callable[[], httpx.Response]) -> httpx.Response:
    """Send ``request``; transport errors and 408/429/5xx become :class:`RetryableError`."""
    try:
        response = request()
    except httpx.TransportError as exc:
        msg = f"{type(exc).__name__}: {exc}"
        raise RetryableError(msg) from exc
    if response.status_code in _RETRY_STATUS or response.status_code >= 500:
        msg = f"HTTP {response.status_code}"
        raise RetryableError(msg)
    if response.status_code >= 400:
        msg = f"HTTP {response.status_code}: {response.text[:200]}"
        raise HttpStatusError(msg)
    return response
