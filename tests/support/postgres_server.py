"""A throw-away PostgreSQL (Debian binaries) on a free loopback port, for the index tests.

`postgres_url` is a module-scoped pytest fixture: initdb into a private folder, pg_ctl start
with its socket in that folder, createdb, yield the URL, stop and delete. `postgres_server`
gives a test its own `PostgresServer`, which it may `stop()` and `start()` again. As root the
server runs as the `postgres` user (PostgreSQL refuses to run as root), so its folder must be one
that user can enter wherever the checkout and $TMPDIR are (a clone inside a 0700 `mktemp -d`
folder, a private TMPDIR): the first of $TMPDIR, /tmp, /var/tmp, /dev/shm where the server user can
really enter and write is used, and its commands run with that folder as their working
directory. Tests get a fresh, empty schema each from `fresh_database(url)`.

The tests skip only when PostgreSQL is not installed (no initdb); when it is installed and the
server cannot be started, they fail with the reason.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from ports import free_port

PG_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
FOLDER_CANDIDATES = (tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm")


def _pg_bin() -> Path | None:
    """The bin folder of the newest PostgreSQL installed the Debian way, or None."""
    found = [
        path.parent
        for path in PG_ROOT.glob("*/bin/initdb")
        if re.fullmatch(r"\d+", path.parent.parent.name)
    ]
    return max(found, key=lambda b: int(b.parent.name), default=None)


def _run_as(
    user: pwd.struct_passwd | None, args: list[str], cwd: Path | str
) -> subprocess.CompletedProcess:
    kwargs = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid}
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(
        args, check=False, capture_output=True, text=True, env=env, timeout=60, cwd=cwd, **kwargs
    )


def _server_user() -> pwd.struct_passwd | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.fail(
            f"PostgreSQL is installed but there is no {SERVER_USER!r} user to run it as (the "
            "tests run as root, and PostgreSQL refuses to run as root); reinstall postgresql"
        )


def _server_folder(user: pwd.struct_passwd | None) -> Path:
    """A new empty folder owned by the server user, which that user can enter and write."""
    tried: list[str] = []
    for base in dict.fromkeys(FOLDER_CANDIDATES):
        try:
            folder = Path(tempfile.mkdtemp(prefix="lungnode-pg-", dir=base))
        except OSError as exc:
            tried.append(f"{base}: {exc}")
            continue
        if user is not None:
            os.chown(folder, user.pw_uid, user.pw_gid)
        probe = _run_as(user, ["sh", "-c", 'cd "$0" && touch probe && rm probe', str(folder)], "/")
        if probe.returncode == 0:
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        tried.append(f"{base}: {probe.stderr.strip() or 'cannot enter or write'}")
    pytest.fail(
        "no folder for the test PostgreSQL that "
        f"{user.pw_name if user else 'this user'} can enter and write: " + "; ".join(tried)
    )


class PostgresServer:
    """One throw-away server: `start()` (initdb on the first call), `stop()` (immediate, as a
    crash or an administrator's stop looks to clients) and `start()` again on the same port
    and data, `close()` stops and deletes it. `url` names its database `lungnode`."""

    def __init__(self) -> None:
        pg_bin = _pg_bin()
        if pg_bin is None:
            pytest.skip(
                f"PostgreSQL is not installed (no {PG_ROOT}/*/bin/initdb; apt install postgresql)"
            )
        self.pg_bin: Path = pg_bin
        self.user = _server_user()
        self.workdir = _server_folder(self.user)
        self.data, self.log = self.workdir / "data", self.workdir / "server.log"
        self.port = free_port()
        self.url = f"postgresql://lungnode@127.0.0.1:{self.port}/lungnode"
        self.running = False
        self._initialised = False

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return _run_as(self.user, [str(self.pg_bin / args[0]), *args[1:]], self.workdir)

    def start(self) -> PostgresServer:
        if not self._initialised:
            init = self._run("initdb", "-D", str(self.data), "-U", "lungnode", "--auth=trust",
                             "-E", "UTF8", "--no-sync")  # fmt: skip
            if init.returncode != 0:
                pytest.fail(f"initdb in {self.data} failed: {init.stderr.strip()}")
        options = (
            f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        start = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                          "-w", "-t", "60", "start")  # fmt: skip
        if start.returncode != 0:
            log_text = self.log.read_text() if self.log.exists() else ""
            pytest.fail(f"pg_ctl start failed: {start.stderr.strip()} {log_text[-500:]}")
        self.running = True
        if not self._initialised:
            created = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                                "lungnode", "lungnode")  # fmt: skip
            if created.returncode != 0:
                pytest.fail(f"createdb failed: {created.stderr.strip()}")
            self._initialised = True
        return self

    def stop(self) -> None:
        """Stop (fast shutdown: clients' connections are closed at once, committed data is
        kept for `start()`)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.running = False

    def close(self) -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
            self.running = False
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """URL of an empty database on a private PostgreSQL server (one per test module)."""
    server = PostgresServer()
    try:
        yield server.start().url
    finally:
        server.close()


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A started private PostgreSQL server of this test alone, which the test may stop and
    start again (e.g. to see the node's readiness when its database goes away)."""
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.close()


def fresh_database(url: str) -> str:
    """A URL on the server of `url` whose tables live in a new empty schema (much cheaper than
    CREATE DATABASE, and just as isolated for the index)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{url}?options=-c%20search_path%3D{schema}"
