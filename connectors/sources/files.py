"""File sources: CSV files (one file or a glob) and log files (tailed through rotation).

A file is followed by a :class:`Cursor`: its inode, a checksum of its first line, the
byte offset read up to, and a checksum of the 64 bytes before that offset. A file
*continues* a cursor when it is at least that long and both checksums still match —
which finds the same file after a rename (same bytes) and its copy after a
copy-truncate (same bytes, new inode), and refuses a file rewritten in place or a new
file that reused the inode. Only complete lines are read; a last line without its
newline waits until the file has been quiet for ``settle`` (or the pass is ``--once``).
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson

from mlexec.connectors.sources.base import RecordShaper, SourceRecord
from mlexec.errors import ConnectorError
from mlexec.topologies.schema import CsvConnector, LogfileConnector

__all__ = ["CsvSource", "Cursor", "LogfileSource"]

_log = logging.getLogger(__name__)

_HEAD_MAX = 1024
_TAIL = 64
_CHUNK = 4 << 20  # bytes read per step and file
_MAX_HOPS = 16  # rotated files followed in one read


@dataclass(frozen=True)
class Cursor:
    """How far one file has been read, and how to recognise it again."""

    path: str
    ino: int
    #: crc32 and length of the file's first line (at most 1 KiB).
    head: int
    head_len: int
    offset: int = 0
    #: Lines consumed so far (for "line N" in dead letters).
    line: int = 0
    #: crc32 of the bytes just before ``offset``.
    tail: int = 0
    #: Counts rotations, so a file that reappears with the same first line is a new stream.
    gen: int = 0

    @property
    def stream(self) -> str:
        return f"{self.ino:x}-{self.head:08x}-{self.gen}"

    @classmethod
    def start(cls, path: str, gen: int = 0) -> Cursor | None:
        """Start reading ``path``; ``None`` if it is missing or has no first line yet."""
        try:
            with open(path, "rb") as f:
                ino = os.fstat(f.fileno()).st_ino
                first = f.read(_HEAD_MAX)
        except FileNotFoundError:
            return None
        end = first.find(b"\n")
        if end < 0 and len(first) < _HEAD_MAX:
            return None
        head = first[: end + 1] if end >= 0 else first
        return cls(path=path, ino=ino, head=zlib.crc32(head), head_len=len(head), gen=gen)

    def continued_by(self, path: str) -> bool:
        """Whether the file now at ``path`` holds what this cursor has read, unchanged."""
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size < max(self.offset, self.head_len):
                    return False
                if zlib.crc32(f.read(self.head_len)) != self.head:
                    return False
                if self.offset:
                    back = min(_TAIL, self.offset)
                    f.seek(self.offset - back)
                    return zlib.crc32(f.read(back)) == self.tail
                return True
        except (FileNotFoundError, IsADirectoryError):
            return False

    def advanced(self, path: str, offset: int, lines: int, data_end: bytes) -> Cursor:
        """Move on to ``offset``; ``data_end`` holds the bytes read before it."""
        return replace(
            self,
            path=path,
            offset=offset,
            line=self.line + lines,
            tail=zlib.crc32(data_end[-_TAIL:])
            if len(data_end) >= _TAIL
            else self.tail_at(path, offset),
        )

    @staticmethod
    def tail_at(path: str, offset: int) -> int:
        back = min(_TAIL, offset)
        with open(path, "rb") as f:
            f.seek(offset - back)
            return zlib.crc32(f.read(back))


@dataclass(frozen=True)
class _Line:
    start: int
    end: int
    number: int
    raw: bytes


def _read_lines(
    path: str, cursor: Cursor, settled: bool, max_lines: int
) -> tuple[list[_Line], bytes, int]:
    """Up to ``max_lines`` complete lines after the cursor.

    An unterminated last line is included when ``settled``. Returns the lines, the
    bytes read (for the tail checksum) and the file size.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(cursor.offset)
        data = f.read(_CHUNK)
    cut = data.rfind(b"\n") + 1
    if settled and cut < len(data) and cursor.offset + len(data) == size:
        cut = len(data)
    lines: list[_Line] = []
    at, number = 0, cursor.line
    while at < cut and len(lines) < max_lines:
        nl = data.find(b"\n", at, cut)
        stop = cut if nl < 0 else nl + 1
        number += 1
        lines.append(_Line(cursor.offset + at, cursor.offset + stop, number, data[at:stop]))
        at = stop
    return lines, data[:cut], size


