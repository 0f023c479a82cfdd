"""Writers to one SQLite index take turns at its write gate (storage.write_gate): a write
transaction starts only once the gate is free, reads never wait for it, and a writer goes on
without it when its holder never lets go (SQLite's own lock then decides)."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
from pathlib import Path

from storage.database import Database
from storage.write_gate import GATE_SUFFIX, WriteGate


def _database(tmp_path: Path) -> tuple[Database, Path]:
    path = tmp_path / "index.sqlite"
    db = Database.connect(f"sqlite:///{path}")
    with db.transaction() as cur:
        cur.execute("CREATE TABLE t (x INTEGER)")
    return db, path.with_name(path.name + GATE_SUFFIX)


def test_a_write_waits_for_the_gate_and_a_read_does_not(tmp_path: Path) -> None:
    db, gate_path = _database(tmp_path)
    assert stat.S_IMODE(gate_path.stat().st_mode) == 0o600  # private, like the index
    holder = os.open(gate_path, os.O_RDWR)  # another process's writer, holding the gate
    fcntl.flock(holder, fcntl.LOCK_EX)
    began = threading.Event()

    def write() -> None:
        with db.transaction() as cur:
            began.set()
            cur.execute("INSERT INTO t VALUES (1)")

    writer = threading.Thread(target=write)
    reader = Database.connect(db.url)  # another connection (process) reading meanwhile
    try:
        writer.start()
        writer.join(0.5)
        with reader.transaction(write=False) as cur:  # reads never wait for the gate
            assert cur.execute("SELECT count(*) FROM t").scalar() == 0
        assert not began.is_set(), "a write transaction began while another held the gate"
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
    writer.join(30)
    assert began.is_set()
    with reader.transaction(write=False) as cur:
        assert cur.execute("SELECT count(*) FROM t").scalar() == 1
    reader.close()
    db.close()


def test_a_gate_never_let_go_is_passed_after_the_wait(tmp_path: Path) -> None:
    gate = WriteGate(tmp_path / "index.sqlite")
    holder = os.open(gate.path, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with gate.held(wait_seconds=0.05) as held:
            assert held is False  # SQLite's busy timeout answers from here, as without a gate
    finally:
        os.close(holder)
    with gate.held() as held:
        assert held is True
    gate.close()
