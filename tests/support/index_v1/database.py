"""One thin layer over sqlite3 and psycopg 3 so the index runs the same SQL on both.

SQL is written with '?' placeholders; for PostgreSQL they become '%s'. SQLite runs in WAL mode
with synchronous=FULL (a committed index row survives a power cut, like the files it points
to) and one connection guarded by a lock, so receiver threads can share it. Inside
`Database.lazy_commits()` SQLite commits with synchronous=NORMAL instead (no fsync; a power cut
may lose them until the next durable commit or `make_durable()`): only for rows that a caller
can rebuild from durable data, as the receiver rebuilds instance rows from the store's files.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import psycopg.errors

T = TypeVar("T")

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")
BUSY_TIMEOUT_MS = 30_000
RETRIES = 5
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class DatabaseError(RuntimeError):
    """The database cannot be opened or reached; the message names the URL and the fix."""


def redact(url: str) -> str:
    """The URL with any password replaced by '***', for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class Cursor:
    """A cursor that takes '?' placeholders on both dialects; execute() returns itself."""

    def __init__(self, raw: Any, translate: bool) -> None:
        self._raw = raw
        self._translate = translate

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement with '?' placeholders."""
        self._raw.execute(_to_pyformat(sql) if self._translate else sql, tuple(params))
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        """The next row as a tuple, or None."""
        return self._raw.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        """The remaining rows as tuples."""
        return list(self._raw.fetchall())

    @property
    def rowcount(self) -> int:
        """Rows changed by the last INSERT/UPDATE/DELETE."""
        return self._raw.rowcount


_PYFORMAT_CACHE: dict[str, str] = {}


def _to_pyformat(sql: str) -> str:
    """'?' -> '%s' (and literal '%' -> '%%'); our SQL has no '?' inside string literals."""
    converted = _PYFORMAT_CACHE.get(sql)
    if converted is None:
        converted = sql.replace("%", "%%").replace("?", "%s")
        _PYFORMAT_CACHE[sql] = converted
    return converted


class Database:
    """A connection to the index database (SQLite file or PostgreSQL server), thread-safe."""

    dialect: str

    def __init__(self, url: str, dialect: str) -> None:
        """Use Database.connect(url)."""
        self.url = url
        self.dialect = dialect
        self._lock = threading.RLock()
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection | None = None
        self._closed = False
        self._sqlite_synchronous = "FULL"
        self._lazy = threading.local()

    @classmethod
    def connect(cls, url: str) -> Database:
        """Open `sqlite:///PATH` (SQLAlchemy style: four slashes for an absolute path) or
        `postgresql://user@host:port/db`; errors name the URL and what to change."""
        if not isinstance(url, str) or not url.strip():
            raise DatabaseError(
                f"database URL {url!r} is empty; set [storage] database_url to sqlite:///PATH "
                "or postgresql://user@host/db"
            )
        url = url.strip()
        if url.startswith(SQLITE_PREFIX):
            db = cls(url, "sqlite")
            db._open_sqlite()
            return db
        if url.startswith(POSTGRES_PREFIXES):
            db = cls(url, "postgresql")
            db._open_postgres()
            return db
        raise DatabaseError(
            f"database URL {redact(url)!r} has an unknown scheme; set [storage] database_url to "
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
                raise DatabaseError(f"database {self.url} is closed")
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
        with self._lock:
            if self.dialect == "sqlite":
                conn = self._sqlite
                if conn is None:
                    raise DatabaseError(f"database {self.url} is closed")
                lazy = write and getattr(self._lazy, "on", False)
                self._set_synchronous(conn, "NORMAL" if lazy else "FULL")
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                cur = conn.cursor()
                try:
                    yield Cursor(cur, translate=False)
                except BaseException:
                    conn.rollback()
                    raise
                else:
                    conn.commit()
                finally:
                    cur.close()
            else:
                conn = self._postgres()
                with conn.transaction(), conn.cursor() as cur:
                    yield Cursor(cur, translate=True)

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
        """Close the connection; later transactions raise DatabaseError."""
        with self._lock:
            if self._sqlite is not None:
                self._sqlite.close()
                self._sqlite = None
            if self._pg is not None:
                self._pg.close()
                self._pg = None
            self._closed = True

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
        try:
            self._pg = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise DatabaseError(
                f"cannot connect to PostgreSQL at {redact(self.url)}: {exc}".rstrip()
                + "; check that the server runs and [storage] database_url (user, host, port, "
                "database) is right"
            ) from exc

    def _postgres(self) -> psycopg.Connection:
        """The PostgreSQL connection, reopened once if the server dropped it (restart, failover)."""
        if self._closed:
            raise DatabaseError(f"database {redact(self.url)} is closed")
        if self._pg is None or self._pg.closed or self._pg.broken:
            if self._pg is not None:
                self._pg.close()
            self._open_postgres()
        assert self._pg is not None
        return self._pg
