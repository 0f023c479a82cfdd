"""`lungnode serve` as users run it, for the benchmarks: the shipped config.ini with only the
ports, AE titles and folders changed (environment overrides), and its own analysis running.

`ServedNode` starts it, tells a study's state from its SQLite index (read-only), waits for the
analyses to finish, and reports each receiver process's resident memory.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUSY_STATES = frozenset({"RECEIVING", "READY", "ANALYZING"})  # the node still works on it


def stop_served_nodes_on_sigterm() -> None:
    """SIGTERM ends the benchmark like Ctrl-C: its `finally` stops the nodes it started (each
    runs in its own session, so nothing else would)."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def free_port() -> int:
    """A loopback TCP port that is free now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mib(pid: int) -> float:
    """Resident memory (MiB) of process `pid`; 0 once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    return next((int(x.split()[1]) / 1024.0 for x in lines if x.startswith("VmRSS:")), 0.0)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` in seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServedNode:
    """`python -m scp_node serve -c config.ini` in `workdir` (store, log), on a free port,
    allowing `calling_aet`; `settings` are more LUNGNODE__SECTION__KEY overrides, for the
    benchmarks' diagnosis flags only (say so where they are used)."""

    def __init__(
        self,
        workdir: Path,
        calling_aet: str,
        *,
        role: str = "all",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.web_port = free_port()
        self.store = workdir / "store"
        self.log_path = workdir / "node.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUNGNODE__")}
        env.update(
            {
                "LUNGNODE__NODE__PORT": str(self.port),
                "LUNGNODE__WEB__PORT": str(self.web_port),
                "LUNGNODE__STORAGE__ROOT": str(self.store),
                "LUNGNODE__SECURITY__ALLOWED_CALLING_AETS": calling_aet,
                "PYTHONPATH": str(PROJECT_ROOT),
                "TF_CPP_MIN_LOG_LEVEL": "2",
                **{f"LUNGNODE__{k.upper()}": v for k, v in (settings or {}).items()},
            }
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "scp_node", "serve", "-c", str(PROJECT_ROOT / "config.ini")]
        cmd += ["--role", role]
        # cwd: `python -m` puts the working folder first on sys.path, before PYTHONPATH; from
        # another checkout the node would run that checkout's code
        self._proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=PROJECT_ROOT,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        self._wait_started(timeout=300)

    def _wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while "lungnode started" not in self.log():
            if self._proc.poll() is not None:
                raise RuntimeError(f"lungnode serve exited at start:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"lungnode serve did not start in {timeout:g} s")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def states(self) -> dict[str, str]:
        """Study Instance UID -> state, from the node's index."""
        path = self.store / "index.sqlite"
        if not path.exists():
            return {}
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return dict(db.execute("SELECT study_uid, state FROM studies").fetchall())
        except sqlite3.OperationalError:  # not yet made
            return {}
        finally:
            db.close()

    def wait_for(self, study_uid: str, states: frozenset[str], timeout: float = 1800) -> str:
        """Wait until `study_uid` is in one of `states`; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.states().get(study_uid)
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"study {study_uid} still {state} after {timeout:g} s")
            time.sleep(0.1)

    def wait_idle(self, timeout: float = 1800) -> None:
        """Wait until no study is being received, waits or is analysed."""
        deadline = time.monotonic() + timeout
        while any(s in BUSY_STATES for s in self.states().values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the node still analyses after {timeout:g} s")
            time.sleep(0.2)

    def receiver_pids(self) -> list[int]:
        """The receiver processes, as the serve process logged them (restarted ones too)."""
        found = re.findall(r"receiver process started slot=\d+ pid=(\d+)", self.log())
        return [int(pid) for pid in found]

    def analysis_pids(self) -> list[int]:
        """The analysis processes of the last start, as the serve process logged them."""
        found = re.findall(r"analysis processes started count=\d+ workers=(\S+)", self.log())
        return [int(w.rsplit(":", 1)[1]) for line in found[-1:] for w in line.split(",")]

    def receiving_pids(self) -> list[int]:
        """The processes that receive: the receiver processes, or the serve process itself
        when it has none ([node] receiver_processes = 1)."""
        return self.receiver_pids() or [self._proc.pid]

    def receiver_rss_mib(self) -> list[float]:
        """Resident memory (MiB) of each receiver process."""
        return [rss for rss in map(_rss_mib, self.receiver_pids()) if rss]

    def analysis_rss_mib(self) -> list[float]:
        """Resident memory (MiB) of each analysis process, with its model."""
        return [rss for rss in map(_rss_mib, self.analysis_pids()) if rss]

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system, every thread, ended ones too) used so far by the serve
        process, its receiver processes and its analysis processes, by role."""
        return {
            "serve": process_cpu_seconds(self._proc.pid),
            "receivers": sum(map(process_cpu_seconds, self.receiver_pids())),
            "analysis": sum(map(process_cpu_seconds, self.analysis_pids())),
        }

    def rss_mib(self) -> float:
        """Resident memory (MiB) of the serve process itself."""
        out = subprocess.run(
            ["ps", "-o", "rss=", "-p", str(self._proc.pid)], capture_output=True, text=True
        )
        return int(out.stdout.split()[0]) / 1024.0 if out.stdout.split() else 0.0

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._log.close()


def start_served_nodes(starts: Sequence[Callable[[], ServedNode]]) -> list[ServedNode]:
    """Call every `starts` at once and return their nodes in that order: each start waits for
    its analysis process to load the model, seconds of one core that need not add up. When one
    fails, those that started are stopped and its error is raised."""
    with ThreadPoolExecutor(max(1, len(starts))) as pool:
        futures = [pool.submit(start) for start in starts]
    started = [f.result() for f in futures if f.exception() is None]
    for future in futures:
        if future.exception() is not None:
            stop_served_nodes(started)
            future.result()
    return started


def stop_served_nodes(nodes: Iterable[ServedNode]) -> None:
    """Stop every node at once (each lets its analysis finish before it exits)."""
    nodes = list(nodes)
    with ThreadPoolExecutor(max(1, len(nodes))) as pool:
        list(pool.map(ServedNode.stop, nodes))
