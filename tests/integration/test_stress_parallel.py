"""The stress test in worker processes (`run_stress(workers=2)`, `--workers`): the same
tumours, rows, summary, report and pictures as the serial run, in the same order."""

from __future__ import annotations

import json
import re
from pathlib import Path

from classifier.model.stress import REPORT_MD, SUMMARY_JSON, run_stress
from scp_node.app.cli import build_parser

TESTS = Path(__file__).resolve().parents[1]
APPROXIMATE = TESTS / "data" / "annotations-approximate"
PATIENTS = ["Lung_Dx-A0002", "Lung_Dx-E0002"]  # two small studies, one per worker
POSITIONS = ("posterior", "hilum")


def test_two_workers_give_the_serial_run(tmp_path: Path, lung_pet_ct_dx: Path) -> None:
    annotations = [lung_pet_ct_dx / "Annotation", APPROXIMATE]
    outs = {workers: tmp_path / f"workers-{workers}" for workers in (1, 2)}
    lines: dict[int, list[str]] = {1: [], 2: []}
    summaries = {
        workers: run_stress(
            lung_pet_ct_dx,
            annotations,
            out,
            per_position=1,
            positions=POSITIONS,
            patients=PATIENTS,
            progress=lines[workers].append,
            workers=workers,
        )
        for workers, out in outs.items()
    }
    serial, parallel = summaries[1], summaries[2]
    assert [s["scan_id"] for s in parallel["studies"]] == PATIENTS
    assert len(parallel["insertions"]) == len(PATIENTS) * len(POSITIONS)
    serial.pop("elapsed_s"), parallel.pop("elapsed_s")
    assert parallel == serial
    assert lines[2] == lines[1] and len(lines[1]) == len(parallel["insertions"])
    written = [json.loads((out / SUMMARY_JSON).read_text()) for out in outs.values()]
    for summary in written:
        summary.pop("elapsed_s")
    assert written[1] == written[0] == serial
    # The reports differ only in the run's duration.
    reports = [
        re.sub(r"; \d+ s\.", "; N s.", (out / REPORT_MD).read_text()) for out in outs.values()
    ]
    assert reports[1] == reports[0] and "; N s." in reports[0]
    for position in POSITIONS:
        name = f"stress-{position}.png"
        assert (outs[2] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_workers_on_the_command_line() -> None:
    args = build_parser().parse_args(["stress-test", "--data", "d", "--out", "o"])
    assert args.workers == 1
    args = build_parser().parse_args(["stress-test", "--data", "d", "--out", "o", "--workers", "2"])
    assert args.workers == 2
