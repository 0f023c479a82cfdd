"""Ingest benchmark: one CT series sent by DCMTK storescu over ONE association to storescp,
Orthanc and the node as users run it.

The node is `lungnode serve` on the shipped config.ini (only ports, AE titles and folders
changed; bench/served_node.py), started once and sent a fresh study (new UIDs, so nothing is a
duplicate) each round, with its own analysis of every study it receives. `node` is timed on an
idle node (--analysis wait: the analysis of the studies before finished; run: it may still run);
`node-busy` while its worker analyses other studies (--background of them, sent just before,
untimed; the share of the send during which one was analysed is printed). storescp and Orthanc
start fresh with an empty store each round. Peers are interleaved, so load on the machine hits
all alike; printed are the medians of the rounds (at least 5 for a figure) with their spread,
and the node's throughput as a ratio to storescp, to Orthanc and busy to idle.

Diagnosis flags: --peers node-noyield,node-busy-noyield (likewise -nice0, -nice19) adds a
second node with that setting changed (analysis never paused while receiving; analysis_nice).
--peers harness[,harness-polling,harness-noearlysync,harness-nofsync] adds the
node's receive path alone (bench/node_receiver.py: Receiver, InstanceStore, SQLite index, no
scheduler or worker), with the time of each part of the C-STORE handler.

Usage: python bench/ingest.py [--rounds 5] [--slices 300] [--size 512] [--analysis wait|run]
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
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom import dcmread

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "bench")]

from served_node import ServedNode, free_port, stop_served_nodes_on_sigterm  # noqa: E402

ORTHANC = "/usr/sbin/Orthanc"
UID_ROOT = "1.2.826.0.1.3680043.8.498.4242"
PEER_MAX_PDU = 131072  # what storescu sends to the node too (DCMTK's largest PDU)
CALLING_AET = "BENCH"


# Diagnosis: the node's receive path alone (bench/node_receiver.py) and the flags each
# variant runs it with.
# Diagnosis: `lungnode serve` with a setting changed (peers node<suffix>, node-busy<suffix>).
SERVED_VARIANTS: dict[str, dict[str, str]] = {
    "": {},
    "-nice0": {"pipeline__analysis_nice": "0"},
    "-nice19": {"pipeline__analysis_nice": "19"},
    "-noyield": {"pipeline__analysis_share_while_receiving": "1"},  # never paused
}
HARNESS_VARIANTS: dict[str, tuple[str, ...]] = {
    "harness": (),
    "harness-polling": ("--pynetdicom-polling",),
    "harness-noearlysync": ("--without-early-sync",),
    "harness-nofsync": ("--diagnose-without-fsync",),
}


def dcmtk_env() -> dict[str, str]:
    """Debian's DCMTK and Orthanc need TCP_NODELAY=1, else each instance waits ~40 ms."""
    return {**os.environ, "TCP_NODELAY": "1"}


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
    """Write (once) a deterministic chest CT of `slices` slices of size x size 16-bit pixels:
    the phantom of classifier.datasets (lungs, a lesion), so that the node's analysis of it
    runs whole (lung mask, candidates, the CNN) as it would on a patient's CT."""
    from classifier.datasets.phantom import generate_study

    marker = folder / "complete"
    files = [folder / f"ct-{i:04d}.dcm" for i in range(slices)]
    if marker.exists() and all(f.exists() for f in files):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_study(
        seed=20240501,
        histology="A",
        ct_size=size,
        ct_slices=slices,
        slice_thickness_mm=max(0.5, min(5.0, 300.0 / slices)),
        pet=False,
    )
    for ds, path in zip(study.ct, files, strict=True):
        ds.save_as(path, enforce_file_format=True)
    marker.touch()
    return files


