"""A throw-away PostgreSQL 15 (Debian binaries) on a free loopback port, for the index tests.

`postgres_url` is a module-scoped pytest fixture: initdb into a temp folder, pg_ctl start with
its socket in that folder, createdb, yield the URL, stop and delete. As root the server runs as
the `postgres` user (PostgreSQL refuses to run as root). Tests get a fresh, empty schema each from
`fresh_database(url)`. Skips with the reason when the binaries or the user are missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_USER = "postgres"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as(user: pwd.struct_passwd | None, args: list[str]) -> subprocess.CompletedProcess:
    kwargs = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid}
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(
        args, check=False, capture_output=True, text=True, env=env, timeout=60, **kwargs
    )


def _server_user() -> pwd.struct_passwd | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.skip(f"running as root and there is no {SERVER_USER!r} user to run PostgreSQL as")


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """URL of an empty database on a private PostgreSQL 15 server (one per test module)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 binaries not found in {PG_BIN} (apt install postgresql-15)")
    user = _server_user()
    workdir = Path(tempfile.mkdtemp(prefix="lungnode-pg-"))
    data, log = workdir / "data", workdir / "server.log"
    if user is not None:
        os.chown(workdir, user.pw_uid, user.pw_gid)
    port = _free_port()
    started = False
    try:
        init = _run_as(
            user, [str(PG_BIN / "initdb"), "-D", str(data), "-U", "lungnode", "--auth=trust", "-E",
                   "UTF8", "--no-sync"]
        )  # fmt: skip
        if init.returncode != 0:
            pytest.skip(f"initdb failed, cannot run the PostgreSQL tests: {init.stderr.strip()}")
        options = (
            f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=40"
        )
        start = _run_as(
            user, [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
                   "-t", "60", "start"]
        )  # fmt: skip
        if start.returncode != 0:
            log_text = log.read_text() if log.exists() else ""
            pytest.skip(f"pg_ctl start failed: {start.stderr.strip()} {log_text[-500:]}")
        started = True
        created = _run_as(
            user, [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "lungnode",
                   "lungnode"]
        )  # fmt: skip
        if created.returncode != 0:
            pytest.fail(f"createdb failed: {created.stderr.strip()}")
        yield f"postgresql://lungnode@127.0.0.1:{port}/lungnode"
    finally:
        if started:
            _run_as(user, [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(workdir, ignore_errors=True)


def fresh_database(url: str) -> str:
    """A URL on the server of `url` whose tables live in a new empty schema (much cheaper than
    CREATE DATABASE, and just as isolated for the index)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{url}?options=-c%20search_path%3D{schema}"
