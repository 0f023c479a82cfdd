"""The real node as a subprocess (`python -m scp_node serve`), configured for a test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from configs import config_environ
from ports import free_port

from classifier.datasets.phantom import PhantomStudy
from scp_node.app.cli import destination_summary
from scp_node.config import ENV_PREFIX, load_config
from storage.index import open_index
from storage.private_files import restrict_umask

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class NodeProcess:
    """`lungnode serve` with the shipped config.ini, overridden by environment variables."""

    def __init__(
        self,
        workdir: Path,
        *,
        destinations: dict[str, str] | None = None,
        send_results_to: str = "sender",
        allowed_calling_aets: str = "ORTHANC,STORESCU",
        quiet_seconds: float = 2.0,
        port: int | None = None,
        overrides: dict[str, object] | None = None,
        role: str = "all",
        archive_port: int | None = None,
    ) -> None:
        """`archive_port`: send every result to a DCMTK storescp (AE STORESCP) on that port.
        `overrides`: more config keys as `section__key` (tests/support/configs.py), e.g.
        `{"sender__max_attempts": 3}`; they win over the arguments above.

        The node receives in its serve process (`[node] receiver_processes = 1`), not in the
        shipped `auto` (one process per core): each receiver process adds seconds to every
        start, and most tests test something else. A test of several receivers asks for them
        with `overrides={"node__receiver_processes": N}` (or `"auto"`)."""
        if archive_port is not None:
            destinations = {"archive": f"STORESCP@127.0.0.1:{archive_port}", **(destinations or {})}
            send_results_to = "archive"
        self.workdir = workdir
        self.role = role  # `serve --role`; may be changed between starts
        self.pid: int | None = None
        self.port = port or free_port()
        self.ae_title = "LUNGNODE"
        self.config_path = PROJECT_ROOT / "config.ini"
        self.log_path = workdir / "node.log"
        # The test process's own LUNGNODE__ variables do not reach the node: only these do.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        self.env = {**inherited, "TF_CPP_MIN_LOG_LEVEL": "2"}
        settings: dict[str, object] = dict(
            node__port=self.port,
            node__receiver_processes=1,
            storage__root=workdir / "store",
            storage__min_free_mb=1,
            pipeline__study_quiet_seconds=quiet_seconds,
            pipeline__tick_seconds=0.5,
            security__allowed_calling_aets=allowed_calling_aets,
            routing__send_results_to=send_results_to,
            sender__initial_backoff_seconds=1,
            sender__max_backoff_seconds=2,
            **{f"destinations__{name}": value for name, value in (destinations or {}).items()},
        )
        self.configure(**{**settings, **(overrides or {})})
        self._proc: subprocess.Popen[bytes] | None = None

    def configure(self, **overrides: object) -> None:
        """Set config keys (`section__key=value`) for the next start, through the environment."""
        self.env.update(config_environ(**overrides))

    @property
    def store(self) -> Path:
        """The instance store root the node is configured with."""
        return Path(self.env["LUNGNODE__STORAGE__ROOT"])

    def start(self, timeout: float = 120.0) -> NodeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scp_node",
                "serve",
                "-c",
                str(self.config_path),
                "--role",
                self.role,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.workdir,
            start_new_session=True,  # kill() takes its receiver processes with it
        )
        self.pid = self._proc.pid
        logged = len(self.log())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the node exited at start:\n{self.log()[-3000:]}")
            # receiver processes accept on a listening socket made before they run: the node
            # serves once it says it started
            if "lungnode started" not in self.log()[logged:]:
                time.sleep(0.1)
                continue
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the node did not listen on {self.port} in {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            if sig == signal.SIGKILL:  # a crash of the node: every process of it at once
                children = self.children()  # receivers run in sessions of their own
                if os.getpgid(self._proc.pid) == self._proc.pid:  # started in its own session
                    os.killpg(self._proc.pid, signal.SIGKILL)
                else:
                    self._proc.kill()
                for pid in children:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            else:
                self._proc.send_signal(sig)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        code = self._proc.returncode
        self._proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def children(self) -> list[int]:
        """Process ids of the serve process's children (receiver processes, analysis pool,
        multiprocessing's helper)."""
        assert self.pid is not None, "the node is not running"
        return child_pids(self.pid)

    def rss_kib(self) -> int:
        """Resident memory of the node: the serve process and its children, in KiB."""
        assert self.pid is not None, "the node is not running"
        return sum(rss_kib(pid) for pid in [self.pid, *self.children()])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "scp_node", *args, "-c", str(self.config_path)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def status(self) -> dict[str, Any]:
        proc = self.cli("status", "--json")
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))

    def index_status(self) -> dict[str, Any]:
        """What `status --json` prints, read in this process (as the command reads it): a
        poll costs milliseconds, not a Python start-up (~0.6 s of CPU the node under test
        would otherwise share its cores with)."""
        config = load_config(self.config_path, self.env)
        umask = restrict_umask()  # as the command runs: whatever it creates is private
        try:
            index = open_index(config.storage.database_url, pool_size=1)
            try:
                status = dict(index.status())
            finally:
                index.close()
        finally:
            os.umask(umask)
        status["destinations"] = destination_summary(config, status["outbox"])
        return dict(json.loads(json.dumps(status, sort_keys=True)))

    def unfinished_work(self) -> dict[str, int]:
        """Analysis jobs queued or running and result rows not yet delivered (PENDING or
        COMMITTING), by state, read from the node's index as `index_status` reads it."""
        config = load_config(self.config_path, self.env)
        umask = restrict_umask()
        try:
            index = open_index(config.storage.database_url, pool_size=1)
            try:
                rows = index.db.run(
                    lambda cur: cur.execute(
                        "SELECT 'job ' || state FROM jobs WHERE state IN ('QUEUED', 'RUNNING') "
                        "UNION ALL SELECT 'outbox ' || state FROM outbox "
                        "WHERE state IN ('PENDING', 'COMMITTING')"
                    ).fetchall(),
                    write=False,
                )
            finally:
                index.close()
        finally:
            os.umask(umask)
        found: dict[str, int] = {}
        for (what,) in rows:
            found[what] = found.get(what, 0) + 1
        return found

    def stop_settled(self) -> None:
        """Stop the node (SIGTERM: it finishes the scheduler tick and the analysis it runs) and
        check it left nothing that could still deliver: a duplicate delivery is then in the
        destination already or can never come, with no window of seconds to wait out."""
        self.stop()
        unfinished = self.unfinished_work()
        assert not unfinished, f"the node stopped with {unfinished}:\n{self.log()[-3000:]}"

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll the status (`index_status`) until `predicate` holds; fail with the node's log
        otherwise."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.index_status()
            if predicate(status):
                return status
            time.sleep(0.5)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}\nstatus: "
            f"{json.dumps(status, indent=1)}\nnode log:\n{self.log()[-4000:]}"
        )


def child_pids(pid: int) -> list[int]:
    """Process ids of the children of `pid`."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in out.stdout.split()]


def rss_kib(pid: int) -> int:
    """Resident memory of process `pid` in KiB (VmRSS of /proc/<pid>/status); 0 once gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("VmRSS:")), 0)


def save_datasets(datasets: Sequence[pydicom.Dataset], folder: Path) -> list[Path]:
    """Write each dataset as <SOPInstanceUID>.dcm in `folder`; the paths in the same order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class PhantomFiles:
    """A phantom study and its instances written as files (CT first, then PET)."""

    study: PhantomStudy
    files: list[Path]

    @property
    def datasets(self) -> list[pydicom.Dataset]:
        return [*self.study.ct, *self.study.pet]
