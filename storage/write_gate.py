"""Writers to one SQLite index take turns at a file lock, so a waiting writer starts as soon as
the one before commits.

SQLite has one writer at a time; a connection that finds the write lock taken sleeps in its busy
handler, 1, 2, 5, 10 ms and longer, and looks again. With several receiver processes writing
the index at once (several associations), each such sleep holds up that process's association
for milliseconds after the lock was free again. Every node process writing the same SQLite file
first takes an exclusive flock on `<database>.write-gate`, held for the write transaction: a
waiter polls it every GATE_POLL_SECONDS instead. SQLite's own locking still decides: a writer
that never takes the gate (the sqlite3 shell, an older node) is waited for as before, and after
GATE_WAIT_SECONDS a writer goes on without the gate, so a stuck holder makes SQLite's busy
timeout answer, as it did without the gate.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.private_files import private_opener

GATE_SUFFIX = ".write-gate"
GATE_POLL_SECONDS = 0.0002
GATE_WAIT_SECONDS = 30.0


class WriteGate:
    """The write gate of one SQLite database file, for one connection."""

    def __init__(self, database: Path) -> None:
        """Open (creating it 0600) the gate file beside `database`; raises OSError when the
        folder does not allow it (the caller then writes without a gate)."""
        self.path = database.with_name(database.name + GATE_SUFFIX)
        self._fd: int | None = private_opener(str(self.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)

    @contextmanager
    def held(self, wait_seconds: float = GATE_WAIT_SECONDS) -> Iterator[bool]:
        """Hold the gate for the block (True), or after `wait_seconds` without it go on
        without (False)."""
        fd = self._fd
        if fd is None:
            yield False
            return
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(GATE_POLL_SECONDS)
                continue
            break
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