def fresh_series(cache: Path, slices: int, size: int) -> tuple[str, list[Path]]:
    """A new study (UIDs never sent before, the pixels of generate_series) in a folder of
    `cache`: its Study Instance UID and files; remove the folder with
    shutil.rmtree(files[0].parent) when sent."""
    base = generate_series(cache / f"ct-{slices}x{size}", slices, size)
    fresh_series.made += 1  # type: ignore[attr-defined]
    number = f"{fresh_series.made}{os.getpid()}{int(time.time()) % 100000}"  # type: ignore[attr-defined]
    study_uid = f"{UID_ROOT}.{slices}.{size}.{number}"
    series_uid, frame_uid = f"{study_uid}.1", f"{study_uid}.2"
    folder = cache / f"fresh-{number}"
    folder.mkdir(parents=True)
    files = []
    for i, source in enumerate(base):
        ds = dcmread(source)
        sop_uid = f"{series_uid}.{i + 1}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
            study_uid,
            series_uid,
            sop_uid,
        )
        ds.FrameOfReferenceUID = frame_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        path = folder / source.name
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return study_uid, files


fresh_series.made = 0  # type: ignore[attr-defined]


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
def orthanc_ports(
    workdir: Path, plugins: Sequence[str] = (), extra: Mapping[str, Any] | None = None
) -> Iterator[tuple[int, int]]:
    """Orthanc 1.10 from Debian with its own config, storage and index in `workdir`, the
    given plugins and config keys; yields its DICOM and HTTP ports once both answer."""
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
        "Plugins": list(plugins),
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "MaximumPduLength": PEER_MAX_PDU,
        "StorageCompression": False,
        **(extra or {}),
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config))
    log = (workdir / "orthanc.log").open("wb")
    proc = subprocess.Popen([ORTHANC, str(path)], env=dcmtk_env(), stdout=log, stderr=log)
    try:
        wait_for_port(dicom_port)
        _wait_http(f"http://127.0.0.1:{http_port}/system")
        yield dicom_port, http_port
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


@contextmanager
def orthanc(workdir: Path) -> Iterator[tuple[int, str]]:
    """Orthanc with no plugins; yields its DICOM port and AE title."""
    with orthanc_ports(workdir) as (dicom_port, _):
        yield dicom_port, "ORTHANC"


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


def spread(values: list[float]) -> str:
    """The spread of `values` as min-max and the relative range around the median."""
    median = statistics.median(values)
    return f"{min(values):.2f}-{max(values):.2f} (+-{(max(values) - min(values)) / 2 / median:.0%})"


