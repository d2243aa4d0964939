"""The sample store: sampled reduced inputs and predictions in ClickHouse, with TTL.

One interface, two backends chosen by URL, running the same DDL and SQL:

- ``chdb:///path/to/dir`` — the ClickHouse engine embedded in this process (chDB), in
  a persistent directory. chDB is single-process and deadlocks on the GIL when driven
  from bytewax worker threads, so one ordinary thread owns the session and every call
  is handed to it through a queue.
- ``clickhouse://user:pass@host:port/db`` — a ClickHouse server via clickhouse-connect.

Tables are ``ReplacingMergeTree`` ordered by ``record_id`` and ``variant`` (a replay
de-duplicates at merge time, read with ``FINAL``; a shadow model's sample of a record
stands beside the production one) with a per-use-case TTL on event time.
"""

from __future__ import annotations

import io
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlparse

import polars as pl
import pyarrow as pa

from mlexec.connectors.storeservice import (
    Endpoint,
    StoreService,
    StoreServiceError,
    arrow_stream,
    describe_holder,
    find_service,
    read_arrow,
)
from mlexec.errors import StoreError
from mlexec.topologies.secrets import mask_url

__all__ = [
    "RESERVED_COLUMNS",
    "ChdbStore",
    "ClickHouseServerStore",
    "RemoteStore",
    "SampleStore",
    "SampleStoreError",
    "SamplesTable",
    "open_store",
]

T = TypeVar("T")

#: Session settings of both backends: monitoring's statements over many watched columns
#: (every column's quantile levels spelled out) exceed ClickHouse's default 256 KiB
#: query size and 50,000 syntax-tree elements.
SESSION_SETTINGS = {
    "max_query_size": 64 << 20,
    "max_ast_elements": 10_000_000,
    "max_expanded_ast_elements": 10_000_000,
}

#: Columns every samples table has; feature and output names may not reuse them.
RESERVED_COLUMNS: dict[str, str] = {
    "record_id": "String",
    "key": "String",
    "event_time": "DateTime64(3, 'UTC')",
    "model": "LowCardinality(String)",
    "model_version": "LowCardinality(String)",
    "variant": "LowCardinality(String)",
    "sample_reason": "LowCardinality(String)",
    "inference_ms": "Float32",
    "sampled_at": "DateTime64(3, 'UTC')",
    #: The site that made the sample — set by the store from the topic it came on (a
    #: fleet member's mirrored ``<member>.<uc>.samples``), never from the message.
    "site": "LowCardinality(String)",
}


class SampleStoreError(StoreError):
    """The sample store refused a statement or could not be reached."""


