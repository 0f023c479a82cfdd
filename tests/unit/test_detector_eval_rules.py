"""How `evaluate-detector` tells a fragment of a tumour from a finding beside it: a finding
hit by the centroid rule (LUNA16) is a fragment only when its outline touches one of the
tumour's annotated slice boxes; otherwise it lies beside the tumour and counts among the other
findings a reader must dismiss."""

from __future__ import annotations

import numpy as np

from classifier.imaging.volume import Volume
from classifier.model.detector_eval import Reference, StudyEvaluation, study_row
from classifier.model.froc import (
    Finding,
    GroundTruthLesion,
    SliceBox,
    SliceLesion,
    lesion_box_mm,
)
from classifier.types import ImageReference, Lesion

CT = "1.2.840.10008.5.1.4.1.1.2"


def _volume() -> Volume:
    slices = tuple(ImageReference(CT, f"1.2.3.{k}", "1.2.3") for k in range(20))
    return Volume(
        array=np.zeros((20, 64, 64), np.int16),
        origin=np.zeros(3),
        spacing=(5.0, 1.0, 1.0),
        direction=np.eye(3),
        frame_of_reference_uid="1.2.3.9",
        series_instance_uid="1.2.3",
        modality="CT",
        slices=slices,
    )


def _lesion(
    name: str, p: float, origin: tuple[int, int, int], shape: tuple[int, int, int]
) -> Lesion:
    mask = np.ones(shape, bool)
    return Lesion(
        tracking_id=name,
        tracking_uid="2.25.1",
        key_slice_index=origin[0],
        key_slice=ImageReference(CT, f"1.2.3.{origin[0]}", "1.2.3"),
        box_rc=(origin[1], origin[2], origin[1] + shape[1], origin[2] + shape[2]),
        slice_range=(origin[0], origin[0] + shape[0] - 1),
        centroid_mm=(0.0, 0.0, 0.0),  # set by the caller through the volume
        side="left",
        lobe=None,
        long_axis_mm=float(max(shape[1:])),
        short_axis_mm=float(min(shape[1:])),
        volume_ml=1.0,
        mask=mask,
        mask_origin=origin,
        lesion_probability=p,
    )


def test_a_finding_beside_a_large_tumour_is_not_a_fragment_of_it() -> None:
    ct = _volume()
    # the tumour: boxes on slices 8-14, columns 10-50, rows 10-50
    group = SliceLesion(tuple(SliceBox(k, (10, 10, 50, 50)) for k in range(8, 15)))
    lo, hi = lesion_box_mm(group, ct.index_to_patient)
    reference = Reference(GroundTruthLesion("s", lo, hi, "tumour 1"), "1.2.3", group, ct)
    tumour = _lesion("Lesion 1", 0.9, (9, 15, 15), (5, 30, 30))
    # centred within the 5 mm margin below the lowest box (slice 7), touching no box
    beside = _lesion("Lesion 2", 0.6, (7, 20, 20), (1, 8, 8))
    # a second piece of the tumour itself, on its boxes
    piece = _lesion("Lesion 3", 0.55, (13, 40, 40), (1, 6, 6))
    lesions = (tumour, beside, piece)

    def centre(lesion: Lesion) -> tuple[float, float, float]:
        idx = np.argwhere(lesion.mask).mean(axis=0) + np.array(lesion.mask_origin)
        x, y, z = ct.index_to_patient(idx[np.newaxis, :])[0]
        return float(x), float(y), float(z)

    findings = tuple(Finding("s", x.lesion_probability, centre(x), x.tracking_id) for x in lesions)
    study = StudyEvaluation("s", "s", ct, lesions, findings, (reference,), ())
    row = study_row(study, threshold=0.5)
    (result,) = row["per_tumour"]
    assert result["detected"] and result["fragments"] == 2  # Lesion 1 and Lesion 3
    assert [b["finding"] for b in result["beside"]] == ["Lesion 2"]
    assert row["false_positives"] == 0 and row["other_findings"] == 1
    assert row["extra_fragments"] == 1
