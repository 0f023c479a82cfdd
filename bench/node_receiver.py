"""The node's receive path alone (Receiver + InstanceStore + SQLite Index) as a process, for
bench/ingest.py: no scheduler, worker or sender, so the benchmark measures C-STORE ingest only.

Usage: python bench/node_receiver.py --root DIR --port N [--profile FILE] [--timings FILE]
It prints "ready" once listening and stops cleanly on SIGTERM/SIGINT (writing the profile, and
the per-instance time of the C-STORE handler and its parts as JSON).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import pstats
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import scp_node.receive.receiver as receiver_module
from scp_node.config import load_config
from scp_node.receive.receiver import Receiver
from storage.index import open_index
from storage.instance_store import InstanceStore

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the receiver until a signal; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="instance store folder")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--ae-title", default="LUNGNODE")
    parser.add_argument("--calling-aet", default="BENCH", help="calling AE title to allow")
    parser.add_argument(
        "--profile", type=Path, help="write a cProfile (CPU time per thread) of all threads here"
    )
    parser.add_argument("--timings", type=Path, help="write per-instance handler timings here")
    parser.add_argument(
        "--pynetdicom-polling",
        action="store_true",
        help=(
            "undo the reactor wake-ups (scp_node.dicom.pynetdicom_adapter.wakeups): "
            "pynetdicom's own 1 ms sleeps"
        ),
    )
    parser.add_argument(
        "--without-early-sync",
        action="store_true",
        help="no fdatasync of the streamed file as its last fragment lands (storage.data_sync): "
        "the commit then syncs data and name together, after the header and index checks",
    )
    parser.add_argument(
        "--diagnose-without-fsync",
        action="store_true",
        help="diagnosis only, never a way to run the node: skip every fsync of the store, to "
        "measure what the rest of the receive path costs",
    )
    args = parser.parse_args(argv)
    if args.without_early_sync:
        from scp_node.dicom.pynetdicom_adapter import streaming

        streaming.DataSync = lambda _path: None  # type: ignore[assignment,misc]
    if args.diagnose_without_fsync:
        import storage.instance_store as instance_store

        instance_store._fsync_path = lambda _path: None
        instance_store.os.fsync = lambda _fd: None  # type: ignore[assignment]

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    environ = {
        "LUNGNODE__NODE__AE_TITLE": args.ae_title,
        "LUNGNODE__NODE__PORT": str(args.port),
        "LUNGNODE__STORAGE__ROOT": str(args.root),
        "LUNGNODE__STORAGE__MIN_FREE_MB": "64",
        "LUNGNODE__SECURITY__ALLOWED_CALLING_AETS": args.calling_aet,
    }
    config = load_config(PROJECT_ROOT / "config.ini", environ=environ)
    store = InstanceStore(
        config.storage.root,
        config.storage.min_free_mb,
        folder_fsync=config.storage.folder_fsync,
    )
    index = open_index(config.storage.database_url, pool_size=config.storage.database_pool_size)
    receiver = Receiver(config, store, index)
    if args.pynetdicom_polling:
        from scp_node.dicom.pynetdicom_adapter import wakeups

        wakeups.restore_polling()
    timings = HandlerTimings(receiver) if args.timings else None

    profiles: list[cProfile.Profile] = []
    if args.profile:
        threading.setprofile(lambda *_: _profile_this_thread(profiles))

    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    receiver.start()
    print("ready", flush=True)
    stop.wait()
    receiver.stop(grace_seconds=5)
    index.close()
    if profiles and args.profile is not None:
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(args.profile)
    if timings is not None and args.timings is not None:
        args.timings.write_text(json.dumps(timings.summary()))
    return 0


class HandlerTimings:
    """Wall-clock time per C-STORE of the handler and of its parts (header read, store commit,
    index record), and of everything between two handler calls (network, pynetdicom, peer)."""

    PARTS = ("handler", "header", "commit", "index")

    def __init__(self, receiver: Receiver) -> None:
        self._lock = threading.Lock()
        self._totals = dict.fromkeys(self.PARTS, 0.0)
        self._count = 0
        self._first_start: float | None = None
        self._last_end = 0.0
        receiver._on_c_store = self._timed(receiver._on_c_store, "handler")  # type: ignore[method-assign]
        receiver_module._read_header = self._timed(receiver_module._read_header, "header")
        store = receiver._store
        store.commit = self._timed(store.commit, "commit")  # type: ignore[method-assign]
        indexing = receiver._indexing
        indexing.record = self._timed(indexing.record, "index")  # type: ignore[method-assign]

    def _timed(self, function: Callable[..., Any], part: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                ended = time.perf_counter()
                with self._lock:
                    self._totals[part] += ended - started
                    if part == "handler":
                        self._count += 1
                        if self._first_start is None:
                            self._first_start = started
                        self._last_end = ended

        return timed

    def summary(self) -> dict[str, float]:
        """Mean milliseconds per instance of each part, and of the time outside the handler."""
        n = max(self._count, 1)
        result = {part: self._totals[part] * 1000 / n for part in self.PARTS}
        span = self._last_end - (self._first_start or self._last_end)
        result["between_handlers"] = max(span - self._totals["handler"], 0.0) * 1000 / n
        result["instances"] = float(self._count)
        return result


def _profile_this_thread(profiles: list[cProfile.Profile]) -> None:
    """Start a profiler for the calling (new) thread; its stats are merged at exit."""
    # CPU time of the thread, not wall time: waits (fsync, sockets, the GIL held by the
    # other thread of the association) would otherwise hide where the CPU goes
    profile = cProfile.Profile(time.thread_time)
    profiles.append(profile)
    profile.enable()


if __name__ == "__main__":
    raise SystemExit(main())
