"""Several associations at once: four fresh studies sent on four associations together,
against one fresh study on one association, to `lungnode serve` as users run it (the shipped
config.ini, only ports, AE titles and folders changed: [node] receiver_processes = auto; its
own analysis of each study runs; bench/served_node.py), in the same run.

Each study is a CT series of --slices slices of 512x512 with UIDs never sent before. Rounds
alternate one and four (and the settings of --processes, a diagnosis flag that starts one node
per [node] receiver_processes value, all started at once); before each measurement the node's
analysis of what it received finishes (--analysis wait) or may still run (--analysis run).
Printed per setting:
MB/s of one association and of four at once (total bytes / time until the last storescu
ended), medians of the rounds (at least 5 for a figure) with their spread, their ratio (the
goal is >= 1.7x on 2 cores), and how the four associations were spread over the receivers.

Usage: python bench/associations.py [--rounds 5] [--slices 100] [--processes auto]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from ingest import CALLING_AET, fresh_series, send, spread  # noqa: E402
from served_node import (  # noqa: E402
    ServedNode,
    start_served_nodes,
    stop_served_nodes,
    stop_served_nodes_on_sigterm,
)


def _size_mb(files: list[Path]) -> float:
    return sum(f.stat().st_size for f in files) / 1e6


def one_association(node: ServedNode, cache: Path, slices: int) -> float:
    """MB/s of one fresh study on one association."""
    _, files = fresh_series(cache, slices, 512)
    try:
        return _size_mb(files) / send(files, node.port, "LUNGNODE")
    finally:
        shutil.rmtree(files[0].parent)


def four_at_once(node: ServedNode, cache: Path, slices: int) -> tuple[float, str]:
    """MB/s of four fresh studies on four associations at once, and their spread over the
    receivers ('2-2': two associations on each of two receivers)."""
    studies = [fresh_series(cache, slices, 512)[1] for _ in range(4)]
    before = node.log()
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(len(studies)) as pool:
            list(pool.map(lambda files: send(files, node.port, "LUNGNODE"), studies))
        elapsed = time.perf_counter() - started
        total = sum(_size_mb(files) for files in studies)
    finally:
        for files in studies:
            shutil.rmtree(files[0].parent)
    new = node.log()[len(before) :]
    slots = [
        line.rsplit(" receiver=", 1)[1].split()[0]
        for line in new.splitlines()
        if "association accepted" in line and " receiver=" in line
    ]
    counts = sorted((slots.count(s) for s in set(slots)), reverse=True)
    return total / elapsed, "-".join(map(str, counts)) or "one process"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="at least 5 for a figure")
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument(
        "--processes",
        default="auto",
        help="diagnosis: [node] receiver_processes values, comma-separated (auto is shipped)",
    )
    parser.add_argument("--analysis", choices=("wait", "run"), default="wait")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "lungnode-bench"
    )
    args = parser.parse_args(argv)
    stop_served_nodes_on_sigterm()
    if args.rounds < 1 or args.slices < 1:
        parser.error("--rounds and --slices must be at least 1")
    settings = [p.strip() for p in args.processes.split(",") if p.strip()]
    args.cache.mkdir(parents=True, exist_ok=True)
    print(
        f"studies of {args.slices} slices of 512x512, fresh each send; lungnode serve on the "
        f"shipped config.ini; analysis={args.analysis}; {os.cpu_count()} CPUs; load average "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if args.rounds < 5:
        print(f"{args.rounds} rounds: a smoke run, not a figure (use 5 or more)", flush=True)
    rates: dict[str, list[tuple[float, float]]] = {n: [] for n in settings}
    with tempfile.TemporaryDirectory(prefix="associations-", dir=args.cache) as tmp:
        starts = [
            functools.partial(
                ServedNode,
                Path(tmp) / f"node-{n}",
                CALLING_AET,
                settings={} if n == "auto" else {"node__receiver_processes": n},
            )
            for n in settings
        ]
        nodes = dict(zip(settings, start_served_nodes(starts), strict=True))
        try:
            for n in settings:
                rss = nodes[n].receiver_rss_mib()
                print(
                    f"receiver_processes={n}: {len(rss) or 'no separate'} receiver processes"
                    + (f", RSS {', '.join(f'{r:.0f}' for r in rss)} MiB" if rss else ""),
                    flush=True,
                )
            for round_no in range(1, args.rounds + 1):
                for n in settings:
                    node = nodes[n]
                    if args.analysis == "wait":
                        node.wait_idle()
                    one = one_association(node, args.cache, args.slices)
                    if args.analysis == "wait":
                        node.wait_idle()
                    four, spread_of_four = four_at_once(node, args.cache, args.slices)
                    rates[n].append((one, four))
                    print(
                        f"round {round_no} receiver_processes={n}: one association "
                        f"{one:6.1f} MB/s, four at once {four:6.1f} MB/s, ratio {four / one:.2f} "
                        f"(associations per receiver {spread_of_four}; load "
                        f"{os.getloadavg()[0]:.2f})",
                        flush=True,
                    )
        finally:
            stop_served_nodes(nodes.values())
    print()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    for n in settings:
        ones = [r[0] for r in rates[n]]
        fours = [r[1] for r in rates[n]]
        ratios = [f / o for o, f in rates[n]]
        one, four = statistics.median(ones), statistics.median(fours)
        print(
            f"receiver_processes={n}: one {one:6.1f} MB/s (spread {spread(ones)}), four "
            f"{four:6.1f} MB/s (spread {spread(fours)}), four / one {four / one:.2f}x "
            f"(per round {spread(ratios)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
