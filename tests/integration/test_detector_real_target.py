"""Issue 16's target on the five real Lung-PET-CT-Dx studies, with the bundled model at its
default settings (threshold, most findings per study): the tumour found as ONE finding whose
long axis is within 30 % of the annotated extent, at most 2 other findings per study, and no
finding above the lungs' apex.

"One finding": exactly one finding outlines part of the tumour (its mask touches the tumour's
annotated slice boxes); a finding whose centre lies within the hit margin of a large tumour's
box but that touches none of its boxes is something beside the tumour, and counts among the
other findings (with the false positives), which a reader must dismiss all the same.

The annotated extent of a tumour is its largest per-slice box: a RECIST long axis inside it
lies between the box's longer side and its diagonal, so the finding's long axis must lie within
[0.7 x longer side, 1.3 x diagonal]. A0002 has TCIA's boxes, E0001-E0004 the project's
approximate ones (tests/data/annotations-approximate/README.md). E0001 and E0004 were never
seen by the detector before issue 16 (their held-out baseline is in the model card).

"Above the apex": a finding with a voxel on a slice cranial of the most cranial slice that
holds aerated lung (the lung mask's labels).

A study the detector does not meet yet is marked xfail(strict=True) with the measured figures:
when it starts to pass, the mark must go.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from classifier.model.detector_eval import StudyEvaluation, study_row
from classifier.model.real_ct_protocol import above_apex, apex_slice, judged
from classifier.settings import AnalysisSettings

TESTS = Path(__file__).resolve().parents[1]
APPROXIMATE = TESTS / "data" / "annotations-approximate"
MAX_OTHER_FINDINGS = 2
AXIS_TOLERANCE = 0.3
PATIENTS = ["Lung_Dx-A0002", "Lung_Dx-E0001", "Lung_Dx-E0002", "Lung_Dx-E0003", "Lung_Dx-E0004"]
# Not met yet, with the figures measured at the defaults (see the model card's real-CT table):
# none since the airway and vessel rules (E0003's hilar vessels: 3 other findings before).
NOT_MET: dict[str, str] = {}


@pytest.fixture(scope="module")
def studies(lung_pet_ct_dx: Path) -> dict[str, tuple[StudyEvaluation, dict[str, Any]]]:
    from classifier.model.detector_eval import _annotations_by_patient, evaluate_study_folder
    from classifier.model.inference import LesionClassifier

    data = lung_pet_ct_dx
    annotated, folders, _ = _annotations_by_patient(data, [data / "Annotation", APPROXIMATE])
    settings = AnalysisSettings()
    # Every candidate scored (as evaluate-detector does); the rows are as the node reports.
    scoring = dataclasses.replace(
        settings, lesion_probability_threshold=0.0, max_findings_per_study=0
    )
    model = LesionClassifier.load(settings.model)
    out = {}
    for patient in PATIENTS:
        (study,) = evaluate_study_folder(
            patient, folders[patient], annotated[patient], scoring, model
        )
        row = study_row(
            study,
            settings.lesion_probability_threshold,
            max_findings=settings.max_findings_per_study,
        )
        out[patient] = (study, row)
    return out


def _marked(patients: list[str]) -> list[Any]:
    return [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=NOT_MET[p]))
        if p in NOT_MET
        else p
        for p in patients
    ]


@pytest.mark.slow
@pytest.mark.parametrize("scan_id", _marked(PATIENTS))
def test_tumour_is_one_finding_of_the_right_size_with_few_others(
    studies: dict[str, tuple[StudyEvaluation, dict[str, Any]]], scan_id: str
) -> None:
    _, row = studies[scan_id]
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
    assert judged(row)["met"]


@pytest.mark.slow
@pytest.mark.parametrize("scan_id", PATIENTS)
def test_nothing_above_the_lungs_apex(
    studies: dict[str, tuple[StudyEvaluation, dict[str, Any]]], scan_id: str
) -> None:
    study, _ = studies[scan_id]  # every candidate, reported or not
    apex = apex_slice(study)
    assert apex is not None, scan_id
    above = [
        (lesion.tracking_id, lesion.slice_range)
        for n, lesion in enumerate(study.lesions)
        if above_apex(study, n, apex)
    ]
    assert not above, f"{scan_id}: findings above the apex (slice {apex}): {above}"
