"""HTTP source: poll a JSON endpoint on an interval or a cron schedule.

Each poll fetches the URL (and the pages a ``next`` path points to), with the ETag and
Last-Modified of the last complete fetch, so an unchanged page costs a 304 and
produces nothing; a server without validators is recognised by the body's digest.
Errors and timeouts are retried with exponential backoff. A page's validators are
only kept once every record on it has been handed on, and each record's position is
the page digest and its index — a restart in the middle of a page resumes it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import httpx
import jmespath
import orjson
from croniter import croniter

from mlexec.connectors.retry import HttpStatusError, RetryableError, check_http, with_backoff
from mlexec.connectors.sources.base import RecordShaper, SourceRecord
from mlexec.errors import MlexecError
from mlexec.topologies.schema import HttpConnector

__all__ = ["HttpSource"]

_log = logging.getLogger(__name__)


class HttpSource:
    """Records from a JSON endpoint, read when the schedule says so."""

    behind_unit = "pages"

    def __init__(
        self,
        config: HttpConnector,
        shaper: RecordShaper,
        state: dict[str, Any] | None,
        *,
        once: bool = False,
    ) -> None:
        self.config = config
        self.origin = config.url
        self._shaper = shaper
        self._once = once
        state = state or {}
        self._validators: dict[str, dict[str, str]] = dict(state.get("validators", {}))
        self._last_poll: float | None = state.get("last_poll")
        self._records = jmespath.compile(config.records)
        self._next = jmespath.compile(config.next) if config.next else None
        self._client = httpx.Client(
            timeout=config.timeout.total_seconds(),
            headers={k: v.get_secret_value() for k, v in config.headers.items()},
            follow_redirects=True,
        )
        self._pending: list[SourceRecord] = []
        self._pending_validators: dict[str, dict[str, str]] = {}
        self._due = time.time() if once else self._first_due()
        self._polled = False

    # ------------------------------------------------------------- schedule

    def _first_due(self) -> float:
        """Now on a first run or after a missed tick; else the next scheduled time."""
        if self._last_poll is None:
            return time.time()
        return self._after(self._last_poll)  # in the past when a tick was missed: at once

    def _after(self, moment: float) -> float:
        cfg = self.config
        if cfg.every is not None:
            return moment + cfg.every.total_seconds()
        assert cfg.cron is not None
        start = datetime.fromtimestamp(moment, tz=UTC)
        return float(croniter(cfg.cron, start).get_next(float))

    def wait(self) -> float:
        return max(0.0, self._due - time.time())

    def behind(self) -> int | None:
        return 1 if self._pending else 0

    def state(self) -> dict[str, Any]:
        return {"validators": self._validators, "last_poll": self._last_poll}

    def close(self) -> None:
        self._client.close()

    # ----------------------------------------------------------------- read

    def read(self, limit: int) -> list[SourceRecord]:
        if not self._pending:
            if self._once and self._polled:
                return []
            if time.time() < self._due:
                return []
            self._poll()
        out, self._pending = self._pending[:limit], self._pending[limit:]
        if not self._pending:
            self._validators.update(self._pending_validators)
            self._pending_validators = {}
        return out

    def _poll(self) -> None:
        started = time.time()
        url: str | None = self.config.url
        seen: set[str] = set()
        pages = 0
        while url is not None and url not in seen and pages < self.config.max_pages:
            seen.add(url)
            pages += 1
            url = self._page(url)
        if url is not None and pages >= self.config.max_pages:
            _log.warning("%s: stopped after max_pages=%d pages", self.origin, pages)
        # forget validators of pages no longer linked, so the state stays bounded
        self._validators = {u: v for u, v in self._validators.items() if u in seen}
        self._last_poll = started
        self._due = self._after(started)
        self._polled = True

    def _page(self, url: str) -> str | None:
        """Fetch one page, queue its records; the next page's URL, if any."""
        known = self._validators.get(url, {})
        headers = {}
        if "etag" in known:
            headers["If-None-Match"] = known["etag"]
        if "last_modified" in known:
            headers["If-Modified-Since"] = known["last_modified"]
        response = self._fetch(url, headers)
        if response.status_code == 304:
            return self._next_url(url, known.get("next"))
        body = response.content
        digest = hashlib.sha256(body).hexdigest()[:16]
        validators = {"digest": digest}
        if "etag" in response.headers:
            validators["etag"] = response.headers["etag"]
        if "last-modified" in response.headers:
            validators["last_modified"] = response.headers["last-modified"]
        if known.get("digest") == digest:
            self._pending_validators[url] = {**validators, **_keep_next(known)}
            return self._next_url(url, known.get("next"))
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            where = f"{url} (page {digest})"
            self._pending.append(
                SourceRecord(f"{url}#{digest}", where, None, body, f"not valid JSON: {exc}")
            )
            self._pending_validators[url] = validators
            return None
        found = self._records.search(document)
        items = found if isinstance(found, list) else ([] if found is None else [found])
        for i, item in enumerate(items):
            self._pending.append(self._record(url, digest, i, item))
        next_url = self._next.search(document) if self._next is not None else None
        if isinstance(next_url, str) and next_url:
            validators["next"] = next_url
        self._pending_validators[url] = validators
        return self._next_url(url, validators.get("next"))

    @staticmethod
    def _next_url(url: str, link: str | None) -> str | None:
        return urljoin(url, link) if link else None

    def _record(self, url: str, digest: str, i: int, item: Any) -> SourceRecord:
        position = f"{url}#{digest}:{i}"
        where = f"{url} record {i}"
        if not isinstance(item, dict):
            raw = orjson.dumps(item)
            reason = f"expected a JSON object, found {type(item).__name__}"
            return SourceRecord(position, where, None, raw, reason)
        try:
            key, value = self._shaper.shape(item)
        except ValueError as exc:
            return SourceRecord(position, where, None, orjson.dumps(item), str(exc))
        return SourceRecord(position, where, key, value)

    def _fetch(self, url: str, headers: dict[str, str]) -> httpx.Response:
        """GET with retries on transport errors, timeouts and 408/429/5xx."""

        def get() -> httpx.Response:
            return check_http(lambda: self._client.get(url, headers=headers))

        try:
            return with_backoff(get, self.config.retry, what=f"GET {url}")
        except (RetryableError, HttpStatusError) as exc:
            msg = f"GET {url} failed: {exc}"
            raise MlexecError(msg) from exc


def _keep_next(known: dict[str, str]) -> dict[str, str]:
    return {"next": known["next"]} if "next" in known else {}
