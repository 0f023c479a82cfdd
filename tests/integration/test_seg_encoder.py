"""The SEG encoder: one binary segment per lesion on the CT grid, valid and read back intact.

Uses the encoded cases of tests/support/encoded_cases.py (phantom with PET and two lesions, CT-only,
real CT when the TCIA fixture is present) and checks the SEG with dciodvfy and highdicom's segread.
"""

from __future__ import annotations

from dataclasses import replace

import highdicom as hd
import numpy as np
import pytest
from dicom_validators import dciodvfy_report
from encoded_cases import KNOWN_DCIODVFY_WARNINGS, MODEL, Case, real_case

from classifier.results import codes
from classifier.results.encode import encode
from classifier.results.seg_encoder import lesion_volume


def seg_cases(encoded_cases: dict[str, Case]) -> list[Case]:
    return [
        encoded_cases["pet"],
        encoded_cases["ct"],
        *([encoded_cases["real"]] if "real" in encoded_cases else []),
    ]


def expected_volume(case: Case) -> np.ndarray:
    """[slice, row, column, segment] bool: every lesion mask placed in the CT volume."""
    shape = case.result.ct_shape
    return np.stack([lesion_volume(lesion, shape) for lesion in case.result.lesions], axis=-1)


def test_seg_masks_round_trip(encoded_cases: dict[str, Case]) -> None:
    for case in seg_cases(encoded_cases):
        seg = hd.seg.segread(case.paths[1])
        expected = expected_volume(case)
        ct_uids = [r.sop_instance_uid for r in case.result.ct_slices]
        numbers = list(range(1, len(case.result.lesions) + 1))
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=ct_uids,
            segment_numbers=numbers,
            assert_missing_frames_are_empty=True,
        )
        assert pixels.shape == expected.shape, case.name
        assert np.array_equal(pixels.astype(bool), expected), case.name


def test_seg_stores_only_non_empty_frames(encoded_cases: dict[str, Case]) -> None:
    for case in seg_cases(encoded_cases):
        seg = hd.seg.segread(case.paths[1])
        expected = expected_volume(case)
        assert seg.NumberOfFrames == int(expected.any(axis=(1, 2)).sum()), case.name


def test_segments_carry_lesion_identity_and_algorithm(encoded_cases: dict[str, Case]) -> None:
    for case in seg_cases(encoded_cases):
        seg = hd.seg.segread(case.paths[1])
        sr = hd.sr.srread(case.paths[0])
        assert seg.SegmentationType == "BINARY"
        assert "NOT FOR CLINICAL USE" in seg.SeriesDescription
        assert seg.SeriesDescription.startswith("AI ")
        assert seg.SeriesInstanceUID != sr.SeriesInstanceUID
        assert seg.StudyInstanceUID == case.result.study_instance_uid
        assert seg.PatientID == case.sources[0].PatientID
        assert seg.FrameOfReferenceUID == case.sources[0].FrameOfReferenceUID
        algorithm = [
            item
            for item in seg.ContributingEquipmentSequence
            if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
        ]
        assert len(algorithm) == 1
        assert algorithm[0].DeviceUID == codes.device_uid(MODEL)
        # Type 2 of the Content Identification Macro (dcmqi warned it was absent)
        assert str(seg.ContentCreatorName) == f"{MODEL.name}^"
        for number, lesion in enumerate(case.result.lesions, start=1):
            description = seg.get_segment_description(number)
            assert description.segment_label == f"{lesion.tracking_id} NOT FOR CLINICAL USE"
            assert "NOT FOR CLINICAL USE" in description.SegmentDescription
            assert len(description.RecommendedDisplayCIELabValue) == 3
            assert description.tracking_id == lesion.tracking_id
            assert description.tracking_uid == lesion.tracking_uid
            assert description.segmented_property_category == codes.FINDING_CATEGORY
            assert description.segmented_property_type == codes.finding_type(lesion.long_axis_mm)
            assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
            identification = description.algorithm_identification[0]
            assert identification.AlgorithmName == MODEL.name
            assert identification.AlgorithmVersion == MODEL.version
            assert MODEL.sha256 in identification.AlgorithmParameters
            # The SR's group for this lesion points at this very segment.
            group = sr.content.get_volumetric_roi_measurement_groups(
                tracking_uid=lesion.tracking_uid
            )[0]
            assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
            assert group.referenced_segment.referenced_segment_numbers == [number]


def test_seg_passes_dciodvfy(encoded_cases: dict[str, Case]) -> None:
    for case in seg_cases(encoded_cases):
        errors, warnings = dciodvfy_report(case.paths[1])
        assert errors == [], (case.name, errors)
        unexpected = [w for w in warnings if not any(k in w for k in KNOWN_DCIODVFY_WARNINGS)]
        assert unexpected == [], (case.name, unexpected)


def test_real_ct_seg_is_the_annotation_box(encoded_cases: dict[str, Case]) -> None:
    case = real_case(encoded_cases)
    lesion = case.result.lesions[0]
    seg = hd.seg.segread(case.paths[1])
    assert seg.NumberOfFrames == 1
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[lesion.key_slice.sop_instance_uid], segment_numbers=[1]
    )[0, :, :, 0]
    r0, c0, r1, c1 = lesion.box_rc
    assert pixels.sum() == (r1 - r0 + 1) * (c1 - c0 + 1)
    assert pixels[r0 : r1 + 1, c0 : c1 + 1].all()


def test_spacing_between_slices_is_the_cts(encoded_cases: dict[str, Case]) -> None:
    # highdicom writes 1.0 for a SEG of one frame (the real case); dcmqi stacks frames by it.
    for case in seg_cases(encoded_cases):
        seg = hd.seg.segread(case.paths[1])
        measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        z = sorted(float(ds.ImagePositionPatient[2]) for ds in case.sources if ds.Modality == "CT")
        assert float(measures.SpacingBetweenSlices) == pytest.approx(z[1] - z[0]), case.name


def test_long_descriptions_end_at_a_word(encoded_cases: dict[str, Case]) -> None:
    case = encoded_cases["ct"]
    long_name = replace(MODEL, name="lungnode-cnn-with-a-rather-long-descriptive-name")
    result = replace(case.result, model=long_name)
    seg = encode(result, case.sources)[1]
    text = str(seg.SegmentSequence[0].SegmentDescription)
    full = f"NOT FOR CLINICAL USE Lesion 1: lung lesion found by {long_name.name} 0.1.0,"
    assert len(text) <= 64 and full.startswith(text) and full[len(text)] == " ", text
    assert codes.clip_at_word("one two three", 9) == "one two"
    assert codes.clip_at_word("unbreakable", 4) == "unbr"
    assert codes.clip_at_word("short", 64) == "short"


def test_masks_that_do_not_fit_are_refused(encoded_cases: dict[str, Case]) -> None:
    case = encoded_cases["ct"]
    lesion = case.result.lesions[0]
    shape = case.result.ct_shape
    outside = replace(lesion, mask_origin=(shape[0] - 1, 0, 0))
    with pytest.raises(ValueError, match="does not fit"):
        encode(replace(case.result, lesions=(outside,)), case.sources)
    empty = replace(lesion, mask=np.zeros_like(lesion.mask))
    with pytest.raises(ValueError, match="mask is empty"):
        encode(replace(case.result, lesions=(empty,)), case.sources)
    wrong_shape = replace(case.result, ct_shape=(shape[0], shape[1] + 1, shape[2]))
    with pytest.raises(ValueError, match="ct_shape"):
        encode(wrong_shape, case.sources)
