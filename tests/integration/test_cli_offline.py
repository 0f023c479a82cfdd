"""The offline commands as a user runs them: `lungnode synth` then `lungnode predict --png`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from dicom_validators import run_dciodvfy

from classifier.datasets.tcia_dataset import scan_dataset
from classifier.model.bundled import BUNDLED_MODEL

pytestmark = pytest.mark.slow


def _lungnode(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "scp_node", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_synth_then_predict_writes_sr_seg_pictures_and_summary(tmp_path: Path) -> None:
    data = tmp_path / "phantoms"
    _lungnode(
        "synth",
        "--out",
        str(data),
        "--patients",
        "1",
        "--seed",
        "5",
        "--ct-size",
        "96",
        "--ct-slices",
        "32",
    )
    scan = scan_dataset(data)
    (patient,) = scan.patients
    assert patient.annotated, "synth wrote no annotation boxes"

    out = tmp_path / "results"
    proc = _lungnode("predict", str(data / "Lung-PET-CT-Dx"), "--out", str(out), "--png")
    written = [Path(line) for line in proc.stdout.split()]
    (study_dir,) = [p for p in out.iterdir() if p.is_dir()]
    summary = json.loads((study_dir / "result.json").read_text())
    assert summary["analysed"] and summary["pet_series_uid"]
    assert summary["lesions"], "the phantom's lesion was not found"
    assert summary["model"]["clinical_use"] is False
    # The bundled model learnt histology from phantoms: under the default
    # [results] histology = auto no object and no summary states it.
    assert "not been measured" in summary["histology_not_assessed"]
    assert all(lesion["histology"] == {} for lesion in summary["lesions"])

    srs = sorted(study_dir.glob("SR-*.dcm"))
    segs = sorted(study_dir.glob("SEG-*.dcm"))
    pngs = sorted(study_dir.glob("*.png"))
    assert len(srs) == 1 and len(segs) == 1
    assert len(pngs) == len(summary["lesions"])
    assert set(srs + segs + pngs) <= set(written)
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_dciodvfy(srs[0]) == []
    report = hd.sr.srread(srs[0])
    uids = {str(g.tracking_uid) for g in report.content.get_volumetric_roi_measurement_groups()}
    assert uids == {lesion["tracking_uid"] for lesion in summary["lesions"]}
    assert pydicom.dcmread(segs[0]).NumberOfFrames >= 1


def test_predict_on_a_folder_without_dicom_fails_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing to see")
    proc = subprocess.run(
        [sys.executable, "-m", "scp_node", "predict", str(tmp_path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "no DICOM images found" in proc.stderr


def test_evaluate_reports_froc_and_cpm_with_the_froc_picture(tmp_path: Path) -> None:
    """`lungnode evaluate` on an annotated TCIA-layout folder: the patch report and the
    detector's FROC/CPM with the same model, with the FROC curve as a picture."""
    data = tmp_path / "phantoms"
    _lungnode("synth", "--out", str(data), "--patients", "2", "--seed", "3")
    report = tmp_path / "report"
    proc = _lungnode(
        "evaluate",
        "--model",
        str(BUNDLED_MODEL),
        "--data",
        str(data),
        "--report",
        str(report),
    )
    metrics = json.loads(proc.stdout[proc.stdout.index("{") :])
    detector = metrics["detector"]
    assert 0.0 <= detector["cpm"] <= 1.0
    assert set(detector["froc"]["sensitivity_at_fp_per_scan"]) == {
        "0.125",
        "0.25",
        "0.5",
        "1",
        "2",
        "4",
        "8",
    }
    assert len(detector["studies"]) == 2
    assert (report / "detector" / "froc.png").stat().st_size > 0
    assert (report / "detector" / "detector_eval.md").is_file()
