"""The node's receive path alone (Receiver + InstanceStore + SQLite Index) as a process, for
bench/ingest.py: no scheduler, worker or sender, so the benchmark measures C-STORE ingest only.

Usage: python bench/node_receiver.py --root DIR --port N [--profile FILE]
It prints "ready" once listening and stops cleanly on SIGTERM/SIGINT (writing the profile).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import signal
import threading
from pathlib import Path
from types import FrameType

from scp_node.config import load_config
from scp_node.receiver import Receiver
from storage.database import Database
from storage.index import Index
from storage.instance_store import InstanceStore

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the receiver until a signal; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="instance store folder")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--ae-title", default="LUNGNODE")
    parser.add_argument("--calling-aet", default="BENCH", help="calling AE title to allow")
    parser.add_argument("--profile", type=Path, help="write a cProfile of all threads here")
    args = parser.parse_args(argv)

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
    store = InstanceStore(config.storage.root, config.storage.min_free_mb)
    database = Database.connect(config.storage.database_url)
    index = Index(database)
    receiver = Receiver(config, store, index)

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
    database.close()
    if profiles and args.profile is not None:
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(args.profile)
    return 0


def _profile_this_thread(profiles: list[cProfile.Profile]) -> None:
    """Start a profiler for the calling (new) thread; its stats are merged at exit."""
    profile = cProfile.Profile()
    profiles.append(profile)
    profile.enable()


if __name__ == "__main__":
    raise SystemExit(main())
