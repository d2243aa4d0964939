"""SQL source: new rows of a table or query, read incrementally on a cursor column.

Any SQLAlchemy URL works (PostgreSQL through psycopg, SQLite, ...). Each read asks
for the next ``batch`` rows above the cursor, in cursor order::

    SELECT * FROM (<table or query>) AS src
    WHERE cursor > :c OR (cursor = :c AND tiebreak > :t)
    ORDER BY cursor, tiebreak LIMIT :n

so rows sharing a timestamp are neither skipped nor read twice when a ``tiebreak``
column (a unique id) is declared. The cursor value is kept with its type, so a
timestamp cursor is compared as a timestamp.
"""

from __future__ import annotations

import time
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from mlexec.connectors.sources.base import RecordShaper, SourceRecord
from mlexec.errors import MlexecError
from mlexec.topologies.schema import SqlConnector

__all__ = ["SqlSource"]

_BEHIND_EVERY = 5.0  # seconds between counts of unread rows


def _dump(value: Any) -> dict[str, Any] | None:
    """A cursor value as JSON with its type."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return {"type": "datetime", "value": value.isoformat()}
    if isinstance(value, date):
        return {"type": "date", "value": value.isoformat()}
    if isinstance(value, Decimal):
        return {"type": "decimal", "value": str(value)}
    if isinstance(value, bool | int | float | str):
        return {"type": type(value).__name__, "value": value}
    msg = (
        f"cannot keep a cursor value of type {type(value).__name__}; use an id or timestamp column"
    )
    raise MlexecError(msg)


def _load(saved: dict[str, Any] | None) -> Any:
    if saved is None:
        return None
    kind, value = saved["type"], saved["value"]
    if kind == "datetime":
        return datetime.fromisoformat(value)
    if kind == "date":
        return date.fromisoformat(value)
    if kind == "decimal":
        return Decimal(value)
    return value


class SqlSource:
    """Rows above the cursor, oldest first."""

    behind_unit = "rows"

    def __init__(
        self,
        config: SqlConnector,
        shaper: RecordShaper,
        state: dict[str, Any] | None,
        *,
        once: bool = False,
    ) -> None:
        self.config = config
        self._shaper = shaper
        url = sa.engine.make_url(config.url.get_secret_value())
        self.origin = f"{url.render_as_string(hide_password=True)} {config.table or 'query'}"
        try:
            self._engine = sa.create_engine(url, pool_pre_ping=True)
        except (SQLAlchemyError, ImportError) as exc:
            msg = f"cannot open {self.origin}: {exc}"
            raise MlexecError(msg) from exc
        if state is not None:
            self._cursor = _load(state.get("cursor"))
            self._tiebreak = _load(state.get("tiebreak"))
        else:
            self._cursor, self._tiebreak = config.start, None
        quote = self._engine.dialect.identifier_preparer.quote
        base = f"SELECT * FROM {config.table}" if config.table else config.query
        c = quote(config.cursor)
        self._from = f"FROM ({base}) AS mlexec_src"
        self._order = f"ORDER BY {c}" + (f", {quote(config.tiebreak)}" if config.tiebreak else "")
        self._after_cursor = f"WHERE {c} > :c"
        self._after_both = (
            f"WHERE ({c} > :c OR ({c} = :c AND {quote(config.tiebreak)} > :t))"
            if config.tiebreak
            else self._after_cursor
        )
        self._behind: int | None = None
        self._counted = 0.0

    def state(self) -> dict[str, Any]:
        return {"cursor": _dump(self._cursor), "tiebreak": _dump(self._tiebreak)}

    def behind(self) -> int | None:
        return self._behind

    def wait(self) -> float:
        return self.config.every.total_seconds()

    def close(self) -> None:
        self._engine.dispose()

    def _where(self) -> tuple[str, dict[str, Any]]:
        if self._cursor is None:
            return "", {}
        if self._tiebreak is not None and self.config.tiebreak:
            return self._after_both, {"c": self._cursor, "t": self._tiebreak}
        return self._after_cursor, {"c": self._cursor}

    def read(self, limit: int) -> list[SourceRecord]:
        where, params = self._where()
        sql = sa.text(f"SELECT * {self._from} {where} {self._order} LIMIT :n")
        try:
            with self._engine.connect() as conn:
                rows = [dict(r._mapping) for r in conn.execute(sql, {**params, "n": limit})]
                if len(rows) < limit:
                    self._behind = 0
                elif time.monotonic() - self._counted > _BEHIND_EVERY:
                    self._behind = self._count(conn, rows[-1])
        except SQLAlchemyError as exc:
            msg = f"{self.origin}: query failed: {exc}"
            raise MlexecError(msg) from exc
        out = []
        cfg = self.config
        for row in rows:
            if cfg.cursor not in row:
                msg = f"{self.origin}: the rows have no cursor column {cfg.cursor!r} (columns: {list(row)})"
                raise MlexecError(msg)
            self._cursor = row[cfg.cursor]
            self._tiebreak = row.get(cfg.tiebreak) if cfg.tiebreak else None
            ident = f"{_dump(self._cursor)['value']}"  # type: ignore[index]
            if cfg.tiebreak:
                ident += f"/{self._tiebreak}"
            where_ = f"{self.origin} {cfg.cursor}={ident}"
            try:
                key, value = self._shaper.shape(row)
            except ValueError as exc:
                raw = repr(row).encode()
                out.append(SourceRecord(ident, where_, None, raw, str(exc)))
                continue
            out.append(SourceRecord(ident, where_, key, value))
        return out

    def _count(self, conn: sa.Connection, last: dict[str, Any]) -> int:
        self._counted = time.monotonic()
        cfg = self.config
        c = self._engine.dialect.identifier_preparer.quote(cfg.cursor)
        sql = sa.text(f"SELECT count(*) {self._from} WHERE {c} > :c")
        return int(conn.execute(sql, {"c": last[cfg.cursor]}).scalar_one())
