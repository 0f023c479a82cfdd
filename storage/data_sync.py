"""Make a file's data durable while the caller does other work, on the thread that is free.

A received instance must be on disk before the peer hears Success. Its data can be flushed as
soon as the last fragment has been written, while the C-STORE handler still checks the quota
and the index; only linking the file into place has to wait for that. `DataSync(path)` opens
the file; `run()` makes its data durable (fdatasync, without the interpreter lock) on whichever
thread calls it first: the association's DUL thread right after it queued the request for the
handler (it has nothing to read until the response is sent), or `wait()`, the handler's, when
nobody ran it yet. `wait()` returns when the data is durable, or raises the OSError the kernel
reported (ENOSPC, EIO), exactly as a plain fdatasync would.

Running it on the DUL thread rather than on a pool thread saves a wake-up of another thread per
instance, and the interpreter lock handed over to it and back, on the one association's path.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path


def _close_unsynced(fd: int, claimed: threading.Lock) -> None:
    """The DataSync was dropped before anyone ran it: its descriptor is closed."""
    if claimed.acquire(blocking=False):
        os.close(fd)


class DataSync:
    """An fdatasync of one file, run once by `run()` or `wait()`, whichever comes first.

    The file is opened here (its own descriptor, closed when the sync ends), so the sync does
    not depend on whoever wrote the file keeping it open; every byte written to the file before
    construction is covered (bytes still in a writer's Python buffer are not)."""

    def __init__(self, path: Path) -> None:
        """Open `path` for its sync; raises OSError when it cannot be opened."""
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._claimed = threading.Lock()  # held by the one caller that runs the sync
        self._done = threading.Event()
        self._error: OSError | None = None
        weakref.finalize(self, _close_unsynced, self._fd, self._claimed)

    def run(self) -> None:
        """Make the data durable now, unless another thread runs or ran it; never raises (the
        error is `wait()`'s)."""
        if not self._claimed.acquire(blocking=False):
            return
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            self._error = exc
        finally:
            os.close(self._fd)
            self._done.set()

    @property
    def finished(self) -> bool:
        """True once the sync ran (durable, or its error kept for `wait()`)."""
        return self._done.is_set()

    def wait(self) -> None:
        """Return once the data is durable (running the sync here if nobody started it);
        raises the OSError of the fdatasync, if any."""
        self.run()
        self._done.wait()
        if self._error is not None:
            raise self._error
