"""STOW-RS intake benchmark: one CT series into the node by STOW-RS, into the node by C-STORE,
and into Orthanc (Debian, DICOMweb plugin) by STOW-RS, same series, same run.

The series (default 100 slices of 512x512 16-bit) is generated once by bench/ingest.py. Each
round sends it to each peer in turn (interleaved, so load on the machine hits all alike), each
peer fresh with an empty store: `node-stow` is one STOW-RS request (multipart/related, streamed
from the files by httpx) to `lungnode serve --role receiver` (durable before its 200: fsync of
every file, SQLite index); `node-cstore` is storescu over one association to the same kind of
process; `orthanc-stow` is the same STOW-RS request to Orthanc's /dicom-web/studies. Printed:
per peer the median of the rounds with its spread (min-max), MB/s and instances/s, and the
ratios node-stow / node-cstore and node-stow / orthanc-stow.

Usage: python bench/stow_intake.py [--rounds 3] [--slices 100] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from ingest import (  # noqa: E402
    CALLING_AET,
    ORTHANC,
    _wait_http,
    free_port,
    generate_series,
    orthanc_ports,
    send,
    wait_for_port,
)

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
STOW_TOKEN = "bench-stow-5c1e9a7f3b2d4e68"
WEB_TOKEN = "bench-console-8d2f6a4c1e9b7305"
BOUNDARY = "lungnode-bench-boundary"
PEERS = ("node-stow", "node-cstore", "orthanc-stow")


def body(files: list[Path]) -> Iterator[bytes]:
    """The multipart/related body of `files`, one file in memory at a time."""
    for path in files:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield path.read_bytes()
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def stow(url: str, files: list[Path], token: str | None) -> float:
    """One STOW-RS request of every file; seconds until the response, raises unless 200."""
    headers = {"content-type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    started = time.perf_counter()
    response = httpx.post(url, content=body(files), headers=headers, timeout=600)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"STOW-RS to {url}: HTTP {response.status_code} {response.text[:500]}")
    stored = response.json().get("00081199", {}).get("Value", [])
    if len(stored) != len(files):
        raise RuntimeError(f"STOW-RS to {url}: {len(stored)} of {len(files)} stored")
    return elapsed


@contextmanager
def node(workdir: Path) -> Iterator[tuple[int, str]]:
    """`lungnode serve --role receiver` (C-STORE and STOW-RS, no analysis) on a fresh store;
    yields (DICOM port, web base URL)."""
    port, web_port = free_port(), free_port()
    settings = {
        "NODE__PORT": port,
        "STORAGE__ROOT": workdir / "node",
        "STORAGE__MIN_FREE_MB": 0,
        "SECURITY__ALLOWED_CALLING_AETS": f"{CALLING_AET},DICOMWEB",
        "WEB__PORT": web_port,
        "WEB__TOKEN": WEB_TOKEN,
        "WEB__STOW_TOKEN": STOW_TOKEN,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUNGNODE__")}
    env.update({f"LUNGNODE__{k}": str(v) for k, v in settings.items()})
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    cmd = [sys.executable, "-m", "scp_node", "serve", "--role", "receiver"]
    cmd += ["-c", str(PROJECT_ROOT / "config.ini")]
    log = (workdir / "node.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=log, stderr=log)
    try:
        wait_for_port(port)
        _wait_http(f"http://127.0.0.1:{web_port}/livez")
        yield port, f"http://127.0.0.1:{web_port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


@contextmanager
def orthanc(workdir: Path) -> Iterator[str]:
    """Orthanc with its DICOMweb plugin and a fresh storage; yields its base URL."""
    web = {"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with orthanc_ports(workdir, [str(DICOMWEB_PLUGIN)], web) as (_, http_port):
        yield f"http://127.0.0.1:{http_port}"


def run_peer(peer: str, work: Path, files: list[Path]) -> float:
    """Seconds `peer` takes to store `files` (fresh peer, empty store)."""
    if peer == "orthanc-stow":
        with orthanc(work) as url:
            return stow(f"{url}/dicom-web/studies", files, None)
    with node(work) as (port, url):
        if peer == "node-stow":
            return stow(f"{url}/dicom-web/studies", files, STOW_TOKEN)
        return send(files, port, "LUNGNODE")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each slice")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "lungnode-bench"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.slices < 1 or args.size < 8:
        parser.error("--rounds and --slices must be at least 1 and --size at least 8")
    if shutil.which("storescu") is None:
        parser.error("storescu not found: install the Debian package dcmtk")
    if not Path(ORTHANC).exists() or not DICOMWEB_PLUGIN.exists():
        parser.error(f"{ORTHANC} or {DICOMWEB_PLUGIN} not found: install orthanc-dicomweb")

    files = generate_series(args.cache / f"ct-{args.slices}x{args.size}", args.slices, args.size)
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    print(
        f"series: {len(files)} instances, {total_mb:.1f} MB; STOW-RS: one request, C-STORE: "
        f"one association; {args.rounds} rounds, peers interleaved",
        flush=True,
    )
    seconds: dict[str, list[float]] = {p: [] for p in PEERS}
    for round_no in range(1, args.rounds + 1):
        for peer in PEERS:
            with tempfile.TemporaryDirectory(prefix=f"stow-{peer}-", dir=args.cache) as tmp:
                elapsed = run_peer(peer, Path(tmp), files)
            seconds[peer].append(elapsed)
            print(
                f"round {round_no} {peer:13s} {elapsed:6.2f} s  {total_mb / elapsed:7.1f} MB/s",
                flush=True,
            )
    print()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"{'peer':13s} {'median s':>9s} {'min-max s':>13s} {'MB/s':>8s} {'inst/s':>8s}")
    rate: dict[str, float] = {}
    for peer in PEERS:
        median = statistics.median(seconds[peer])
        rate[peer] = total_mb / median
        spread = f"{min(seconds[peer]):.2f}-{max(seconds[peer]):.2f}"
        print(
            f"{peer:13s} {median:9.2f} {spread:>13s} {rate[peer]:8.1f} {len(files) / median:8.1f}"
        )
    for other in ("node-cstore", "orthanc-stow"):
        print(f"node-stow / {other}: {rate['node-stow'] / rate[other]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
