"""Numbered schema migrations: `sql/migrations/NNNN_name.sql`, applied in order, once.

The database records its schema version in `schema_version` (one row; the table of version 1,
so a lungnode of any version reads it the same way). `migrate(db)` runs in one transaction
(on PostgreSQL under an advisory lock, so nodes starting together migrate once): it reads the
version, refuses a version newer than the newest file here with a message naming both, and
otherwise runs every newer file in order and records the new version. A failure anywhere rolls
the whole upgrade back, leaving the database at its old version.

A migration file is plain SQL in the rules of `storage.queries` (statements end with `;` at the
end of a line, `-- postgresql only` / `-- sqlite only` lines). Files are never edited once
released: a schema change is a new file with the next number, and
tests/integration/test_migrations.py upgrades a database written by an older lungnode with it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from storage.database import Cursor, Database, DatabaseError
from storage.queries import load, split_statements
from storage.redaction import redact_database_url

log = logging.getLogger("lungnode.storage")

_SCHEMA_LOCK_KEY = 0x6C756E67  # "lung": serialises migrations between PostgreSQL nodes
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered migration file, as statements for one dialect."""

    version: int
    name: str
    statements: tuple[str, ...]


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, SQL text) of every migration file, in order; numbered 1, 2, 3, ...
    without gaps or duplicates."""
    folder = resources.files("storage").joinpath("sql", "migrations")
    found: list[tuple[int, str, str]] = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise DatabaseError(f"migration file {entry.name} is not named NNNN_name.sql")
            continue
        found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    numbers = [version for version, _, _ in found]
    if numbers != list(range(1, len(found) + 1)):
        raise DatabaseError(f"migration files are not numbered 1..n without gaps: {numbers}")
    return found


@cache
def migrations(dialect: str) -> tuple[Migration, ...]:
    """Every migration for `dialect`, oldest first (read once per process)."""
    return tuple(
        Migration(version, name, split_statements(text, dialect, f"migration {version:04d}")[0])
        for version, name, text in migration_files()
    )


def latest_version() -> int:
    """The schema version this code writes: the number of the newest migration file."""
    return len(migration_files())


def schema_version(db: Database) -> int:
    """The version recorded in the database; 0 for an empty one."""
    q = load("schema", db.dialect)

    def work(cur: Cursor) -> int:
        cur.run(q.create_version_table)
        return int(cur.run(q.current_version).scalar() or 0)

    return db.run(work)


def migrate(db: Database, available: tuple[Migration, ...] | None = None) -> int:
    """Bring the database to the newest schema version (or the newest of `available`, for
    tests) in one transaction; returns the version it is at."""
    steps = migrations(db.dialect) if available is None else available
    target = steps[-1].version if steps else 0
    q = load("schema", db.dialect)

    def work(cur: Cursor) -> tuple[int, int]:
        cur.run(q.lock_schema, key=_SCHEMA_LOCK_KEY)
        cur.run(q.create_version_table)
        current = int(cur.run(q.current_version).scalar() or 0)
        if current > target:
            raise DatabaseError(
                f"index schema version {current} in {redact_database_url(db.url)} "
                "is newer than this "
                f"lungnode understands ({target}); upgrade lungnode or point [storage] "
                "database_url at another database"
            )
        for step in steps:
            if step.version > current:
                for statement in step.statements:
                    cur.execute(statement, {})  # {}: the driver un-escapes '%%' as in queries
        if current < target:
            cur.run(q.set_version, version=target)
        return current, target

    before, after = db.run(work)
    if before != after:
        log.info(
            "index schema upgraded from version %d to %d database=%s",
            before,
            after,
            redact_database_url(db.url),
        )
    return after
