"""The SQL file loader: named blocks, one paramstyle per driver at load, dialect-only lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from storage.queries import QueryError, load, parse

STORAGE = Path(__file__).parents[2] / "storage"

TEXT = """
-- A file comment before the first block.

-- name: claim
-- A comment inside the block is dropped.
SELECT a FROM t WHERE b = :b AND c::text LIKE '50%' AND d < :b
FOR UPDATE SKIP LOCKED  -- postgresql only

-- name: two_statements
DELETE FROM t WHERE a = :a;
DELETE FROM u WHERE a = :a;

-- name: pg_only
SELECT pg_advisory_xact_lock(:key)  -- postgresql only
"""


def test_named_parameters_become_the_drivers_paramstyle_once() -> None:
    sqlite, pg = parse(TEXT, "sqlite", "t.sql"), parse(TEXT, "postgresql", "t.sql")
    assert sqlite.claim.statements == (
        "SELECT a FROM t WHERE b = :b AND c::text LIKE '50%' AND d < :b",
    )
    assert pg.claim.statements == (
        "SELECT a FROM t WHERE b = %(b)s AND c::text LIKE '50%%' AND d < %(b)s\n"
        "FOR UPDATE SKIP LOCKED",
    )
    assert sqlite.claim.params == pg.claim.params == {"b"}
    assert len(pg.two_statements.statements) == 2
    assert sqlite.pg_only.statements == () and len(pg.pg_only.statements) == 1


def test_malformed_files_and_unknown_names_are_named() -> None:
    with pytest.raises(QueryError, match="defined twice"):
        parse("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n", "sqlite", "x.sql")
    with pytest.raises(QueryError, match="before the first"):
        parse("SELECT 1\n", "sqlite", "x.sql")
    with pytest.raises(QueryError, match="must end a line"):
        parse("-- name: a\nSELECT 1; SELECT 2\n", "sqlite", "x.sql")
    with pytest.raises(QueryError, match="no query named 'nope' in x.sql"):
        _ = parse(TEXT, "sqlite", "x.sql").nope


def test_every_query_is_used_and_every_use_exists() -> None:
    """A query left in a file after its code went, or a typo in a name, fails here."""
    code = "\n".join(p.read_text() for p in STORAGE.glob("*.py"))
    used = re.findall(r"\b_?q\.([a-z_]+)|load\(\"\w+\", \w+\)\.([a-z_]+)", code)
    used_names = {name for group in used for name in group if name}
    assert {"claim", "add", "lock_schema"} <= used_names
    defined: set[str] = set()
    for path in (STORAGE / "sql" / "queries").glob("*.sql"):
        names = load(path.stem, "sqlite").names()
        defined |= names
        for name in names:
            assert re.search(rf"\.{name}\b", code), f"{path.name} {name} is never run"
    missing = used_names - defined
    assert not missing, f"code runs queries no file defines: {missing}"