def send_while_analysing(
    served: ServedNode, cache: Path, slices: int, size: int, background: int
) -> tuple[float, float, dict[str, float], dict[str, float]]:
    """Keep the node's worker busy with `background` fresh studies (sent at once, untimed),
    then time a fresh study sent while they are analysed; returns (seconds, fraction of those
    seconds during which a study was being analysed, the node's CPU seconds by role before
    and after the send)."""
    _, files = fresh_series(cache, slices, size)  # made first: the analyses run meanwhile
    studies = [fresh_series(cache, slices, size) for _ in range(background)]
    with ThreadPoolExecutor(background) as pool:
        list(pool.map(lambda s: send(s[1], served.port, "LUNGNODE"), studies))
    served.wait_for(studies[0][0], frozenset({"ANALYZING", "REPORTED", "DELIVERED", "FAILED"}))
    busy: list[bool] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            busy.append("ANALYZING" in served.states().values())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        cpu_before = served.cpu_seconds()
        elapsed = send(files, served.port, "LUNGNODE")
        cpu_after = served.cpu_seconds()
    finally:
        done.set()
        watcher.join()
        for _, sent in [*studies, ("", files)]:
            shutil.rmtree(sent[0].parent, ignore_errors=True)
    return elapsed, (sum(busy) / len(busy) if busy else 0.0), cpu_before, cpu_after


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="at least 5 for a figure")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each slice")
    parser.add_argument(
        "--peers",
        default="storescp,orthanc,node,node-busy",
        help="comma-separated: storescp, orthanc, node (lungnode serve, idle), node-busy (the "
        "same node while its worker analyses other studies), and the diagnosis harnesses "
        + ", ".join(HARNESS_VARIANTS),
    )
    parser.add_argument(
        "--analysis",
        choices=("wait", "run"),
        default="wait",
        help="wait: before each node round, the node's analysis of the studies sent before "
        "finishes (an idle node); run: the next study is sent while it may still run",
    )
    parser.add_argument(
        "--background", type=int, default=2, help="studies the worker analyses for node-busy"
    )
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "lungnode-bench"
    )
    parser.add_argument("--profile", type=Path, help="cProfile of the harness's last round")
    args = parser.parse_args(argv)
    stop_served_nodes_on_sigterm()
    if args.rounds < 1 or args.slices < 1 or args.size < 8 or args.background < 1:
        parser.error("--rounds, --slices, --background must be at least 1, --size at least 8")
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found: install the Debian package dcmtk")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    served_peers = {f"node{b}{v}" for b in ("", "-busy") for v in SERVED_VARIANTS}
    unknown = set(peers) - {"storescp", "orthanc", *served_peers, *HARNESS_VARIANTS}
    if unknown:
        parser.error(
            f"--peers {args.peers!r}: unknown {sorted(unknown)}; use storescp, orthanc, node, "
            "node-busy, node-nice0 and node-busy-nice0 (a second node with [pipeline] "
            "analysis_nice = 0; -nice19 likewise), node-noyield and node-busy-noyield (a node "
            "whose analysis is never paused while receiving: [pipeline] "
            "analysis_share_while_receiving = 1), harness (the receive path alone, "
            "bench/node_receiver.py), "
            "harness-polling (with pynetdicom's own 1 ms idle sleeps), harness-noearlysync (no "
            "data sync while the header is read), harness-nofsync (a diagnosis: without its "
            "fsyncs, to see what durability costs)"
        )
    if "orthanc" in peers and not Path(ORTHANC).exists():
        parser.error(f"{ORTHANC} not found: install the Debian package orthanc")

    args.cache.mkdir(parents=True, exist_ok=True)
    files = generate_series(args.cache / f"ct-{args.slices}x{args.size}", args.slices, args.size)
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    print(
        f"series: {len(files)} instances, {total_mb:.1f} MB; one association per send; "
        f"{args.rounds} rounds, peers interleaved; max PDU {PEER_MAX_PDU}; node: lungnode serve "
        f"on the shipped config.ini, a fresh study (new UIDs) each send, analysis={args.analysis}"
        f"; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if args.rounds < 5:
        print(f"{args.rounds} rounds: a smoke run, not a figure (use 5 or more)", flush=True)

    seconds: dict[str, list[float]] = {p: [] for p in peers}
    cpu: dict[str, list[dict[str, float]]] = {p: [] for p in peers}  # node peers, by role
    busy_fraction: list[float] = []
    breakdowns: dict[str, list[dict[str, float]]] = {}  # harness variant -> one per round
    with tempfile.TemporaryDirectory(prefix="bench-served-", dir=args.cache) as served_dir:
        served_nodes: dict[str, ServedNode] = {}
        try:
            for variant, settings in SERVED_VARIANTS.items():
                if not {f"node{variant}", f"node-busy{variant}"} & set(peers):
                    continue
                made = ServedNode(
                    Path(served_dir) / (variant or "node"), CALLING_AET, settings=settings
                )
                served_nodes[variant] = made
                receivers = made.receiver_rss_mib()
                print(
                    f"node{variant}: {len(receivers)} receiver processes, RSS "
                    f"{', '.join(f'{r:.0f}' for r in receivers)} MiB; serve process "
                    f"{made.rss_mib():.0f} MiB; analysis processes "
                    f"{', '.join(f'{r:.0f}' for r in made.analysis_rss_mib())} MiB"
                    + (f"; diagnosis settings {settings}" if settings else ""),
                    flush=True,
                )
            for round_no in range(1, args.rounds + 1):
                for peer in peers:
                    note = ""
                    if args.analysis == "wait" or "-busy" in peer:
                        for served in served_nodes.values():  # no analysis slows this peer
                            served.wait_idle()
                    if peer.startswith("node"):
                        variant = peer.removeprefix("node").removeprefix("-busy")
                        served = served_nodes[variant]
                        if "-busy" not in peer:
                            _, fresh = fresh_series(args.cache, args.slices, args.size)
                            cpu_before = served.cpu_seconds()
                            elapsed = send(fresh, served.port, "LUNGNODE")
                            cpu_after = served.cpu_seconds()
                            shutil.rmtree(fresh[0].parent)
                        else:
                            elapsed, fraction, cpu_before, cpu_after = send_while_analysing(
                                served, args.cache, args.slices, args.size, args.background
                            )
                            busy_fraction.append(fraction)
                            note = f"  (a study analysed {fraction:.0%} of the time)"
                        used = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
                        cpu[peer].append(used)
                        note += "  CPU s during the send: " + ", ".join(
                            f"{k} {v:.2f}" for k, v in used.items()
                        )
                    else:
                        elapsed = _one_fresh_peer(peer, args, files, round_no, breakdowns)
                    seconds[peer].append(elapsed)
                    print(
                        f"round {round_no} {peer:19s} {elapsed:6.2f} s  "
                        f"{total_mb / elapsed:7.1f} MB/s{note}",
                        flush=True,
                    )
        finally:
            for served in served_nodes.values():
                served.stop()

    print()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"{'peer':19s} {'median s':>9s} {'MB/s':>8s} {'inst/s':>8s}  spread of the rounds (s)")
    rate: dict[str, float] = {}
    for peer in peers:
        median = statistics.median(seconds[peer])
        rate[peer] = total_mb / median
        print(
            f"{peer:19s} {median:9.2f} {rate[peer]:8.1f} {len(files) / median:8.1f}  "
            f"{spread(seconds[peer])}"
        )
    parts = ("handler", "header", "commit", "index", "between_handlers")
    for variant, rounds in breakdowns.items():
        median = {p: statistics.median(b[p] for b in rounds) for p in parts}
        print(
            f"{variant} ms per instance (median of rounds): C-STORE handler {{handler:.1f}} = "
            "header from the file {header:.1f} (0 when read while streaming) + store commit "
            "{commit:.1f} + index {index:.1f} + rest; "
            "between handlers (network, pynetdicom, peer) {between_handlers:.1f}".format(**median)
        )
    for peer in peers:
        if cpu[peer]:
            roles = cpu[peer][0].keys()
            print(
                f"{peer} CPU s during the send (median of rounds): "
                + ", ".join(f"{r} {statistics.median(c[r] for c in cpu[peer]):.2f}" for r in roles)
            )
    if busy_fraction:
        print(
            f"node-busy: a study was analysed {statistics.median(busy_fraction):.0%} of each "
            "send (median)"
        )
    if "node" in rate:
        for other in ("storescp", "orthanc", *HARNESS_VARIANTS):
            if other in rate:
                print(f"node / {other}: {rate['node'] / rate[other]:.2f}x")
        if "node-busy" in rate:
            print(f"node-busy / node: {rate['node-busy'] / rate['node']:.2f}x")
    for variant in SERVED_VARIANTS:
        if variant and f"node-busy{variant}" in rate and f"node{variant}" in rate:
            ratio = rate[f"node-busy{variant}"] / rate[f"node{variant}"]
            print(f"node-busy{variant} / node{variant}: {ratio:.2f}x")
    return 0


def _one_fresh_peer(
    peer: str,
    args: argparse.Namespace,
    files: list[Path],
    round_no: int,
    breakdowns: dict[str, list[dict[str, float]]],
) -> float:
    """One send to a peer started fresh for it with an empty store: storescp, Orthanc, or a
    harness of the node's receive path."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{peer}-", dir=args.cache) as tmp:
        work = Path(tmp)
        if peer == "storescp":
            server = storescp(work)
        elif peer == "orthanc":
            server = orthanc(work)
        else:
            last = round_no == args.rounds
            profile = args.profile if last and peer == "harness" else None
            server = node(work, profile, work / "timings.json", *HARNESS_VARIANTS[peer])
        with server as (port, called_ae):
            elapsed = send(files, port, called_ae)
        if peer in HARNESS_VARIANTS:
            breakdowns.setdefault(peer, []).append(json.loads((work / "timings.json").read_text()))
    return elapsed


if __name__ == "__main__":
    raise SystemExit(main())