@dataclass(frozen=True)
class SamplesTable:
    """A use case's samples table: its feature and output columns and retention."""

    name: str
    #: (column, ClickHouse type) for reduced inputs, then model outputs.
    columns: tuple[tuple[str, str], ...]
    retention_seconds: int
    #: What the retention counts from: ``event`` time, or when the sample was ``stored``
    #: (``sampled_at``), so that replayed history is kept as long as live samples.
    retention_from: str = "event"

    def all_columns(self) -> list[tuple[str, str]]:
        """Fixed columns, then the use case's own."""
        return [*RESERVED_COLUMNS.items(), *self.columns]

    def ttl(self) -> str:
        """The TTL clause: rows leave ``retention_seconds`` after their event (or storage) time."""
        column = "sampled_at" if self.retention_from == "stored" else "event_time"
        return f"toDateTime({column}) + INTERVAL {int(self.retention_seconds)} SECOND"

    def ddl(self, database: str) -> str:
        """``CREATE TABLE IF NOT EXISTS`` for this table."""
        cols = ",\n  ".join(f"`{name}` {kind}" for name, kind in self.all_columns())
        return (
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{self.name}` (\n  {cols}\n)\n"
            "ENGINE = ReplacingMergeTree(sampled_at)\n"
            "PARTITION BY toYYYYMM(event_time)\n"
            # one row per record, variant and site: two members' equal ids are two rows
            "ORDER BY (record_id, variant, site)\n"
            f"TTL {self.ttl()}"
        )

    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema rows are inserted with."""
        return pa.schema([(name, _arrow_type(kind)) for name, kind in self.all_columns()])


def _arrow_type(kind: str) -> pa.DataType:
    if kind.startswith("DateTime64"):
        return pa.timestamp("ms", tz="UTC")
    if kind.startswith("Array("):
        return pa.list_(_arrow_type(kind[len("Array(") : -1]))
    return {
        "String": pa.string(),
        "LowCardinality(String)": pa.string(),
        "Float32": pa.float32(),
        "Float64": pa.float64(),
        "Int64": pa.int64(),
        "UInt8": pa.uint8(),
    }[kind]


class SampleStore(ABC):
    """What the store dataflow, ``mlexec query`` and the demo need from ClickHouse."""

    database: str

    def ensure_table(self, table: SamplesTable) -> None:
        """Create the database and table if missing and apply the current retention."""
        self.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        self.command(table.ddl(self.database))
        name = f"`{self.database}`.`{table.name}`"
        found = self.query(
            "SELECT t.sorting_key AS key, countIf(c.name = 'site') AS has_site "
            "FROM system.tables AS t LEFT JOIN system.columns AS c "
            "ON c.database = t.database AND c.table = t.name "
            f"WHERE t.database = '{self.database}' AND t.name = '{table.name}' "
            "GROUP BY t.sorting_key"
        )
        if found.height and not int(found["has_site"][0]):  # a table made before sites
            self.command(
                f"ALTER TABLE {name} ADD COLUMN `site` LowCardinality(String), "
                "MODIFY ORDER BY (record_id, variant, site)"
            )
        self.command(f"ALTER TABLE {name} MODIFY TTL {table.ttl()}")

    @abstractmethod
    def command(self, sql: str) -> None:
        """Run a statement that returns nothing."""

    @abstractmethod
    def query(self, sql: str) -> pl.DataFrame:
        """Run a query and return its result."""

    @abstractmethod
    def insert(self, table: SamplesTable | str, rows: pa.Table) -> None:
        """Insert ``rows`` (Arrow, in the table's schema) into a table (or one by name)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ------------------------------------------------------------------------- chDB


class ChdbStore(SampleStore):
    """The embedded ClickHouse engine in a persistent directory, owned by one thread."""

    def __init__(self, path: str | Path, database: str = "mlexec") -> None:
        self.path = Path(path)
        self.database = database
        self._calls: queue.Queue[tuple[Callable[[Any], Any], Future[Any]] | None] = queue.Queue()
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._own_session, args=(started,), name="mlexec-chdb", daemon=True
        )
        self._thread.start()
        started.result()

    def _own_session(self, started: Future[None]) -> None:
        try:
            from chdb import session as chdb_session

            self.path.mkdir(parents=True, exist_ok=True)
            sess = chdb_session.Session(str(self.path))
            # Unqualified table names in user SQL (mlexec query) mean the store's database.
            sess.query(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            sess.query(f"USE `{self.database}`")
            for name, value in SESSION_SETTINGS.items():
                sess.query(f"SET {name} = {value}")
        except Exception as exc:  # noqa: BLE001 - reported to the opener
            started.set_exception(
                SampleStoreError(f"cannot open the chDB store at {self.path}: {exc}")
            )
            return
        started.set_result(None)
        try:
            while (call := self._calls.get()) is not None:
                fn, result = call
                try:
                    result.set_result(fn(sess))
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    result.set_exception(exc)
        finally:
            sess.close()

    def _call(self, fn: Callable[[Any], T]) -> T:
        if not self._thread.is_alive():
            msg = f"the chDB store at {self.path} is closed"
            raise SampleStoreError(msg)
        result: Future[T] = Future()
        self._calls.put((fn, result))
        try:
            return result.result()
        except SampleStoreError:
            raise
        except Exception as exc:
            msg = f"chDB at {self.path}: {exc}"
            raise SampleStoreError(msg) from exc

    def command(self, sql: str) -> None:
        self._call(lambda sess: sess.query(sql))

    def query(self, sql: str) -> pl.DataFrame:
        def run(sess: Any) -> pl.DataFrame:
            raw = sess.query(sql, "ArrowStream").bytes()
            if not raw:
                return pl.DataFrame()
            return pl.from_arrow(pa.ipc.open_stream(io.BytesIO(raw)).read_all())  # type: ignore[return-value]

        return self._call(run)

    def insert(self, table: SamplesTable | str, rows: pa.Table) -> None:
        name = table if isinstance(table, str) else table.name
        cols = ", ".join(f"`{col}`" for col in rows.column_names)
        sql = f"INSERT INTO `{self.database}`.`{name}` ({cols}) SELECT {cols} FROM Python(data)"

        def run(sess: Any) -> None:
            data = rows  # noqa: F841 - chDB's Python() finds ``data`` among this frame's locals
            sess.query(sql)

        self._call(run)

    def close(self) -> None:
        if self._thread.is_alive():
            self._calls.put(None)
            self._thread.join(30.0)


# ----------------------------------------------------------------- ClickHouse server


class ClickHouseServerStore(SampleStore):
    """A ClickHouse server through clickhouse-connect (HTTP interface)."""

    def __init__(self, url: str) -> None:
        import clickhouse_connect

        parsed = urlparse(url)
        self.database = parsed.path.strip("/") or "mlexec"
        try:
            self._client = clickhouse_connect.get_client(
                host=parsed.hostname or "127.0.0.1",
                port=parsed.port or 8123,
                username=unquote(parsed.username or "default"),
                password=unquote(parsed.password or ""),
                secure=parsed.scheme == "clickhouses",
                settings=SESSION_SETTINGS,
            )
            # Unqualified table names in user SQL (mlexec query) mean the store's database.
            self._client.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            self._client.database = self.database
        except Exception as exc:
            msg = f"cannot reach the ClickHouse server at {parsed.hostname}:{parsed.port}: {exc}"
            raise SampleStoreError(msg) from exc

    def command(self, sql: str) -> None:
        try:
            self._client.command(sql)
        except Exception as exc:
            msg = f"ClickHouse refused: {exc}"
            raise SampleStoreError(msg) from exc

    def query(self, sql: str) -> pl.DataFrame:
        try:
            return pl.from_arrow(self._client.query_arrow(sql))  # type: ignore[return-value]
        except Exception as exc:
            msg = f"ClickHouse refused the query: {exc}"
            raise SampleStoreError(msg) from exc

    def insert(self, table: SamplesTable | str, rows: pa.Table) -> None:
        name = table if isinstance(table, str) else table.name
        try:
            self._client.insert_arrow(name, rows, database=self.database)
        except Exception as exc:
            msg = f"inserting {rows.num_rows} rows into {name} failed: {exc}"
            raise SampleStoreError(msg) from exc

    def close(self) -> None:
        self._client.close()


class _SharedChdb(SampleStore):
    """One opener's handle on the process's chDB store of a directory.

    chDB allows one engine per process and directory, so the store sink, the monitor
    and the dashboard of one process share one :class:`ChdbStore` (one owner thread);
    the last handle closed closes it.
    """

    _open: dict[Path, tuple[ChdbStore, Any, int]] = {}
    _lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        with self._lock:
            store, service, handles = self._open.get(path) or (*_own(path), 0)
            self._open[path] = (store, service, handles + 1)
        self._store: ChdbStore | None = store
        self._path = path
        self.database = store.database

    def _inner(self) -> ChdbStore:
        if self._store is None:
            msg = f"this handle on the chDB store at {self._path} is closed"
            raise SampleStoreError(msg)
        return self._store

    def command(self, sql: str) -> None:
        self._inner().command(sql)

    def query(self, sql: str) -> pl.DataFrame:
        return self._inner().query(sql)

    def insert(self, table: SamplesTable | str, rows: pa.Table) -> None:
        self._inner().insert(table, rows)

    def close(self) -> None:
        with self._lock:
            if self._store is None:
                return
            store, service, handles = self._open[self._path]
            if handles == 1:
                del self._open[self._path]
                service.close()
                store.close()
            else:
                self._open[self._path] = (store, service, handles - 1)
            self._store = None


class RemoteStore(SampleStore):
    """A handle on a chDB store through the process that holds its directory."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.database = endpoint.database

    def _post(self, path: str, body: bytes, kind: str = "text/plain") -> bytes:
        try:
            return self.endpoint.post(path, body, kind)
        except StoreServiceError as exc:
            raise SampleStoreError(str(exc)) from exc

    def command(self, sql: str) -> None:
        self._post("/command", sql.encode())

    def query(self, sql: str) -> pl.DataFrame:
        return pl.from_arrow(read_arrow(self._post("/query", sql.encode())))  # type: ignore[return-value]

    def insert(self, table: SamplesTable | str, rows: pa.Table) -> None:
        name = table if isinstance(table, str) else table.name
        kind = "application/vnd.apache.arrow.stream"
        self._post(f"/insert?table={quote(name)}", arrow_stream(rows), kind)


def _own(path: Path) -> tuple[ChdbStore, Any]:
    """Open the chDB directory in this process and answer other processes for it."""
    try:
        store = ChdbStore(path)
    except SampleStoreError as exc:
        held = describe_holder(path)
        if held is None:
            raise
        msg = f"the chDB store at {path} is held by {held}; stop it first (commands that only read go through it)"
        raise SampleStoreError(msg) from exc
    return store, StoreService(store, path).start()


def open_store(url: str, *, owner: bool = False) -> SampleStore:
    """The backend for a sample-store URL.

    A ``chdb://`` directory is this process's shared store of it when this process
    holds it; otherwise, unless ``owner`` (the store dataflow, which must hold its
    directory), the process that holds it answers for it; otherwise it is opened here.
    """
    if url.startswith("chdb://"):
        path = url[len("chdb://") :]
        if not path:
            msg = (
                f"a chDB store URL needs a directory: chdb:///path/to/dir, found {mask_url(url)!r}"
            )
            raise SampleStoreError(msg)
        directory = Path(path).resolve()
        if not owner and directory not in _SharedChdb._open:
            endpoint = find_service(directory)
            if endpoint is not None:
                return RemoteStore(endpoint)
        return _SharedChdb(directory)
    if url.startswith(("clickhouse://", "clickhouses://")):
        return ClickHouseServerStore(url)
    msg = f"a sample-store URL chdb:///dir or clickhouse://user:pass@host:port/db, found {mask_url(url)!r}"
    raise SampleStoreError(msg)
