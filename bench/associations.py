"""Several associations at once: four studies sent on four associations together, against one
study on one association, to `lungnode serve --role receiver` (real store, SQLite index,
default config) with [node] receiver_processes = 1 and more, in the same run.

Each study is a CT series of --slices slices of 512x512 (distinct UIDs); each measurement
starts a fresh node with an empty store. Printed per receiver_processes: MB/s of one study on
one association, MB/s of four studies on four associations at once (total bytes / time until
the last storescu ended), their ratio (issue 13 asks >= 1.7 on this 2-core machine), and how
the four associations were spread over the receiver processes.

Usage: python bench/associations.py [--rounds 2] [--slices 100] [--processes 1,2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from ingest import CALLING_AET, free_port, generate_series, send, wait_for_port  # noqa: E402


class Node:
    def __init__(self, workdir: Path, processes: int) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUNGNODE__")}
        env.update(
            {
                "LUNGNODE__NODE__PORT": str(self.port),
                "LUNGNODE__NODE__RECEIVER_PROCESSES": str(processes),
                "LUNGNODE__STORAGE__ROOT": str(workdir / "store"),
                "LUNGNODE__STORAGE__MIN_FREE_MB": "64",
                "LUNGNODE__SECURITY__ALLOWED_CALLING_AETS": CALLING_AET,
                "LUNGNODE__PIPELINE__STUDY_QUIET_SECONDS": "3600",
                "LUNGNODE__PIPELINE__RELEASE_QUIET_SECONDS": "3600",
                "PYTHONPATH": str(PROJECT_ROOT),
            }
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = (workdir / "node.log").open("wb")
        cmd = [sys.executable, "-m", "scp_node", "serve", "-c", str(PROJECT_ROOT / "config.ini")]
        cmd += ["--role", "receiver"]
        self._proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=self._log)
        wait_for_port(self.port, timeout=120)
        log_path = workdir / "node.log"
        deadline = time.monotonic() + 120
        while log_path.read_text().count("lungnode.receiver: listening") < processes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{processes} receivers did not listen; see {log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=60)
        self._log.close()


def measure(cache: Path, studies: list[list[Path]], processes: int, mb: list[float]) -> tuple:
    with tempfile.TemporaryDirectory(prefix="associations-", dir=cache) as tmp:
        node = Node(Path(tmp) / "one", processes)
        try:
            one = send(studies[0], node.port, "LUNGNODE")
        finally:
            node.stop()
        node = Node(Path(tmp) / "four", processes)
        try:
            started = time.perf_counter()
            with ThreadPoolExecutor(len(studies)) as pool:
                list(pool.map(lambda files: send(files, node.port, "LUNGNODE"), studies))
            four = time.perf_counter() - started
        finally:
            node.stop()
        log = (Path(tmp) / "four" / "node.log").read_text(errors="replace")
        spread = sorted(
            (log.count(f" receiver={slot}") for slot in range(1, processes + 1)), reverse=True
        )
    return mb[0] / one, sum(mb) / four, "-".join(map(str, spread))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--processes", default="1,2", help="receiver_processes values")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "lungnode-bench"
    )
    args = parser.parse_args(argv)
    counts = [int(p) for p in args.processes.split(",")]
    studies = [
        generate_series(args.cache / f"ct-{args.slices + n}x512", args.slices + n, 512)
        for n in range(4)
    ]
    mb = [sum(f.stat().st_size for f in files) / 1e6 for files in studies]
    print(
        f"4 studies of {args.slices}-{args.slices + 3} slices ({sum(mb):.0f} MB); "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rates: dict[int, list[tuple[float, float]]] = {n: [] for n in counts}
    for round_no in range(1, args.rounds + 1):
        for n in counts:
            one, four, spread = measure(args.cache, studies, n, mb)
            rates[n].append((one, four))
            print(
                f"round {round_no} receiver_processes={n}: one association {one:6.1f} MB/s, "
                f"four at once {four:6.1f} MB/s, ratio {four / one:.2f} "
                f"(associations per receiver {spread or '-'}; load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    print()
    for n in counts:
        one = statistics.median(r[0] for r in rates[n])
        four = statistics.median(r[1] for r in rates[n])
        print(
            f"receiver_processes={n}: one {one:6.1f} MB/s, four {four:6.1f} MB/s, "
            f"four / one {four / one:.2f}x"
        )
    base = statistics.median(r[0] for r in rates[counts[0]])
    for n in counts[1:]:
        four = statistics.median(r[1] for r in rates[n])
        print(
            f"four at once with {n} processes / one association with {counts[0]}: "
            f"{four / base:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
