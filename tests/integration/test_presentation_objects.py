"""The objects every viewer shows: GSPS on the analysed CT and Secondary Capture key images,
built from the encoded cases (support/encoded_cases.py): what they contain, that dciodvfy finds
no error in any object of any case (the Key Object Selection included; its own tests are in
test_ko_encoder.py), and the GSPS applied to its CT slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_validators import dciodvfy_report
from encoded_cases import KNOWN_DCIODVFY_WARNINGS, Case

from classifier.results import geometry
from classifier.results.overlay import render_presentation_state
from storage.states import ResultKind


def _objects(case: Case, modality: str) -> list[tuple[Path, pydicom.Dataset]]:
    return [
        (p, ds) for p, ds in zip(case.paths, case.objects, strict=True) if ds.Modality == modality
    ]


def test_every_object_of_every_case_passes_dciodvfy(encoded_cases: dict[str, Case]) -> None:
    failures = {}
    for case in encoded_cases.values():
        for path in case.paths:
            errors, warnings = dciodvfy_report(path)
            unexpected = [w for w in warnings if not any(k in w for k in KNOWN_DCIODVFY_WARNINGS)]
            if errors or unexpected:
                failures[path.name] = errors + unexpected
    assert failures == {}


def test_lesion_cases_get_all_five_kinds(encoded_cases: dict[str, Case]) -> None:
    for name in ("pet", "ct"):
        case = encoded_cases[name]
        modalities = [ds.Modality for ds in case.objects]
        assert modalities == ["SR", "SEG", "PR", *["OT"] * (len(case.result.lesions) + 1), "KO"]
        series = {ds.SeriesInstanceUID for ds in case.objects}
        assert len(series) == 5  # one new series per kind
        assert not series & {ds.SeriesInstanceUID for ds in case.sources}
        assert {ds.StudyInstanceUID for ds in case.objects} == {case.result.study_instance_uid}


def test_gsps_outlines_each_finding_in_its_own_layer_with_a_lung_window(
    encoded_cases: dict[str, Case],
) -> None:
    case = encoded_cases["pet"]
    ((_, gsps),) = _objects(case, "PR")
    assert gsps.SOPClassUID == pydicom.uid.GrayscaleSoftcopyPresentationStateStorage
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in gsps.ReferencedSeriesSequence
        for item in series.ReferencedImageSequence
    }
    assert referenced == {r.sop_instance_uid for r in case.result.ct_slices}
    (voi,) = gsps.SoftcopyVOILUTSequence
    assert (float(voi.WindowWidth), float(voi.WindowCenter)) == (1500.0, -600.0)
    layers = [layer.GraphicLayer for layer in gsps.GraphicLayerSequence]
    assert layers == [f"FINDING {n}" for n in range(1, len(case.result.lesions) + 1)]
    for number, lesion in enumerate(case.result.lesions, start=1):
        on_key = [
            a
            for a in gsps.GraphicAnnotationSequence
            if a.GraphicLayer == f"FINDING {number}"
            and a.ReferencedImageSequence[0].ReferencedSOPInstanceUID
            == lesion.key_slice.sop_instance_uid
        ]
        assert len(on_key) == 1
        (text,) = on_key[0].TextObjectSequence
        label = text.UnformattedTextValue
        assert label.startswith(f"{number}: {lesion.tracking_id}")
        assert f"long axis {lesion.long_axis_mm:.1f} mm" in label
        assert f"p(lesion) {lesion.certainty_of_finding:.2f}" in label
        assert "most probable type" in label and "NOT FOR CLINICAL USE" in label
        graphics = on_key[0].GraphicObjectSequence
        assert all(g.GraphicAnnotationUnits == "PIXEL" for g in graphics)
        spans = lesion.slice_range[1] - lesion.slice_range[0] + 1
        layer_annotations = [
            a for a in gsps.GraphicAnnotationSequence if a.GraphicLayer == f"FINDING {number}"
        ]
        assert len(layer_annotations) == spans


def test_gsps_applied_to_the_key_slice_draws_the_outline(encoded_cases: dict[str, Case]) -> None:
    case = encoded_cases["ct"]
    ((_, gsps),) = _objects(case, "PR")
    lesion = case.result.lesions[0]
    ct = next(ds for ds in case.sources if ds.SOPInstanceUID == lesion.key_slice.sop_instance_uid)
    picture = render_presentation_state(ct, gsps)
    assert picture.shape == (int(ct.Rows), int(ct.Columns), 3)
    colour = np.array(geometry.lesion_colour(1), dtype=float)
    r0, c0, r1, c1 = lesion.box_rc
    near = picture[max(r0 - 2, 0) : r1 + 3, max(c0 - 2, 0) : c1 + 3].reshape(-1, 3)
    distance = np.abs(near.astype(float) - colour).sum(axis=1)
    assert (distance < 120).sum() >= 4, "no outline pixel in the finding's colour near it"
    grey = picture[0:8, 0:8]
    assert np.all(grey[..., 0] == grey[..., 1])  # outside the graphics: plain windowed grey


def test_key_images_are_burned_in_with_a_summary(encoded_cases: dict[str, Case]) -> None:
    case = encoded_cases["pet"]
    images = [ds for _, ds in _objects(case, "OT")]
    assert len(images) == len(case.result.lesions) + 1
    assert len({ds.SeriesInstanceUID for ds in images}) == 1
    for ds in images:
        assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert ds.BurnedInAnnotation == "YES"
        assert (
            ds.SeriesDescription.startswith("AI ")
            and "NOT FOR CLINICAL USE" in ds.SeriesDescription
        )
        assert ds.PhotometricInterpretation == "RGB" and ds.pixel_array.std() > 0
    summary, *findings = sorted(images, key=lambda ds: int(ds.InstanceNumber))
    assert "SourceImageSequence" not in summary
    for lesion, ds in zip(case.result.lesions, findings, strict=True):
        source = ds.SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == lesion.key_slice.sop_instance_uid


def test_kinds_not_asked_for_are_not_built(encoded_cases: dict[str, Case]) -> None:
    from classifier.results.encode import encode

    case = encoded_cases["ct"]
    objects = encode(
        case.result, case.sources, kinds=(ResultKind.SR, ResultKind.GSPS, ResultKind.KO)
    )
    assert [ds.Modality for ds in objects] == ["SR", "PR", "KO"]
    with pytest.raises(ValueError, match=r"kinds \['gsps'\] are not ResultKind members"):
        encode(case.result, case.sources, kinds=(ResultKind.SR, "gsps"))  # type: ignore[arg-type]
