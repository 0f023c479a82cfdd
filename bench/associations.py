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
With them, where the CPU went (CPU time, so it holds on a shared machine): milliseconds of CPU
per instance of the receiver processes (with their spread over the receivers) and of the
storescu senders, the share of the machine's CPUs busy during the send (everything on it,
other users' work and the kernel's too), and the most four at once could reach at these CPU
costs if the CPUs did nothing else: on a 2-core machine one association is bounded by one
receiver's core and four by both cores shared with the senders, so the ratio cannot pass
CPUs x (receiver ms of one) / (receiver + sender ms of four).

Usage: python bench/associations.py [--rounds 5] [--slices 100] [--processes auto]
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from ingest import CALLING_AET, fresh_series, send, spread  # noqa: E402
from served_node import (  # noqa: E402
    ServedNode,
    process_cpu_seconds,
    start_served_nodes,
    stop_served_nodes,
    stop_served_nodes_on_sigterm,
)


def _size_mb(files: list[Path]) -> float:
    return sum(f.stat().st_size for f in files) / 1e6


@dataclass(frozen=True)
class CpuUse:
    """Where the CPU went during one send: milliseconds of CPU per instance received."""

    receivers_ms: float  # the receiver processes (or the serve process), user + system
    senders_ms: float  # the storescu processes, user + system
    machine_busy: float  # share of all CPUs' time not idle (everything on the machine)
    receiver_split: str  # each receiver's CPU seconds, busiest first
    megabytes: float  # per instance


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine from /proc/stat, in clock ticks."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values[:8]) - idle, sum(values[:8])


def _receiver_seconds(node: ServedNode) -> dict[int, float]:
    return {pid: process_cpu_seconds(pid) for pid in node.receiving_pids()}


def _children_seconds() -> float:
    """CPU seconds of this process's ended children (the storescu senders: each is waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measured(
    node: ServedNode, files: list[Path], work: Callable[[], None]
) -> tuple[float, CpuUse]:
    """Run `work`, which sends `files`; its seconds and where the CPU went."""
    instances = len(files)
    receivers, senders, machine = _receiver_seconds(node), _children_seconds(), _machine_jiffies()
    started = time.perf_counter()
    work()
    elapsed = time.perf_counter() - started
    receivers_after, senders_after = _receiver_seconds(node), _children_seconds()
    machine_after = _machine_jiffies()
    used = sorted(
        (receivers_after[pid] - receivers.get(pid, 0.0) for pid in receivers_after), reverse=True
    )
    ticks = machine_after[1] - machine[1]
    return elapsed, CpuUse(
        receivers_ms=1000 * sum(used) / instances,
        senders_ms=1000 * (senders_after - senders) / instances,
        machine_busy=(machine_after[0] - machine[0]) / ticks if ticks else 0.0,
        receiver_split="/".join(f"{u:.2f}" for u in used if u >= 0.005) or "0",
        megabytes=_size_mb(files) / instances,
    )


def one_association(node: ServedNode, cache: Path, slices: int) -> tuple[float, CpuUse]:
    """MB/s of one fresh study on one association, and where the CPU went."""
    _, files = fresh_series(cache, slices, 512)

    def send_one() -> None:
        send(files, node.port, "LUNGNODE")

    try:
        elapsed, cpu = _measured(node, files, send_one)
        return _size_mb(files) / elapsed, cpu
    finally:
        shutil.rmtree(files[0].parent)


def four_at_once(node: ServedNode, cache: Path, slices: int) -> tuple[float, str, CpuUse]:
    """MB/s of four fresh studies on four associations at once, their spread over the
    receivers ('2-2': two associations on each of two receivers), and where the CPU went."""
    studies = [fresh_series(cache, slices, 512)[1] for _ in range(4)]
    before = node.log()

    def send_all() -> None:
        with ThreadPoolExecutor(len(studies)) as pool:
            list(pool.map(lambda files: send(files, node.port, "LUNGNODE"), studies))

    try:
        elapsed, cpu = _measured(node, [f for files in studies for f in files], send_all)
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
    return total / elapsed, "-".join(map(str, counts)) or "one process", cpu


def cpu_summary(rounds: list[tuple[CpuUse, CpuUse]], one_mb_s: float, cpus: int) -> str:
    """Medians of the CPU per instance of one and of four, and the most four at once could
    reach at those costs on `cpus` CPUs that did nothing else: against the median one
    association, and against one association bound by its receiver's CPU alone."""
    one = statistics.median(c[0].receivers_ms for c in rounds)
    four = statistics.median(c[1].receivers_ms for c in rounds)
    senders = statistics.median(c[1].senders_ms for c in rounds)
    busy = statistics.median(c[1].machine_busy for c in rounds)
    megabytes = statistics.median(c[1].megabytes for c in rounds)
    per_instance = four + senders
    ceiling = cpus * 1000 / per_instance * megabytes if per_instance else 0.0
    bound = cpus * one / per_instance if per_instance else 0.0
    return (
        f"CPU ms per instance (medians): receivers {one:.2f} for one, {four:.2f} for four; "
        f"storescu {senders:.2f} for four; machine busy {busy:.0%} during four. At these costs "
        f"four at once reaches at most {ceiling:.0f} MB/s on {cpus} CPUs that do nothing else: "
        f"four / one <= {ceiling / one_mb_s:.2f}x against the median one association, "
        f"<= {bound:.2f}x against one bound by its receiver's CPU"
    )


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
    cpus: dict[str, list[tuple[CpuUse, CpuUse]]] = {n: [] for n in settings}
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
                    one, cpu_one = one_association(node, args.cache, args.slices)
                    if args.analysis == "wait":
                        node.wait_idle()
                    four, spread_of_four, cpu_four = four_at_once(node, args.cache, args.slices)
                    rates[n].append((one, four))
                    cpus[n].append((cpu_one, cpu_four))
                    print(
                        f"round {round_no} receiver_processes={n}: one association "
                        f"{one:6.1f} MB/s, four at once {four:6.1f} MB/s, ratio {four / one:.2f} "
                        f"(associations per receiver {spread_of_four}; load "
                        f"{os.getloadavg()[0]:.2f})\n"
                        f"  CPU ms per instance, one: receivers {cpu_one.receivers_ms:.2f}, "
                        f"storescu {cpu_one.senders_ms:.2f}, machine busy "
                        f"{cpu_one.machine_busy:.0%}; four: receivers {cpu_four.receivers_ms:.2f} "
                        f"(CPU s per receiver {cpu_four.receiver_split}), storescu "
                        f"{cpu_four.senders_ms:.2f}, machine busy {cpu_four.machine_busy:.0%}",
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
        print("  " + cpu_summary(cpus[n], one, os.cpu_count() or 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
