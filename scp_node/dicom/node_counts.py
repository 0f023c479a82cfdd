"""Connections and associations of every receiver process of one node, counted together.

With [node] receiver_processes > 1 each receiver process accepts its own connections, yet
max_associations, max_associations_per_ae and max_pending_per_address are the node's limits.
The serve process makes one `NodeCounts` in shared memory; each receiver process writes only
its own row: its open connections, one key per association that delivered an A-ASSOCIATE-RQ
(its calling AE title) and one per connection not yet associated (its source address). A
check publishes its own row and counts every row under one lock file (fcntl.flock, which the
kernel releases when a process dies, so a receiver killed while holding it blocks nobody). The
serve process clears a dead receiver's row before it starts the next (`clear`).

Keys are 63-bit BLAKE2b digests of the AE title or address: two titles share a count only on a
digest collision (about 2^-63 per pair).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# keys a row holds beyond max_associations: connections of one receiver not yet associated
# (past it, that receiver's extra ones are counted in its own process only)
PENDING_KEYS_PER_ROW = 1024
NEGOTIATING_KEYS_PER_ROW = 64


def key_of(kind: str, text: str) -> int:
    """The nonzero 63-bit key of an AE title ('ae') or a source address ('host')."""
    digest = hashlib.blake2b(f"{kind}\0{text}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) or 1


class NodeCounts:
    """Per receiver process (row 0 .. receivers - 1): open connections, associations, and the
    keys of its associations' calling AE titles and of its unassociated connections' addresses.

    Made by the serve process before it starts the receivers (shared memory, passed to each as
    a Process argument); the lock file is opened again in each process."""

    def __init__(self, receivers: int, max_associations: int, lock_path: Path, context: Any):
        if receivers < 1:
            raise ValueError(f"NodeCounts: receivers = {receivers}, expected at least 1")
        self.receivers = receivers
        # + room for requests being negotiated at the same moment (rejected ones included)
        self.ae_capacity = max_associations + NEGOTIATING_KEYS_PER_ROW
        self.host_capacity = PENDING_KEYS_PER_ROW
        self.listening = context.Array("i", receivers, lock=False)  # 1 once its SCP listens
        self.connections = context.Array("i", receivers, lock=False)
        self.associations = context.Array("i", receivers, lock=False)
        self.ae_keys = context.Array("q", receivers * self.ae_capacity, lock=False)
        self.host_keys = context.Array("q", receivers * self.host_capacity, lock=False)
        self.lock_path = Path(lock_path)
        self.lock_path.touch(mode=0o600, exist_ok=True)
        self._init_local()

    def _init_local(self) -> None:
        self._thread_lock = threading.RLock()
        self._depth = 0  # how deep the holding thread is in locked()
        self._fd: int | None = None
        self._fd_pid = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for local in ("_thread_lock", "_depth", "_fd", "_fd_pid"):
            state.pop(local, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_local()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the node's count lock: one thread of one process at a time (reentrant)."""
        with self._thread_lock:
            if self._fd is None or self._fd_pid != os.getpid():
                self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._fd_pid = os.getpid()
            if self._depth == 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def publish(
        self, row: int, connections: int, ae_titles: Sequence[str], hosts: Sequence[str]
    ) -> None:
        """Write receiver `row`'s counts (only that receiver writes its row)."""
        self.connections[row] = connections
        self.associations[row] = len(ae_titles)
        self._write(self.ae_keys, row, self.ae_capacity, [key_of("ae", t) for t in ae_titles])
        self._write(self.host_keys, row, self.host_capacity, [key_of("host", h) for h in hosts])

    @staticmethod
    def _write(table: Any, row: int, capacity: int, keys: list[int]) -> None:
        keys = keys[:capacity]
        start = row * capacity
        table[start : start + capacity] = keys + [0] * (capacity - len(keys))

    def clear(self, row: int) -> None:
        """Forget everything receiver `row` held (it died, or starts afresh)."""
        self.listening[row] = 0
        self.publish(row, 0, (), ())

    def associations_of(self, ae_title: str) -> int:
        """Associations of calling AE `ae_title` on the whole node."""
        return list(self.ae_keys).count(key_of("ae", ae_title))

    def pending_from(self, host: str) -> int:
        """Connections from `host` not yet associated, on the whole node."""
        return list(self.host_keys).count(key_of("host", host))

    def total_associations(self) -> int:
        return sum(self.associations)

    def others_connections(self, row: int) -> int:
        """Open connections of every receiver but `row`."""
        counts = list(self.connections)
        return sum(counts) - counts[row]

    def rows(self) -> list[tuple[int, int, int]]:
        """(receiver slot (row + 1), open connections, associations) of each receiver."""
        return [
            (row + 1, int(self.connections[row]), int(self.associations[row]))
            for row in range(self.receivers)
        ]
