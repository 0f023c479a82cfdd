"""SQL files of the storage package, loaded once and adapted once to the driver's paramstyle.

A query file holds named blocks, aiosql style:

    -- name: claim_next_job
    -- Free text after the name line is a comment and is dropped.
    SELECT ... WHERE j.lease_until < :now
    FOR UPDATE OF j SKIP LOCKED  -- postgresql only

Parameters are written `:name` once. SQLite's driver takes that style as it is; for psycopg
every `:name` becomes `%(name)s` (and a literal `%` becomes `%%`) when the file is loaded, never
per call. A line ending in `-- postgresql only` (or `-- sqlite only`) is kept for that dialect
and dropped for the other; a statement left empty is not run. A block may hold several
statements, each ending in `;` at the end of a line; they run in order in one transaction.

Migrations (`sql/migrations/NNNN_name.sql`) use the same statement rules without names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

DIALECTS = ("sqlite", "postgresql")
_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$")
_ONLY = re.compile(r"\s*--\s*(sqlite|postgresql) only\s*$")
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_END_OF_STATEMENT = re.compile(r";\s*$", re.MULTILINE)


class QueryError(LookupError):
    """A query file is malformed, or a query is missing or called without its parameters."""


@dataclass(frozen=True)
class Query:
    """One named block: its statements in the driver's paramstyle and the parameters they use."""

    name: str
    statements: tuple[str, ...]
    params: frozenset[str]


class Queries:
    """The named queries of one file for one dialect; `queries.claim_next_job` is a Query."""

    def __init__(self, source: str, queries: dict[str, Query]) -> None:
        self._source = source
        self._queries = queries

    def __getattr__(self, name: str) -> Query:
        try:
            return self._queries[name]
        except KeyError:
            raise QueryError(f"no query named {name!r} in {self._source}") from None

    def names(self) -> frozenset[str]:
        """Every query name in the file."""
        return frozenset(self._queries)


def _dialect_lines(text: str, dialect: str) -> str:
    """The text with comment lines removed and `-- <other dialect> only` lines dropped."""
    kept: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("--"):
            continue
        only = _ONLY.search(line)
        if only is not None:
            if only.group(1) != dialect:
                continue
            line = line[: only.start()]
        kept.append(line.rstrip())
    return "\n".join(kept)


def split_statements(text: str, dialect: str, where: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """(statements for `dialect` in its paramstyle, parameter names) of one block of SQL."""
    if dialect not in DIALECTS:
        raise QueryError(f"unknown SQL dialect {dialect!r} for {where}; expected one of {DIALECTS}")
    body = _dialect_lines(text, dialect)
    params = frozenset(_PARAM.findall(body))
    statements: list[str] = []
    for chunk in _END_OF_STATEMENT.split(body):
        statement = chunk.strip()
        if not statement:
            continue
        if ";" in statement:
            raise QueryError(f"{where}: a ';' must end a line (one statement per ';'): {statement}")
        if dialect == "postgresql":
            statement = _PARAM.sub(r"%(\1)s", statement.replace("%", "%%"))
        statements.append(statement)
    return tuple(statements), params


def parse(text: str, dialect: str, source: str) -> Queries:
    """The named blocks of one query file's text."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        named = _NAME.match(line.strip())
        if named is not None:
            name = named.group(1)
            if name in blocks:
                raise QueryError(f"{source}:{number}: query {name!r} is defined twice")
            current = blocks[name] = []
        elif current is not None:
            current.append(line)
        elif line.strip() and not line.lstrip().startswith("--"):
            raise QueryError(f"{source}:{number}: SQL before the first '-- name:' line")
    queries: dict[str, Query] = {}
    for name, lines in blocks.items():
        statements, params = split_statements("\n".join(lines), dialect, f"{source} {name}")
        queries[name] = Query(name, statements, params)
    return Queries(source, queries)


def sql_text(*parts: str) -> str:
    """The text of a file under the package's `sql/` folder (works from a wheel too)."""
    node = resources.files("storage").joinpath("sql", *parts)
    return node.read_text(encoding="utf-8")


@cache
def load(file: str, dialect: str) -> Queries:
    """The named queries of `sql/queries/<file>.sql` for `dialect`, parsed once per process."""
    return parse(sql_text("queries", f"{file}.sql"), dialect, f"storage/sql/queries/{file}.sql")
