"""Throughput of [pipeline] analysis_processes: N queued studies analysed by 1 and by 2 analysis
processes (scp_node.pipeline.analysis_pool) on a real store and SQLite index, in the same run.

The studies are generated once (PET/CT phantoms), received into a fresh store for each setting;
the processes are started and have loaded the model before the studies are queued, so the time
is analysis, encoding and the index's bookkeeping only.

    .venv/bin/python bench/analysis_parallel.py [--studies 4] [--ct-slices 300] [--ct-size 512]
                                                 [--processes 1 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import pydicom  # noqa: E402

from scp_node.config import DEFAULT_CONFIG, load_config  # noqa: E402
from scp_node.pipeline.analysis_pool import AnalysisPool  # noqa: E402
from storage.database import Database  # noqa: E402
from storage.index import Index, InstanceRecord  # noqa: E402
from storage.instance_store import InstanceStore  # noqa: E402


def _write_studies(folder: Path, count: int, ct_size: int, ct_slices: int) -> None:
    from classifier.datasets.phantom import generate_study

    for n in range(count):
        study = generate_study(
            seed=3000 + n,
            histology="GABE"[n % 4],
            ct_size=ct_size,
            ct_slices=ct_slices,
            slice_thickness_mm=1.0 * 300 / ct_slices,
            pet=True,
            pet_size=192,
            pet_slices=250,
            n_lesions=2,
        )
        target = folder / f"study{n}"
        target.mkdir(parents=True)
        for ds in study.ct + study.pet:
            ds.save_as(target / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)


def _receive(store: InstanceStore, index: Index, folder: Path) -> str:
    uid = ""
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        temp = store.temp_path()
        temp.write_bytes(path.read_bytes())
        stored, _ = store.commit(temp, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        index.record_instance(
            InstanceRecord(
                ds.StudyInstanceUID,
                ds.SeriesInstanceUID,
                ds.SOPInstanceUID,
                ds.SOPClassUID,
                ds.Modality,
                stored,
                "PACS",
                time.time(),
            )
        )
        uid = str(ds.StudyInstanceUID)
    return uid


def run(studies: Path, processes: int, work: Path) -> dict[str, float]:
    root = work / f"store-{processes}"
    env = {
        "LUNGNODE__STORAGE__ROOT": str(root),
        "LUNGNODE__PIPELINE__ANALYSIS_PROCESSES": str(processes),
        "LUNGNODE__PIPELINE__TICK_SECONDS": "0.2",
        "LUNGNODE__DESTINATIONS__PACS": "PACS@127.0.0.1:9",
    }
    config = load_config(DEFAULT_CONFIG, environ=env)
    store = InstanceStore(config.storage.root, 0)
    index = Index(Database.connect(config.storage.database_url))
    uids = {_receive(store, index, folder) for folder in sorted(studies.iterdir())}
    pool = AnalysisPool(config, index, processes)
    started = time.perf_counter()
    pool.start()
    loaded = time.perf_counter()
    try:
        index.mark_ready(time.time() + 3600, config.pipeline.study_quiet_seconds)
        queued = time.perf_counter()
        while True:
            states = {r["study_uid"]: r["state"] for r in index.status()["studies"]}
            if all(states.get(u) in ("REPORTED", "FAILED") for u in uids):
                break
            time.sleep(0.1)
        done = time.perf_counter()
    finally:
        pool.stop(drain_seconds=10)
    failed = sum(states[u] != "REPORTED" for u in uids)
    elapsed = done - queued
    return {
        "processes": processes,
        "studies": len(uids),
        "failed": failed,
        "model_load_s": round(loaded - started, 2),
        "elapsed_s": round(elapsed, 2),
        "studies_per_min": round(60 * len(uids) / elapsed, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--ct-slices", type=int, default=300)
    parser.add_argument("--ct-size", type=int, default=512)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lungnode-parallel-") as tmp:
        work = Path(tmp)
        studies = work / "studies"
        studies.mkdir()
        child = multiprocessing.get_context("spawn").Process(
            target=_write_studies, args=(studies, args.studies, args.ct_size, args.ct_slices)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit("generating the studies failed")
        runs = []
        for n in args.processes:
            figures = run(studies, n, work)
            runs.append(figures)
            print(json.dumps(figures))
    base = runs[0]["studies_per_min"]
    for figures in runs[1:]:
        print(
            f"{figures['processes']} processes: {figures['studies_per_min'] / base:.2f}x the "
            f"throughput of {runs[0]['processes']} (cores: {os.cpu_count()}, load before: "
            f"{os.getloadavg()[0]:.1f})"
        )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