def _read_records(
    path: str,
    cursor: Cursor,
    settled: bool,
    limit: int,
    take: Callable[[list[_Line], bytes, int], Cursor],
) -> Cursor:
    """Read lines after ``cursor`` for ``take`` to turn into up to ``limit`` records.

    ``take`` gets the lines, their bytes and the file size, and returns the cursor
    after what it used. When one record needs more lines than were read, read more.
    """
    max_lines = 2 * limit + 64
    while True:
        try:
            lines, data, size = _read_lines(path, cursor, settled, max_lines)
        except FileNotFoundError:
            return cursor
        advanced = take(lines, data, size)
        if advanced is not cursor or len(lines) < max_lines:
            return advanced
        max_lines *= 8


def _quiet(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime >= seconds
    except FileNotFoundError:
        return True


def _strip(raw: bytes) -> bytes:
    return raw.rstrip(b"\r\n")


# ----------------------------------------------------------------------------- CSV


class CsvSource:
    """Rows of CSV files matching a path or glob, in modification-time order."""

    behind_unit = "bytes"

    def __init__(
        self,
        config: CsvConnector,
        shaper: RecordShaper,
        state: dict[str, Any] | None,
        *,
        once: bool = False,
    ) -> None:
        self.config = config
        self.origin = config.path
        self._shaper = shaper
        self._once = once
        self._cursors: dict[str, Cursor] = {
            stream: Cursor(**c) for stream, c in (state or {}).get("files", {}).items()
        }
        self._sizes: dict[str, int] = {}
        self._said: set[str] = set()  # what was said once: no file yet, a header's lack

    def state(self) -> dict[str, Any]:
        return {"files": {s: asdict(c) for s, c in self._cursors.items()}}

    def behind(self) -> int:
        return sum(
            max(0, self._sizes.get(s, c.offset) - c.offset) for s, c in self._cursors.items()
        )

    def wait(self) -> float:
        return self.config.poll.total_seconds()

    def close(self) -> None:
        pass

    def _files(self) -> list[str]:
        found = [p for p in glob.glob(self.config.path) if os.path.isfile(p)]

        def order(p: str) -> tuple[float, str]:
            try:
                return os.stat(p).st_mtime, p
            except FileNotFoundError:
                return 0.0, p

        return sorted(found, key=order)

    def _cursor_for(self, path: str) -> Cursor | None:
        """The known cursor the file at ``path`` continues, or a new one."""
        for cursor in self._cursors.values():
            if cursor.path == path and cursor.continued_by(path):
                return cursor
        for cursor in self._cursors.values():
            if cursor.path != path and cursor.continued_by(path):
                return cursor
        return Cursor.start(path)

    def read(self, limit: int) -> list[SourceRecord]:
        out: list[SourceRecord] = []
        live: dict[str, Cursor] = {}
        files = self._files()
        if not files and not self._cursors:
            what = f"{self.config.path} matches no file"
            if self._once:
                msg = f"{what}: check the connector's path (a file, or a glob such as /data/*.csv)"
                raise ConnectorError(msg)
            if what not in self._said:
                self._said.add(what)
                _log.warning("%s yet; reading it as soon as one appears", what)
        for path in files:
            cursor = self._cursor_for(path)
            if cursor is None:
                continue
            if len(out) < limit:
                settled = self._once or _quiet(path, self.config.settle.total_seconds())
                cursor = self._read_file(path, cursor, settled, limit - len(out), out)
            live[cursor.stream] = cursor
        self._cursors = live
        return out

    def _read_file(
        self, path: str, cursor: Cursor, settled: bool, limit: int, out: list[SourceRecord]
    ) -> Cursor:
        def take(lines: list[_Line], data: bytes, size: int) -> Cursor:
            self._sizes[cursor.stream] = size
            return self._rows(path, cursor, lines, data, settled, limit, out)

        return _read_records(path, cursor, settled, limit, take)

    def _rows(
        self,
        path: str,
        cursor: Cursor,
        lines: list[_Line],
        data: bytes,
        settled: bool,
        limit: int,
        out: list[SourceRecord],
    ) -> Cursor:
        if not lines:
            return cursor
        cfg = self.config
        columns = self._columns(path) if cfg.header else list(cfg.columns or [])
        columns = [cfg.rename.get(c, c) for c in columns]
        self._say_missing(path, columns)
        quote = cfg.quote
        done, consumed = 0, 0  # lines used, records emitted
        i = 0
        while i < len(lines) and consumed < limit:
            first = lines[i]
            if cfg.header and first.start == 0:  # the header row itself
                i += 1
                done = i
                continue
            # a quoted field may hold newlines: take lines until the quotes balance
            j, quotes = i, 0
            while j < len(lines):
                quotes += lines[j].raw.count(quote.encode())
                j += 1
                if quotes % 2 == 0:
                    break
            if quotes % 2:
                if not (settled and j == len(lines)):
                    break  # the row is still being written
            raw = b"".join(ln.raw for ln in lines[i:j])
            i = done = j
            if not _strip(raw):
                continue  # blank line
            out.append(self._row(path, cursor, first, raw, columns))
            consumed += 1
        if done == 0:
            return cursor
        end = lines[done - 1]
        return cursor.advanced(path, end.end, done, data[: end.end - cursor.offset])

    def _say_missing(self, path: str, columns: list[str]) -> None:
        """Once per file: the schema fields its columns lack (each of its rows is a dead letter)."""
        given = set(columns) | set(self._shaper.constants)
        missing = [f for f in self._shaper.schema if f not in given]
        if missing and path not in self._said:
            self._said.add(path)
            _log.warning(
                "%s: no column for the schema's %s (its columns: %s): every row goes to the "
                "dead-letter topic; name them with the connector's rename: or columns:",
                path,
                ", ".join(missing),
                ", ".join(columns) or "none",
            )

    def _columns(self, path: str) -> list[str]:
        cfg = self.config
        with open(path, newline="", encoding=cfg.encoding, errors="replace") as f:
            header = next(csv.reader(f, delimiter=cfg.delimiter, quotechar=cfg.quote), [])
        if cfg.columns:
            return list(cfg.columns)
        return [h.strip().lstrip("\ufeff") for h in header]  # a byte-order mark is no name

    def _row(
        self, path: str, cursor: Cursor, line: _Line, raw: bytes, columns: list[str]
    ) -> SourceRecord:
        cfg = self.config
        where = f"{path} line {line.number}"
        position = f"{cursor.stream}:{line.start}"
        try:
            text = raw.decode(cfg.encoding)
        except UnicodeDecodeError as exc:
            return SourceRecord(position, where, None, raw, f"not valid {cfg.encoding}: {exc}")
        if cfg.quote not in text:  # the common case: no quoting to undo
            rows = [text.rstrip("\r\n").split(cfg.delimiter)]
        else:
            try:
                reader = csv.reader(
                    io.StringIO(text, newline=""),
                    delimiter=cfg.delimiter,
                    quotechar=cfg.quote,
                    strict=True,
                )
                rows = list(reader)
            except csv.Error as exc:
                return SourceRecord(position, where, None, raw, f"not a CSV row: {exc}")
        row = rows[0] if len(rows) == 1 else None
        if row is None or len(row) != len(columns):
            found = len(row) if row is not None else f"{len(rows)} rows"
            reason = f"expected {len(columns)} fields ({', '.join(columns)}), found {found}"
            return SourceRecord(position, where, None, raw, reason)
        try:
            key, value = self._shaper.shape(dict(zip(columns, row, strict=True)))
        except ValueError as exc:
            return SourceRecord(position, where, None, raw, str(exc))
        return SourceRecord(position, where, key, value)


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
                settled = self._once or _quiet(at, self.config.settle.total_seconds())
                self._previous = self._read_file(at, self._previous, settled, limit, out)
            if at is None or at == path or (not out and time.time() >= self._previous_until):
                self._previous = None
        for _ in range(_MAX_HOPS):
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
            settled = self._once or _quiet(path, self.config.settle.total_seconds())
            self._current = self._read_file(path, self._current, settled, limit - len(out), out)
        return out

    def _read_file(
        self, path: str, cursor: Cursor, settled: bool, limit: int, out: list[SourceRecord]
    ) -> Cursor:
        def take(lines: list[_Line], data: bytes, size: int) -> Cursor:
            if path == self.config.path:
                self._size = size
            complete = settled or self._quiet_for_multiline(path)
            return self._lines(path, cursor, lines, data, complete, limit, out)

        return _read_records(path, cursor, settled, limit, take)

    def _lines(
        self,
        path: str,
        cursor: Cursor,
        lines: list[_Line],
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
            if not _strip(raw):
                continue
            out.append(self._record(path, cursor, group[0], raw))
            taken += 1
        if used == 0:
            return cursor
        end = lines[used - 1]
        return cursor.advanced(path, end.end, used, data[: end.end - cursor.offset])

    def _quiet_for_multiline(self, path: str) -> bool:
        multi = self.config.multiline
        return multi is not None and _quiet(path, multi.timeout.total_seconds())

    def _records(self, lines: list[_Line], complete: bool) -> list[list[_Line]]:
        """Group lines into records; the last multi-line record waits unless ``complete``."""
        if self._start is None:
            return [[ln] for ln in lines]
        groups: list[list[_Line]] = []
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

    def _record(self, path: str, cursor: Cursor, line: _Line, raw: bytes) -> SourceRecord:
        cfg = self.config
        where = f"{path} line {line.number}"
        position = f"{cursor.stream}:{line.start}"
        try:
            text = _strip(raw).decode(cfg.encoding)
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
