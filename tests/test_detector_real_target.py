"""Issue 9's target on the three real Lung-PET-CT-Dx studies, with the bundled model at its
default settings (threshold, most findings per study): the tumour found as ONE finding whose
long axis is within 30 % of the annotated extent, and at most 2 other findings per study.

"One finding": exactly one finding outlines part of the tumour (its mask touches the tumour's
annotated slice boxes); a finding whose centre lies within the hit margin of a large tumour's
box but that touches none of its boxes is something beside the tumour, and counts among the
other findings (with the false positives), which a reader must dismiss all the same.

The annotated extent of a tumour is its largest per-slice box: a RECIST long axis inside it
lies between the box's longer side and its diagonal, so the finding's long axis must lie within
[0.7 x longer side, 1.3 x diagonal]. A0002 has TCIA's boxes, E0002 and E0003 the project's
approximate ones (tests/data/annotations-approximate/README.md).

A study the detector does not meet yet is marked xfail(strict=True) with the measured figures:
when it starts to pass, the mark must go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from classifier.model.detector_eval import evaluate_detector

HERE = Path(__file__).resolve().parent
APPROXIMATE = HERE / "data" / "annotations-approximate"
MAX_OTHER_FINDINGS = 2
AXIS_TOLERANCE = 0.3


@pytest.fixture(scope="module")
def rows(
    tmp_path_factory: pytest.TempPathFactory, lung_pet_ct_dx: Path
) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("target")
    data = lung_pet_ct_dx
    summary = evaluate_detector(data, [data / "Annotation", APPROXIMATE], out)
    return {row["scan_id"]: row for row in summary["studies"]}


@pytest.mark.slow
@pytest.mark.parametrize("scan_id", ["Lung_Dx-A0002", "Lung_Dx-E0002", "Lung_Dx-E0003"])
def test_tumour_is_one_finding_of_the_right_size_with_few_others(
    rows: dict[str, dict[str, Any]], scan_id: str
) -> None:
    row = rows[scan_id]
    assert row["tumours"] == 1, row
    tumour = row["per_tumour"][0]
    assert tumour["detected"], f"{scan_id}: tumour not found; {row['false_positive_findings']}"
    assert tumour["fragments"] == 1, f"{scan_id}: tumour in {tumour['fragments']} findings"
    axis = tumour["best_finding_long_axis_mm"]
    annotated = tumour["annotated"]
    low = (1 - AXIS_TOLERANCE) * annotated["largest_slice_box_long_side_mm"]
    high = (1 + AXIS_TOLERANCE) * annotated["largest_slice_box_diagonal_mm"]
    assert low <= axis <= high, f"{scan_id}: long axis {axis} mm, annotated {annotated}"
    others = row["false_positive_findings"] + tumour["beside"]
    assert row["other_findings"] <= MAX_OTHER_FINDINGS, others
