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
from pathlib import Path
from typing import Any

import pydicom
from dcmtk import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]


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
        extra: dict[str, str] | None = None,
        role: str = "all",
        archive_port: int | None = None,
    ) -> None:
        """`archive_port`: send every result to a DCMTK storescp (AE STORESCP) on that port."""
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
        self.env = {
            **os.environ,
            "LUNGNODE__NODE__PORT": str(self.port),
            "LUNGNODE__STORAGE__ROOT": str(workdir / "store"),
            "LUNGNODE__STORAGE__MIN_FREE_MB": "1",
            "LUNGNODE__PIPELINE__STUDY_QUIET_SECONDS": str(quiet_seconds),
            "LUNGNODE__PIPELINE__TICK_SECONDS": "0.5",
            "LUNGNODE__SECURITY__ALLOWED_CALLING_AETS": allowed_calling_aets,
            "LUNGNODE__ROUTING__SEND_RESULTS_TO": send_results_to,
            "LUNGNODE__SENDER__INITIAL_BACKOFF_SECONDS": "1",
            "LUNGNODE__SENDER__MAX_BACKOFF_SECONDS": "2",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        for name, value in (destinations or {}).items():
            self.env[f"LUNGNODE__DESTINATIONS__{name.upper()}"] = value
        self.env.update(extra or {})
        self._proc: subprocess.Popen[bytes] | None = None

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
        )
        self.pid = self._proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the node exited at start:\n{self.log()[-3000:]}")
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

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll `status --json` until `predicate` holds; fail with the node's log otherwise."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.5)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}\nstatus: "
            f"{json.dumps(status, indent=1)}\nnode log:\n{self.log()[-4000:]}"
        )


def save_datasets(datasets: Sequence[pydicom.Dataset], folder: Path) -> list[Path]:
    """Write each dataset as <SOPInstanceUID>.dcm in `folder`; the paths in the same order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
