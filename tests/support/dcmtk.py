"""Helpers to run the real DCMTK tools (storescu, echoscu, storescp) on loopback in tests.

Debian's DCMTK leaves Nagle's algorithm on; every tool here runs with TCP_NODELAY=1 in its
environment, else each instance stalls about 40 ms. Ports are chosen free at run time
(ports.free_port).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import pydicom
import pytest
from ports import free_port, wait_for_port


def dcmtk_env() -> dict[str, str]:
    """The environment for a DCMTK tool: ours plus TCP_NODELAY=1."""
    return {**os.environ, "TCP_NODELAY": "1"}


def require_tool(name: str) -> str:
    """The path of a DCMTK tool, or skip the test with the package to install."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found on PATH; install the Debian package dcmtk")
    return path


def run_storescu(
    files: Sequence[Path | str],
    port: int,
    calling_ae: str = "STORESCU",
    called_ae: str = "ANY-SCP",
    extra_args: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Send `files` with storescu over one association; the result carries rc, stdout, stderr."""
    exe = require_tool("storescu")
    cmd = [exe, "-aet", calling_ae, "-aec", called_ae, *extra_args, host, str(port)]
    cmd += [str(f) for f in files]
    return subprocess.run(
        cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def run_echoscu(
    port: int,
    calling_ae: str = "STORESCU",
    called_ae: str = "ANY-SCP",
    extra_args: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """C-ECHO host:port with echoscu; rc 0 means the echo succeeded. The default calling AE
    is STORESCU, which config.ini allows."""
    exe = require_tool("echoscu")
    cmd = [exe, "-aet", calling_ae, "-aec", called_ae, *extra_args, host, str(port)]
    return subprocess.run(
        cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


class StorescpServer:
    """A DCMTK storescp on a free loopback port writing received files into `folder`.

    `options` go to storescp as they are, e.g. ["--refuse"], ["--reject"], ["--abort-after"],
    ["-pm"]. Use as a context manager; `port` is the port it listens on.
    """

    def __init__(
        self,
        folder: Path,
        ae_title: str = "STORESCP",
        options: Sequence[str] = (),
        *,
        port: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.ae_title = ae_title
        self.options = list(options)
        self.port = port or free_port()
        self._process: subprocess.Popen[str] | None = None
        self.log = self.folder.parent / f"storescp-{self.port}.log"

    def __enter__(self) -> Self:
        exe = require_tool("storescp")
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [exe, "-aet", self.ae_title, "-od", str(self.folder), *self.options, str(self.port)]
        with self.log.open("w") as log:
            self._process = subprocess.Popen(
                cmd, env=dcmtk_env(), stdout=log, stderr=subprocess.STDOUT, text=True
            )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"storescp did not start: {self.log.read_text()}") from None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Terminate storescp (it only stops on a signal)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def received(self) -> list[Path]:
        """The files storescp has written so far."""
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def by_modality(self) -> dict[str, list[pydicom.Dataset]]:
        """The headers of the files received so far by Modality (SR, SEG), with filenames."""
        found: dict[str, list[pydicom.Dataset]] = {}
        for path in self.received():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ds.filename = str(path)
            found.setdefault(str(ds.Modality), []).append(ds)
        return found

    def wait_for_modalities(
        self, kinds: set[str], node_log: Callable[[], str], timeout: float = 180
    ) -> dict[str, list[pydicom.Dataset]]:
        """`by_modality()` once every modality in `kinds` has arrived; fails with the sending
        node's log (`node_log()`) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        found: dict[str, list[pydicom.Dataset]] = {}
        while time.monotonic() < deadline:
            found = self.by_modality()
            if kinds <= set(found):
                return found
            time.sleep(0.5)
        raise AssertionError(
            f"results {kinds} not received; got {set(found)}\n{node_log()[-4000:]}"
        )
