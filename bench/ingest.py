"""Ingest benchmark: one CT series sent by DCMTK storescu to storescp, Orthanc and the node.

The series (default 300 slices of 512x512 16-bit, about 150 MB) is generated once,
deterministically, with pydicom. Each round sends it over ONE association to each peer in turn
(interleaved, so load on the machine hits all peers alike); every peer starts fresh each round
with an empty store, so nobody answers from a duplicate. Printed: MB/s and instances/s per peer,
and the node's throughput as a ratio to storescp and to Orthanc. The node runs with its real
InstanceStore (fsync of file and folder) and SQLite Index.

Usage: python bench/ingest.py [--rounds 3] [--slices 300] [--size 512] [--profile FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ORTHANC = "/usr/sbin/Orthanc"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
UID_ROOT = "1.2.826.0.1.3680043.8.498.4242"
PEER_MAX_PDU = 131072  # what storescu sends to the node too (DCMTK's largest PDU)
CALLING_AET = "BENCH"


# The node and its diagnostic variants: the flags of bench/node_receiver.py each one runs with.
NODE_VARIANTS: dict[str, tuple[str, ...]] = {
    "node": (),
    "node-polling": ("--pynetdicom-polling",),
    "node-noearlysync": ("--without-early-sync",),
    "node-nofsync": ("--diagnose-without-fsync",),
}


def dcmtk_env() -> dict[str, str]:
    """Debian's DCMTK and Orthanc need TCP_NODELAY=1, else each instance waits ~40 ms."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A loopback TCP port that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    """Block until something listens on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def generate_series(folder: Path, slices: int, size: int) -> list[Path]:
    """Write (once) a deterministic CT series of `slices` slices of size x size 16-bit pixels."""
    marker = folder / "complete"
    files = [folder / f"ct-{i:04d}.dcm" for i in range(slices)]
    if marker.exists() and all(f.exists() for f in files):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240501)
    base = rng.integers(0, 1400, size=(size, size), dtype=np.uint16)
    study_uid, series_uid = f"{UID_ROOT}.{slices}.{size}", f"{UID_ROOT}.{slices}.{size}.1"
    for i, path in enumerate(files):
        sop_uid = f"{series_uid}.{i + 1}"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientName, ds.PatientID = "Bench^Ingest", "BENCH-1"
        ds.Modality, ds.InstanceNumber = "CT", i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.roll(base, i, axis=0).tobytes()
        ds.save_as(path, enforce_file_format=True)
    marker.touch()
    return files


def send(files: list[Path], port: int, called_ae: str) -> float:
    """storescu over one association; returns seconds, raises when any instance failed."""
    cmd = ["storescu", "-aet", CALLING_AET, "-aec", called_ae, "-pdu", str(PEER_MAX_PDU)]
    cmd += ["127.0.0.1", str(port), *map(str, files)]
    started = time.perf_counter()
    result = subprocess.run(cmd, env=dcmtk_env(), capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or "E:" in result.stderr:
        raise RuntimeError(
            f"storescu to {called_ae} failed (exit {result.returncode}): "
            f"{result.stderr[-2000:]}{result.stdout[-2000:]}"
        )
    return elapsed


@contextmanager
def storescp(workdir: Path) -> Iterator[tuple[int, str]]:
    """DCMTK storescp writing to `workdir` (no fsync: DCMTK's default)."""
    port = free_port()
    out = workdir / "storescp"
    out.mkdir(parents=True)
    cmd = ["storescp", "-aet", "STORESCP", "-pdu", str(PEER_MAX_PDU), "-od", str(out), str(port)]
    proc = subprocess.Popen(cmd, env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        yield port, "STORESCP"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def orthanc(workdir: Path) -> Iterator[tuple[int, str]]:
    """Orthanc 1.10 from Debian with its own config, storage and index in `workdir`, no plugins."""
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(workdir / "orthanc"),
        "IndexDirectory": str(workdir / "orthanc"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "MaximumPduLength": PEER_MAX_PDU,
        "StorageCompression": False,
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config))
    log = (workdir / "orthanc.log").open("wb")
    proc = subprocess.Popen([ORTHANC, str(path)], env=dcmtk_env(), stdout=log, stderr=log)
    try:
        wait_for_port(dicom_port)
        _wait_http(f"http://127.0.0.1:{http_port}/system")
        yield dicom_port, "ORTHANC"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:g} s")


