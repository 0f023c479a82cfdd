"""Make a file's data durable on a helper thread while the caller does other work.

A received instance must be on disk before the peer hears Success. Its data can be flushed as
soon as the last fragment has been written, while the C-STORE handler still reads the header
and checks the index; only linking the file into place has to wait for that. `DataSync`
starts an fdatasync of the file on a small shared pool of threads (they wait in the kernel
without holding the interpreter lock) and `wait()` returns when the data is durable, or
raises the OSError the kernel reported (ENOSPC, EIO), exactly as a plain fdatasync would.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

# Each sync holds a thread only while the kernel writes one file; more would queue on the disk.
SYNC_THREADS = 8
START_WAIT_SECONDS = 0.01  # bounded: with every pool thread busy, the caller does not wait

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="lungnode-data-sync")
        return _pool


def _forget_pool_in_child() -> None:
    """A forked child has none of the pool's threads: it makes its own on first use."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool_in_child)


def _sync_and_close(fd: int, started: threading.Event) -> None:
    started.set()
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


class DataSync:
    """An fdatasync of one file, running on the shared pool from construction on.

    The file is opened here (its own descriptor, closed when the sync ends), so the sync does
    not depend on whoever wrote the file keeping it open; every byte written to the file
    before construction is covered (bytes still in a writer's Python buffer are not)."""

    def __init__(self, path: Path) -> None:
        """Open `path` and start syncing it; raises OSError when it cannot be opened."""
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        started = threading.Event()
        try:
            self._future: Future[None] = _shared_pool().submit(_sync_and_close, fd, started)
        except BaseException:
            os.close(fd)
            raise
        # A pool thread needs the interpreter lock to enter fdatasync; a caller going on with
        # Python work would keep it from it for up to the switch interval (5 ms). Waiting here
        # hands the lock over once; fdatasync itself runs without it.
        started.wait(START_WAIT_SECONDS)

    def wait(self) -> None:
        """Return once the data is durable; raises the OSError of the fdatasync, if any."""
        self._future.result()
