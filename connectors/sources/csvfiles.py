"""CSV sources: rows of one file or a glob, in modification-time order, with their header."""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
import re
from dataclasses import asdict
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from mlexec.connectors.sources.base import RecordShaper, SourceRecord
from mlexec.connectors.sources.files import (
    Cursor,
    Line,
    is_quiet,
    read_records,
    strip_line,
)
from mlexec.errors import ConnectorError
from mlexec.topologies.schema import CsvConnector

_NUMBER = re.compile(r"\s*-?\d+(\.\d*)?\s*")


def _in_zone(value: str, zone: ZoneInfo) -> str:
    """A timestamp written without a zone, as ISO 8601 in ``zone``; others as they are."""
    if _NUMBER.fullmatch(value):
        return value  # epoch numbers have no zone
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return value  # the shaping says what is wrong with it
    if moment.tzinfo is not None:
        return value
    return moment.replace(tzinfo=zone).isoformat()


__all__ = ["CsvSource"]

_log = logging.getLogger(__name__)


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
        self._zone = ZoneInfo(config.timezone) if config.timezone else None
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
                settled = self._once or is_quiet(path, self.config.settle.total_seconds())
                cursor = self._read_file(path, cursor, settled, limit - len(out), out)
            live[cursor.stream] = cursor
        self._cursors = live
        return out

    def _read_file(
        self, path: str, cursor: Cursor, settled: bool, limit: int, out: list[SourceRecord]
    ) -> Cursor:
        def take(lines: list[Line], data: bytes, size: int) -> Cursor:
            self._sizes[cursor.stream] = size
            return self._rows(path, cursor, lines, data, settled, limit, out)

        return read_records(path, cursor, settled, limit, take)

    def _rows(
        self,
        path: str,
        cursor: Cursor,
        lines: list[Line],
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
            if not strip_line(raw):
                continue  # blank line
            out.append(self._row(path, cursor, first, raw, columns))
            consumed += 1
        if done == 0:
            return cursor
        end = lines[done - 1]
        return cursor.advanced(path, end.end, done, data[: end.end - cursor.offset])

    def _cells(self, fields: dict[str, str]) -> dict[str, str]:
        """The CSV's own conventions undone: null markers, a decimal comma, a local zone."""
        cfg = self.config
        if cfg.null_values:
            nulls = set(cfg.null_values)
            fields = {k: "" if v.strip() in nulls else v for k, v in fields.items()}
        schema = self._shaper.schema
        if cfg.decimal == ",":
            for name, kind in schema.items():
                if kind in ("float", "int") and name in fields:
                    fields[name] = fields[name].replace(".", "").replace(",", ".")
        if self._zone is not None:
            for name, kind in schema.items():
                value = fields.get(name)
                if kind == "timestamp" and value:
                    fields[name] = _in_zone(value, self._zone)
        return fields

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
        self, path: str, cursor: Cursor, line: Line, raw: bytes, columns: list[str]
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
            key, value = self._shaper.shape(self._cells(dict(zip(columns, row, strict=True))))
        except ValueError as exc:
            return SourceRecord(position, where, None, raw, str(exc))
        return SourceRecord(position, where, key, value)
