"""`lungnode evaluate-detector` on the five real Lung-PET-CT-Dx patients (A0002 with TCIA's
boxes, E0001-E0004 with the project's approximate boxes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifier.model.detector_eval import FROC_PNG, REPORT_MD, SUMMARY_JSON
from scp_node.app.cli import main

TESTS = Path(__file__).resolve().parents[1]
APPROXIMATE = TESTS / "data" / "annotations-approximate"


@pytest.mark.slow
def test_evaluate_detector_on_real_patients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lung_pet_ct_dx: Path
) -> None:
    data = lung_pet_ct_dx
    out = tmp_path / "eval"
    argv = ["evaluate-detector", "--data", str(data), "--out", str(out)]
    argv += ["--annotations", str(data / "Annotation"), "--annotations", str(APPROXIMATE)]
    assert main(argv) == 0
    assert "CPM" in capsys.readouterr().out
    summary = json.loads(
        (out / SUMMARY_JSON).read_text(),
        parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"),
    )
    # The report names what the model trained on, so a reader can tell training scans: the
    # bundled lesion score was fine-tuned on three of them (its card gives held-out figures).
    assert "Lung_Dx-A0002" in summary["model"]["trained_on"]
    assert "Leave one patient out" in (out / "detector_eval.md").read_text()
    rows = {row["scan_id"]: row for row in summary["studies"]}
    assert set(rows) == {f"Lung_Dx-{p}" for p in ("A0002", "E0001", "E0002", "E0003", "E0004")}
    for row in rows.values():
        assert row["tumours"] == 1, row["scan_id"]
        # One tumour per study: each finding is its hit, an extra fragment, a finding beside
        # it (centred within the hit margin, touching none of its boxes) or an FP.
        tumour = row["per_tumour"][0]
        extra, beside = row["extra_fragments"], len(tumour["beside"])
        assert row["findings"] == row["true_positives"] + extra + beside + row["false_positives"]
        assert row["other_findings"] == beside + row["false_positives"]
        assert row["candidates_scored"] >= row["findings"]
        assert tumour["annotated"]["box_z_mm"] > 0
        assert tumour["fragments"] + beside == len(tumour["hits"])
    froc = summary["froc"]
    assert froc["n_scans"] == 5 and froc["n_lesions"] == 5
    assert 0.0 <= froc["cpm"] <= 1.0
    assert set(froc["sensitivity_at_fp_per_scan"]) == {"0.125", "0.25", "0.5", "1", "2", "4", "8"}
    for name in (REPORT_MD, FROC_PNG, *(f"{s}-findings.png" for s in rows)):
        assert (out / name).stat().st_size > 0, name