@contextmanager
def node(
    workdir: Path, profile: Path | None, timings: Path | None = None, *extra: str
) -> Iterator[tuple[int, str]]:
    """The node's receive path (bench/node_receiver.py) with a fresh store and SQLite index."""
    port = free_port()
    cmd = [sys.executable, str(PROJECT_ROOT / "bench" / "node_receiver.py")]
    cmd += ["--root", str(workdir / "node"), "--port", str(port), "--calling-aet", CALLING_AET]
    cmd += extra
    if profile is not None:
        cmd += ["--profile", str(profile)]
    if timings is not None:
        cmd += ["--timings", str(timings)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready":
            raise RuntimeError(f"node_receiver did not start (exit {proc.poll()})")
        yield port, "LUNGNODE"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each slice")
    parser.add_argument("--peers", default="storescp,orthanc,node", help="comma-separated")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "lungnode-bench"
    )
    parser.add_argument("--profile", type=Path, help="cProfile of the node's last round")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.slices < 1 or args.size < 8:
        parser.error("--rounds and --slices must be at least 1 and --size at least 8")
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found: install the Debian package dcmtk")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(peers) - {"storescp", "orthanc", *NODE_VARIANTS}
    if unknown:
        parser.error(
            f"--peers {args.peers!r}: unknown {sorted(unknown)}; use storescp, orthanc, node, "
            "node-polling (the node with pynetdicom's own 1 ms idle sleeps), node-noearlysync (no "
            "data sync while the header is read), node-nofsync (a diagnosis: the node "
            "without its fsyncs, to see what durability costs)"
        )
    if "orthanc" in peers and not Path(ORTHANC).exists():
        parser.error(f"{ORTHANC} not found: install the Debian package orthanc")

    files = generate_series(args.cache / f"ct-{args.slices}x{args.size}", args.slices, args.size)
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    print(
        f"series: {len(files)} instances, {total_mb:.1f} MB; one association per send; "
        f"{args.rounds} rounds, peers interleaved; max PDU {PEER_MAX_PDU}",
        flush=True,
    )

    seconds: dict[str, list[float]] = {p: [] for p in peers}
    breakdowns: dict[str, list[dict[str, float]]] = {}  # node variant -> one per round
    for round_no in range(1, args.rounds + 1):
        for peer in peers:
            with tempfile.TemporaryDirectory(prefix=f"bench-{peer}-", dir=args.cache) as tmp:
                work = Path(tmp)
                last = round_no == args.rounds
                if peer == "storescp":
                    server = storescp(work)
                elif peer == "orthanc":
                    server = orthanc(work)
                else:
                    profile = args.profile if last and peer == "node" else None
                    server = node(work, profile, work / "timings.json", *NODE_VARIANTS[peer])
                with server as (port, called_ae):
                    elapsed = send(files, port, called_ae)
                if peer in NODE_VARIANTS:
                    timings = json.loads((work / "timings.json").read_text())
                    breakdowns.setdefault(peer, []).append(timings)
            seconds[peer].append(elapsed)
            print(
                f"round {round_no} {peer:16s} {elapsed:6.2f} s  {total_mb / elapsed:7.1f} MB/s",
                flush=True,
            )

    print()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"{'peer':16s} {'median s':>9s} {'MB/s':>8s} {'inst/s':>8s}")
    rate: dict[str, float] = {}
    for peer in peers:
        median = statistics.median(seconds[peer])
        rate[peer] = total_mb / median
        print(f"{peer:16s} {median:9.2f} {rate[peer]:8.1f} {len(files) / median:8.1f}")
    parts = ("handler", "header", "commit", "index", "between_handlers")
    for variant, rounds in breakdowns.items():
        median = {p: statistics.median(b[p] for b in rounds) for p in parts}
        print(
            f"{variant} ms per instance (median of rounds): C-STORE handler {{handler:.1f}} = "
            "header from the file {header:.1f} (0 when read while streaming) + store commit "
            "{commit:.1f} + index {index:.1f} + rest; "
            "between handlers (network, pynetdicom, peer) {between_handlers:.1f}".format(**median)
        )
    if "node" in rate:
        for other in ("storescp", "orthanc", *NODE_VARIANTS.keys() - {"node"}):
            if other in rate:
                print(f"node / {other}: {rate['node'] / rate[other]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
