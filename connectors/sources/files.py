"""Following files for the file sources (CSV: :mod:`.csvfiles`, logs: :mod:`.logfiles`).

A file is followed by a :class:`Cursor`: its inode, a checksum of its first line, the
byte offset read up to, and a checksum of the 64 bytes before that offset. A file
*continues* a cursor when it is at least that long and both checksums still match —
which finds the same file after a rename (same bytes) and its copy after a
copy-truncate (same bytes, new inode), and refuses a file rewritten in place or a new
file that reused the inode. Only complete lines are read; a last line without its
newline waits until the file has been quiet for ``settle`` (or the pass is ``--once``).
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace

__all__ = ["MAX_HOPS", "Cursor", "Line", "is_quiet", "read_lines", "read_records", "strip_line"]

_log = logging.getLogger(__name__)

_HEAD_MAX = 1024
_TAIL = 64
_CHUNK = 4 << 20  # bytes read per step and file
MAX_HOPS = 16  # rotated files followed in one read


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
class Line:
    """One complete line of a file: its byte range, its number and its bytes."""

    start: int
    end: int
    number: int
    raw: bytes


def read_lines(
    path: str, cursor: Cursor, settled: bool, max_lines: int
) -> tuple[list[Line], bytes, int]:
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
    lines: list[Line] = []
    at, number = 0, cursor.line
    while at < cut and len(lines) < max_lines:
        nl = data.find(b"\n", at, cut)
        stop = cut if nl < 0 else nl + 1
        number += 1
        lines.append(Line(cursor.offset + at, cursor.offset + stop, number, data[at:stop]))
        at = stop
    return lines, data[:cut], size


def read_records(
    path: str,
    cursor: Cursor,
    settled: bool,
    limit: int,
    take: Callable[[list[Line], bytes, int], Cursor],
) -> Cursor:
    """Read lines after ``cursor`` for ``take`` to turn into up to ``limit`` records.

    ``take`` gets the lines, their bytes and the file size, and returns the cursor
    after what it used. When one record needs more lines than were read, read more.
    """
    max_lines = 2 * limit + 64
    while True:
        try:
            lines, data, size = read_lines(path, cursor, settled, max_lines)
        except FileNotFoundError:
            return cursor
        advanced = take(lines, data, size)
        if advanced is not cursor or len(lines) < max_lines:
            return advanced
        max_lines *= 8


def is_quiet(path: str, seconds: float) -> bool:
    """Whether the file has not changed for ``seconds`` (a gone file is quiet)."""
    try:
        return time.time() - os.stat(path).st_mtime >= seconds
    except FileNotFoundError:
        return True


def strip_line(raw: bytes) -> bytes:
    """The line without its line ending."""
    return raw.rstrip(b"\r\n")
