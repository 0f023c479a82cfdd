"""Connections and transactions: one SQLite file in WAL mode, or a pool of PostgreSQL connections.

The index's SQL lives in `sql/` as named queries (see `storage.queries`), already in the
driver's paramstyle; `Cursor.run(query, **params)` runs one. `Cursor.execute(sql, params)` runs
ad-hoc SQL as the driver takes it (sqlite3: `?` or `:name`; psycopg: `%s` or `%(name)s`).

SQLite runs in WAL mode with synchronous=FULL (a committed index row survives a power cut, like
the files it points to) and one connection guarded by a lock, so receiver threads can share it
(SQLite has one writer at a time anyway). PostgreSQL uses a `psycopg_pool.ConnectionPool` of up
to `pool_size` connections, so association threads, the worker, its lease renewer and the sender
do not queue behind one connection; each connection is checked when taken from the pool, so one
the server dropped (restart, failover) is replaced instead of failing a transaction. Inside
`Database.lazy_commits()` SQLite commits with synchronous=NORMAL instead (no fsync; a power cut
may lose them until the next durable commit or `make_durable()`): only for rows that a caller
can rebuild from durable data, as the receiver rebuilds instance rows from the store's files.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import psycopg_pool

from storage.private_files import prepare_sqlite_file
from storage.queries import Query, QueryError
from storage.redaction import redact_database_url

T = TypeVar("T")

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")
BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_SECONDS = 10
DEFAULT_POOL_SIZE = 4
RETRIES = 5
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class DatabaseError(RuntimeError):
    """The database cannot be opened or reached; the message names the URL and the fix."""


class DatabaseFull(DatabaseError):
    """The database could not write: its disk (or PostgreSQL's) is full. Nothing was written."""


class Cursor:
    """A cursor of one transaction; `run` and `execute` return it, for `.fetchone()` etc."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def run(self, query: Query, /, **params: Any) -> Cursor:
        """Run a named query's statements in order with `params` (extra names are ignored);
        fetch from the last one. A query with no statement for this dialect does nothing."""
        missing = query.params - params.keys()
        if missing:
            raise QueryError(f"query {query.name} needs parameters {sorted(missing)}")
        for statement in query.statements:
            self._raw.execute(statement, params)
        return self

    def run_many(self, query: Query, rows: Iterable[Mapping[str, Any]]) -> None:
        """Run a one-statement named query once per parameter mapping."""
        (statement,) = query.statements
        self._raw.executemany(statement, list(rows))

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> Cursor:
        """Run one ad-hoc statement in the driver's own paramstyle."""
        if params is None:
            self._raw.execute(sql)
        else:
            self._raw.execute(sql, params)
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        """The next row as a tuple, or None."""
        return self._raw.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        """The remaining rows as tuples."""
        return list(self._raw.fetchall())

    def scalar(self) -> Any:
        """The first column of the next row (None when there is no row)."""
        row = self._raw.fetchone()
        return None if row is None else row[0]

    @property
    def rowcount(self) -> int:
        """Rows changed by the last INSERT/UPDATE/DELETE."""
        return self._raw.rowcount


class Database:
    """The index database (SQLite file or PostgreSQL server), thread-safe."""

    dialect: str

    def __init__(self, url: str, dialect: str, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        """Use Database.connect(url)."""
        self.url = url
        self.dialect = dialect
        self.pool_size = pool_size
        self._lock = threading.RLock()
        self._sqlite: sqlite3.Connection | None = None
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._closed = False
        self._sqlite_synchronous = "FULL"
        self._lazy = threading.local()
        # held around every transaction; an analysis process sets a lock its node takes before
        # it pauses the process, so it is never paused inside one (scp_node.pipeline.analysis_pool)
        self.transaction_guard: AbstractContextManager[Any] = nullcontext()

    @classmethod
    def connect(cls, url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> Database:
        """Open `sqlite:///PATH` (SQLAlchemy style: four slashes for an absolute path) or
        `postgresql://user@host:port/db` with a pool of up to `pool_size` connections (ignored
        for SQLite); errors name the URL and what to change."""
        if not isinstance(url, str) or not url.strip():
            raise DatabaseError(
                f"database URL {url!r} is empty; set [storage] database_url to sqlite:///PATH "
                "or postgresql://user@host/db"
            )
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise DatabaseError(
                f"database pool size {pool_size!r} is not a positive number of connections; "
                "set [storage] database_pool_size to 1 or more"
            )
        url = url.strip()
        if url.startswith(SQLITE_PREFIX):
            db = cls(url, "sqlite", pool_size)
            db._open_sqlite()
            return db
        if url.startswith(POSTGRES_PREFIXES):
            db = cls(url, "postgresql", pool_size)
            db._open_postgres()
            return db
        raise DatabaseError(
            f"database URL {redact_database_url(url)!r} has an unknown scheme; "
            "set [storage] database_url to "
            "sqlite:///PATH or postgresql://user@host/db"
        )

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None (PostgreSQL, or an in-memory database)."""
        location = self.url[len(SQLITE_PREFIX) :] if self.dialect == "sqlite" else ""
        return Path(location) if location and location != ":memory:" else None

    @property
    def commits_can_be_lazy(self) -> bool:
        """True when `lazy_commits()` really defers durability (a SQLite file); PostgreSQL
        commits are always durable, so callers need no recovery for them."""
        return self.sqlite_path is not None

    @contextmanager
    def lazy_commits(self) -> Iterator[None]:
        """Within this block, this thread's SQLite commits skip the fsync (synchronous=NORMAL in
        WAL mode: atomic and consistent, durable at the next durable commit or checkpoint).

        Only for rows the caller can rebuild after a power cut; every other commit stays FULL.
        """
        previous = getattr(self._lazy, "on", False)
        self._lazy.on = True
        try:
            yield
        finally:
            self._lazy.on = previous

    def make_durable(self) -> None:
        """Make every commit so far durable (SQLite: a full WAL checkpoint, which syncs the WAL
        and waits for readers); a no-op on PostgreSQL, whose commits are durable already."""
        with self._lock:
            if self.dialect != "sqlite":
                return
            conn = self._sqlite
            if conn is None:
                raise DatabaseError(f"database {redact_database_url(self.url)} is closed")
            self._set_synchronous(conn, "FULL")
            conn.execute("PRAGMA wal_checkpoint(FULL)").fetchall()

    def _set_synchronous(self, conn: sqlite3.Connection, mode: str) -> None:
        """PRAGMA synchronous for the next transactions (only outside a transaction)."""
        if mode != self._sqlite_synchronous:
            conn.execute(f"PRAGMA synchronous = {mode}")
            self._sqlite_synchronous = mode

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Cursor]:
        """One transaction, committed on success and rolled back on any exception. On SQLite a
        writing transaction is BEGIN IMMEDIATE, so it never fails to upgrade its lock later."""
        with self.transaction_guard, self._transaction(write) as cur:
            yield cur

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Cursor]:
        if self.dialect == "sqlite":
            with self._lock:
                conn = self._sqlite
                if conn is None:
                    raise DatabaseError(f"database {redact_database_url(self.url)} is closed")
                lazy = write and getattr(self._lazy, "on", False)
                self._set_synchronous(conn, "NORMAL" if lazy else "FULL")
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                cur = conn.cursor()
                try:
                    yield Cursor(cur)
                    conn.commit()
                except BaseException as exc:
                    if conn.in_transaction:
                        conn.rollback()
                    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                        raise DatabaseFull(
                            f"database {redact_database_url(self.url)}: the disk is full"
                        ) from exc
                    raise
                finally:
                    cur.close()
        else:
            pool = self._pool
            if pool is None or self._closed:
                raise DatabaseError(f"database {redact_database_url(self.url)} is closed")
            try:
                with pool.connection() as pg, pg.transaction(), pg.cursor() as pg_cursor:
                    yield Cursor(pg_cursor)
            except psycopg.errors.DiskFull as exc:
                raise DatabaseFull(
                    f"database {redact_database_url(self.url)}: PostgreSQL's disk is full"
                ) from exc

    def run(self, work: Callable[[Cursor], T], write: bool = True) -> T:
        """Run `work` in one transaction, running it again when PostgreSQL aborted it for a
        deadlock or serialization failure between concurrent nodes (nothing was written)."""
        for attempt in range(RETRIES):
            try:
                with self.transaction(write) as cur:
                    return work(cur)
            except _RETRYABLE:
                if attempt == RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection (or the pool); later transactions raise DatabaseError."""
        with self._lock:
            self._closed = True
            if self._sqlite is not None:
                self._sqlite.close()
                self._sqlite = None
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def _open_sqlite(self) -> None:
        location = self.url[len(SQLITE_PREFIX) :]
        if not location:
            raise DatabaseError(
                f"database URL {self.url!r} names no file; set [storage] database_url to "
                "sqlite:////absolute/path.sqlite"
            )
        if location != ":memory:":
            path = Path(location)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                prepare_sqlite_file(self.url)  # 0600 before SQLite creates it
            except OSError as exc:
                raise DatabaseError(
                    f"cannot create the folder of database {self.url}: {exc}; fix [storage] "
                    "database_url or the folder's permissions"
                ) from exc
        try:
            conn = sqlite3.connect(
                location,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise DatabaseError(
                f"cannot open SQLite database {self.url}: {exc}; check that the file is a SQLite "
                "database and writable, or fix [storage] database_url"
            ) from exc
        if location != ":memory:" and str(mode).lower() != "wal":
            conn.close()
            raise DatabaseError(
                f"SQLite database {self.url} refused WAL mode (got {mode!r}); put it on a local "
                "file system or use PostgreSQL"
            )
        self._sqlite = conn

    def _open_postgres(self) -> None:
        # One plain connection first: its error says why (refused, auth, no database), where
        # the pool would only time out.
        try:
            psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_SECONDS).close()
        except psycopg.Error as exc:
            raise DatabaseError(
                f"cannot connect to PostgreSQL at {redact_database_url(self.url)}: {exc}".rstrip()
                + "; check that the server runs and [storage] database_url (user, host, port, "
                "database) is right"
            ) from exc
        pool = psycopg_pool.ConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS},
            check=psycopg_pool.ConnectionPool.check_connection,
            name="lungnode-index",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
        except psycopg_pool.PoolTimeout as exc:
            pool.close()
            raise DatabaseError(
                "cannot open a pool of connections to PostgreSQL at "
                f"{redact_database_url(self.url)}: {exc}; "
                "check that the server accepts connections"
            ) from exc
        self._pool = pool
