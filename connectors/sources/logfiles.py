"""Log files, tailed through rotation: one record per line (or per multiline record)."""

from __future__ import annotations

import glob
import logging
import os
import re
import time
from dataclasses import asdict
from typing import Any

import orjson

from mlexec.connectors.sources.base import RecordShaper, SourceRecord
from mlexec.connectors.sources.files import (
    MAX_HOPS,
    Cursor,
    Line,
    is_quiet,
    read_records,
    strip_line,
)
from mlexec.topologies.schema import LogfileConnector

__all__ = ["LogfileSource"]

_log = logging.getLogger(__name__)


# ------------------------------------------------------------------------- log files


class LogfileSource:
    """Lines appended to one log file, through rotation by rename and by copy-truncate.

    The state holds the cursor of the current file and, for ``rotate_wait`` after a
    rotation, of the previous one (a writer may add lines to the renamed file until it
    reopens its log).
    """

    behind_unit = "bytes"

    def __init__(
        self,
        config: LogfileConnector,
        shaper: RecordShaper,
        state: dict[str, Any] | None,
        *,
        once: bool = False,
    ) -> None:
        self.config = config
        self.origin = config.path
        self._shaper = shaper
        self._once = once
        state = state or {}
        self._current = Cursor(**state["current"]) if state.get("current") else None
        self._previous = Cursor(**state["previous"]) if state.get("previous") else None
        self._previous_until = float(state.get("previous_until", 0.0))
        flags = re.DOTALL if config.multiline else 0
        self._pattern = re.compile(config.pattern, flags) if config.pattern else None
        self._start = re.compile(config.multiline.start) if config.multiline else None
        self._size = 0

    def state(self) -> dict[str, Any]:
        return {
            "current": asdict(self._current) if self._current else None,
            "previous": asdict(self._previous) if self._previous else None,
            "previous_until": self._previous_until,
        }

    def behind(self) -> int:
        return max(0, self._size - (self._current.offset if self._current else 0))

    def wait(self) -> float:
        return self.config.poll.total_seconds()

    def close(self) -> None:
        pass

    def _rotated(self) -> list[str]:
        pattern = self.config.rotated
        if pattern is None:
            base = glob.escape(self.config.path)
            found = glob.glob(base + ".*") + glob.glob(base + "-*")
        else:
            found = glob.glob(pattern)
        return sorted(p for p in found if not p.endswith((".gz", ".bz2", ".xz", ".zst")))

    def _locate(self, cursor: Cursor) -> str | None:
        """Where the file the cursor follows is now: its path, a rotated name, or gone."""
        if cursor.continued_by(self.config.path):
            return self.config.path
        same_inode: list[str] = []
        others: list[str] = []
        for p in self._rotated():
            try:
                (same_inode if os.stat(p).st_ino == cursor.ino else others).append(p)
            except FileNotFoundError:
                continue
        for p in [*same_inode, *others]:
            if cursor.continued_by(p):
                return p
        return None

    def read(self, limit: int) -> list[SourceRecord]:
        out: list[SourceRecord] = []
        path = self.config.path
        if self._previous is not None:
            at = self._locate(self._previous)
            if at is not None and at != path:
                settled = self._once or is_quiet(at, self.config.settle.total_seconds())
                self._previous = self._read_file(at, self._previous, settled, limit, out)
            if at is None or at == path or (not out and time.time() >= self._previous_until):
                self._previous = None
        for _ in range(MAX_HOPS):
            if self._current is None:
                self._current = Cursor.start(path)
                if self._current is None:
                    return out
            at = self._locate(self._current)
            if at == path:
                return self._read_current(path, limit, out)
            if at is None:
                _log.warning(
                    "%s: the file read up to offset %d is gone (deleted or rotated away "
                    "unrecognised); going on with the new file",
                    path,
                    self._current.offset,
                )
                self._current = Cursor.start(path, gen=self._current.gen + 1)
                continue
            # rotated: finish the old file, then go on with the file rotated after it
            # (two rotations between reads) or the new one
            self._current = self._read_file(at, self._current, True, limit - len(out), out)
            if len(out) >= limit:
                return out
            new = Cursor.start(self._rotated_after(at) or path, gen=self._current.gen + 1)
            if new is None:
                return out
            self._previous, self._current = self._current, new
            self._previous_until = time.time() + self.config.rotate_wait.total_seconds()
        return out

    def _rotated_after(self, done: str) -> str | None:
        """The oldest rotated file changed after ``done`` that holds something else."""
        try:
            since = os.stat(done).st_mtime
        except FileNotFoundError:
            return None
        known = [c for c in (self._current, self._previous) if c is not None]
        later = []
        for p in self._rotated():
            try:
                mtime = os.stat(p).st_mtime
            except FileNotFoundError:
                continue
            if p != done and mtime >= since and not any(c.continued_by(p) for c in known):
                later.append((mtime, p))
        return min(later)[1] if later else None

    def _read_current(self, path: str, limit: int, out: list[SourceRecord]) -> list[SourceRecord]:
        if len(out) < limit and self._current is not None:
            settled = self._once or is_quiet(path, self.config.settle.total_seconds())
            self._current = self._read_file(path, self._current, settled, limit - len(out), out)
        return out

    def _read_file(
        self, path: str, cursor: Cursor, settled: bool, limit: int, out: list[SourceRecord]
    ) -> Cursor:
        def take(lines: list[Line], data: bytes, size: int) -> Cursor:
            if path == self.config.path:
                self._size = size
            complete = settled or self._quiet_for_multiline(path)
            return self._lines(path, cursor, lines, data, complete, limit, out)

        return read_records(path, cursor, settled, limit, take)

    def _lines(
        self,
        path: str,
        cursor: Cursor,
        lines: list[Line],
        data: bytes,
        complete: bool,
        limit: int,
        out: list[SourceRecord],
    ) -> Cursor:
        groups = self._records(lines, complete)
        used, taken = 0, 0
        for group in groups:
            if taken >= limit:
                break
            used += len(group)
            raw = b"".join(ln.raw for ln in group)
            if not strip_line(raw):
                continue
            out.append(self._record(path, cursor, group[0], raw))
            taken += 1
        if used == 0:
            return cursor
        end = lines[used - 1]
        return cursor.advanced(path, end.end, used, data[: end.end - cursor.offset])

    def _quiet_for_multiline(self, path: str) -> bool:
        multi = self.config.multiline
        return multi is not None and is_quiet(path, multi.timeout.total_seconds())

    def _records(self, lines: list[Line], complete: bool) -> list[list[Line]]:
        """Group lines into records; the last multi-line record waits unless ``complete``."""
        if self._start is None:
            return [[ln] for ln in lines]
        groups: list[list[Line]] = []
        start = self._start
        encoding = self.config.encoding
        for ln in lines:
            text = ln.raw.decode(encoding, "replace")
            if not groups or start.match(text):
                groups.append([ln])
            else:
                groups[-1].append(ln)
        if groups and not complete:
            groups.pop()  # the last record may go on
        return groups

    def _record(self, path: str, cursor: Cursor, line: Line, raw: bytes) -> SourceRecord:
        cfg = self.config
        where = f"{path} line {line.number}"
        position = f"{cursor.stream}:{line.start}"
        try:
            text = strip_line(raw).decode(cfg.encoding)
        except UnicodeDecodeError as exc:
            return SourceRecord(position, where, None, raw, f"not valid {cfg.encoding}: {exc}")
        fields: dict[str, Any] | None
        if self._pattern is not None:
            match = self._pattern.match(text)
            if match is None:
                return SourceRecord(
                    position, where, None, raw, f"does not match the pattern {cfg.pattern!r}"
                )
            fields = {k: v for k, v in match.groupdict().items() if v is not None}
        else:
            try:
                parsed = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                return SourceRecord(position, where, None, raw, f"not valid JSON: {exc}")
            if not isinstance(parsed, dict):
                reason = f"expected a JSON object, found {type(parsed).__name__}"
                return SourceRecord(position, where, None, raw, reason)
            fields = parsed
        try:
            key, value = self._shaper.shape(fields)
        except ValueError as exc:
            return SourceRecord(position, where, None, raw, str(exc))
        return SourceRecord(position, where, key, value)
