"""Turnaround benchmark: a real study sent by Orthanc, results back in Orthanc.

Orthanc (the PACS) holds the Lung-PET-CT-Dx study A0002 and C-STOREs it to the node
(`POST /modalities/lungnode/store`, one association, released at the end); the node runs
`lungnode serve --role all` with the shipped config.ini (default [pipeline]: study_quiet_seconds
10, release_quiet_seconds 2, tick_seconds 1), results routed back to the sender. The clock
starts when Orthanc starts sending; the study's timeline (the node's events) gives the rest:

    transfer                  Orthanc's store call, first byte to association released
    wait for completion       transfer end -> study READY
    queue                     READY -> analysis started (claim by the worker)
    analysis                  analysis_started -> analysis_done
    encoding                  analysis_done -> results written (SR, SEG, GSPS, SC, KO)
    delivery                  results written -> last result accepted by Orthanc (outbox)

Goal (issue 13): the last result accepted at most analysis + 3 s after the transfer ends.

Usage: python bench/turnaround.py [--rounds 2] [--study DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from ingest import ORTHANC, dcmtk_env, free_port, wait_for_port  # noqa: E402

from storage.index import open_index  # noqa: E402

DEFAULT_STUDY = (
    PROJECT_ROOT.parent / "shared" / "data" / "lung-pet-ct-dx" / "Lung-PET-CT-Dx" / "Lung_Dx-A0002"
)
STAGES = ("transfer", "wait_for_completion", "queue", "analysis", "encoding", "delivery")


def _http(url: str, data: Any = None, timeout: float = 600.0) -> Any:
    body = (
        None if data is None else (data if isinstance(data, bytes) else json.dumps(data).encode())
    )
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


class Pacs:
    """Orthanc with the node declared as modality `lungnode`."""

    def __init__(self, workdir: Path, node_port: int) -> None:
        self.dicom_port, self.http_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": "turnaround",
            "StorageDirectory": str(workdir / "orthanc"),
            "IndexDirectory": str(workdir / "orthanc"),
            "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "DicomModalities": {"lungnode": ["LUNGNODE", "127.0.0.1", node_port]},
        }
        path = workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        self._log = (workdir / "orthanc.log").open("wb")
        self._proc = subprocess.Popen(
            [ORTHANC, str(path)], env=dcmtk_env(), stdout=self._log, stderr=self._log
        )
        wait_for_port(self.dicom_port)
        deadline = time.monotonic() + 60
        while True:
            try:
                _http(f"{self.url}/system", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=60)
        self._log.close()


class Node:
    """`lungnode serve --role all` with config.ini's defaults, results to the sender (Orthanc)."""

    def __init__(self, workdir: Path, port: int, pacs_port: int) -> None:
        self.root = workdir / "store"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUNGNODE__")}
        env.update(
            {
                "LUNGNODE__NODE__PORT": str(port),
                "LUNGNODE__STORAGE__ROOT": str(self.root),
                "LUNGNODE__STORAGE__MIN_FREE_MB": "1",
                "LUNGNODE__DESTINATIONS__PACS": f"ORTHANC@127.0.0.1:{pacs_port}",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONPATH": str(PROJECT_ROOT),
            }
        )
        self._log = (workdir / "node.log").open("wb")
        cmd = [sys.executable, "-m", "scp_node", "serve", "-c", str(PROJECT_ROOT / "config.ini")]
        # cwd: `python -m` puts the working folder first on sys.path, before PYTHONPATH
        self._proc = subprocess.Popen(
            cmd, env=env, cwd=PROJECT_ROOT, stdout=self._log, stderr=self._log
        )
        wait_for_port(port, timeout=300)  # listens once the model is loaded

    def timeline(self, study_uid: str) -> list[dict[str, Any]]:
        index = open_index(f"sqlite:///{self.root / 'index.sqlite'}")
        try:
            return index.events.of_study(study_uid)
        finally:
            index.close()

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=60)
        self._log.close()


def one_round(workdir: Path, files: list[Path], timeout: float) -> dict[str, float]:
    node_port = free_port()
    pacs = Pacs(workdir, node_port)
    node = None
    try:
        for path in files:
            _http(f"{pacs.url}/instances", path.read_bytes())
        (study_id,) = _http(f"{pacs.url}/studies")
        study_uid = _http(f"{pacs.url}/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"]
        node = Node(workdir, node_port, pacs.dicom_port)
        before = len(_http(f"{pacs.url}/studies/{study_id}/instances"))
        started = time.time()
        _http(
            f"{pacs.url}/modalities/lungnode/store",
            {"Resources": [study_id], "Synchronous": True},
        )
        transferred = time.time()
        deadline = time.monotonic() + timeout
        while True:
            events = node.timeline(study_uid)
            if any(e["kind"] == "delivered" for e in events):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no delivery within {timeout} s; see {workdir}/node.log")
            time.sleep(0.1)
        in_pacs = len(_http(f"{pacs.url}/studies/{study_id}/instances")) - before
    finally:
        if node is not None:
            node.stop()
        pacs.stop()
    at = {e["kind"]: e["at"] for e in events}  # the first version's, one of each
    sent = [e["at"] for e in events if e["kind"] == "sent"]
    figures = {
        "transfer": transferred - started,
        "wait_for_completion": at["ready"] - transferred,
        "queue": at["analysis_started"] - at["ready"],
        "analysis": at["analysis_done"] - at["analysis_started"],
        "encoding": at["encoded"] - at["analysis_done"],
        "delivery": max(sent) - at["encoded"],
        "after_transfer": max(sent) - transferred,
        "results_in_pacs": float(in_pacs),
    }
    figures["over_analysis"] = figures["after_transfer"] - figures["analysis"]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--study", type=Path, default=DEFAULT_STUDY)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    files = sorted(args.study.rglob("*.dcm"))
    if not files:
        parser.error(f"no .dcm files under {args.study}")
    if not Path(ORTHANC).exists():
        parser.error(f"{ORTHANC} not found: install the Debian package orthanc")
    print(f"study: {args.study.name}, {len(files)} instances; load {os.getloadavg()}", flush=True)
    rounds = []
    for number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="turnaround-") as tmp:
            figures = one_round(Path(tmp), files, args.timeout)
        rounds.append(figures)
        print(
            f"round {number}: "
            + " ".join(f"{k}={v:.2f}" for k, v in figures.items())
            + f" load={os.getloadavg()[0]:.2f}",
            flush=True,
        )
    print()
    print(f"{'stage':22s} {'median s':>9s}")
    for key in (*STAGES, "after_transfer", "over_analysis"):
        print(f"{key:22s} {statistics.median(r[key] for r in rounds):9.2f}")
    worst = max(r["over_analysis"] for r in rounds)
    verdict = "met" if worst <= 3.0 else "NOT met"
    print(
        f"goal (results in the PACS <= analysis + 3 s after the transfer): {verdict}, worst "
        f"{worst:.2f} s over analysis"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
