"""The viewers' own code reads every SR and SEG of the encoded cases (support/encoded_cases.py):
dcmqi (3D Slicer's readers) without a warning, with the SEG's segment volumes equal to the SR's,
and OHIF 3.13's SR hydration ("track measurements": Cornerstone3D adapters and dcmjs in Node),
which gives one rectangle and two lengths per finding, every point present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from encoded_cases import Case
from viewer_readers import dcmqi_read_seg, dcmqi_read_sr, ohif_hydrate, segment_volumes_in_sr

from classifier.results import codes


def _key_slices(cases: dict[str, Case], folder: Path) -> list[Path]:
    """Every lesion's key slice written to `folder`: the images OHIF would have loaded."""
    paths = []
    for case in cases.values():
        keys = {lesion.key_slice.sop_instance_uid for lesion in case.result.lesions}
        for ds in case.sources:
            if ds.SOPInstanceUID in keys:
                path = folder / f"{ds.SOPInstanceUID}.dcm"
                pydicom.dcmwrite(path, ds, enforce_file_format=True)
                paths.append(path)
    return paths


@pytest.fixture(scope="module")
def ohif_reports(
    encoded_cases: dict[str, Case], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("ohif")
    reports = ohif_hydrate(
        [case.paths[0] for case in encoded_cases.values()], _key_slices(encoded_cases, folder)
    )
    return {name: report for name, report in zip(encoded_cases, reports, strict=True)}


def test_ohif_tracks_one_rectangle_and_two_lengths_per_finding(
    encoded_cases: dict[str, Case], ohif_reports: dict[str, dict[str, Any]]
) -> None:
    for name, case in encoded_cases.items():
        report = ohif_reports[name]
        assert report["sr"] == str(case.paths[0])
        for lesion in case.result.lesions:
            tools = [
                t for t in report["tools"] if t["trackingUniqueIdentifier"] == lesion.tracking_uid
            ]
            assert sorted(t["toolType"] for t in tools) == ["Length", "Length", "RectangleROI"], (
                name,
                tools,
            )
            assert {t["sopInstanceUid"] for t in tools} == {lesion.key_slice.sop_instance_uid}
            lengths = sorted(t["length"] for t in tools if t["toolType"] == "Length")
            assert lengths == pytest.approx(
                sorted([lesion.long_axis_mm, lesion.short_axis_mm]), abs=0.01
            ), name
            lines = [
                np.asarray(t["points"], dtype=float) for t in tools if t["toolType"] == "Length"
            ]
            assert {t["unit"] for t in tools if t["toolType"] == "Length"} == {"mm"}
            # the long and the short axis cross at a right angle on the key slice
            (a0, a1), (b0, b1) = lines
            u, v = (a1 - a0) / np.linalg.norm(a1 - a0), (b1 - b0) / np.linalg.norm(b1 - b0)
            assert abs(float(u @ v)) < 1e-6, name
        # Only the groups without graphics stay untracked: the segment groups (OHIF shows the
        # SEG) and the no-lesion summary.
        expected = [lesion.tracking_id for lesion in case.result.lesions] or [codes.STUDY_SUMMARY]
        assert [t["trackingIdentifier"] for t in report["notTracked"]] == expected, name
        assert len(report["tools"]) == 3 * len(case.result.lesions), name


def test_ohif_rectangle_is_the_key_slice_box(
    encoded_cases: dict[str, Case], ohif_reports: dict[str, dict[str, Any]]
) -> None:
    case = encoded_cases["pet"]
    by_uid = {ds.SOPInstanceUID: ds for ds in case.sources}
    for lesion in case.result.lesions:
        (tool,) = [
            t
            for t in ohif_reports["pet"]["tools"]
            if t["trackingUniqueIdentifier"] == lesion.tracking_uid
            and t["toolType"] == "RectangleROI"
        ]
        image = by_uid[lesion.key_slice.sop_instance_uid]
        spacing = [float(v) for v in image.PixelSpacing]
        r0, c0, r1, c1 = lesion.box_rc
        corners = np.asarray(tool["points"], dtype=float)
        extent = corners.max(axis=0) - corners.min(axis=0)
        # an axial slice: the box spans its columns along x and its rows along y, z is fixed
        assert extent[0] == pytest.approx((c1 + 1 - c0) * spacing[1])
        assert extent[1] == pytest.approx((r1 + 1 - r0) * spacing[0])
        assert extent[2] == pytest.approx(0.0)


def test_dcmqi_reads_every_sr_and_seg_without_warning(
    encoded_cases: dict[str, Case], tmp_path: Path
) -> None:
    for name, case in encoded_cases.items():
        metadata = dcmqi_read_sr(case.paths[0], tmp_path)
        groups = metadata["Measurements"]
        lesions = case.result.lesions
        assert len(groups) == (4 * len(lesions) or 1), name
        for lesion in lesions:
            mine = [g for g in groups if g["TrackingUniqueIdentifier"] == lesion.tracking_uid]
            assert len(mine) == 4, name
            quantities = sorted(
                m["quantity"]["CodeMeaning"] for g in mine for m in g.get("measurementItems", [])
            )
            assert {"Long Axis", "Short Axis", "Volume"} <= set(quantities), name
        if not lesions:
            continue
        meta, seg_volumes = dcmqi_read_seg(case.paths[1], tmp_path)
        segments = [s for group in meta["segmentAttributes"] for s in group]
        assert [s["TrackingUniqueIdentifier"] for s in segments] == [
            lesion.tracking_uid for lesion in lesions
        ], name
        sr_volumes = segment_volumes_in_sr(metadata)
        assert sorted(sr_volumes) == sorted(seg_volumes) == list(range(1, len(lesions) + 1))
        for number, volume in seg_volumes.items():
            assert volume == pytest.approx(sr_volumes[number], abs=0.001), (name, number)


def _groups(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    (imaging,) = [
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]
    return list(imaging.ContentSequence)


def _box_with_lines_under_nums(sr: pydicom.Dataset) -> None:
    """The first shape the node sent: the box group also holds the diameters with their lines."""
    box, long_axis, short_axis = _groups(sr)[:3]
    for line in (long_axis, short_axis):
        (number,) = [i for i in line.ContentSequence if i.ValueType == "NUM"]
        box.ContentSequence.append(number)


def _box_as_two_points(sr: pydicom.Dataset) -> None:
    """A box group whose region no OHIF tool takes (a 2-point line by shape)."""
    box = _groups(sr)[0]
    (region,) = [i for i in box.ContentSequence if i.ValueType == "SCOORD"]
    region.GraphicData = list(region.GraphicData)[:4]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_box_with_lines_under_nums, "point 2 is undefined"),
        (_box_as_two_points, "with coordinates that no tool takes"),
    ],
)
def test_ohif_hydration_fails_on_a_missing_point_or_an_unsupported_group(
    encoded_cases: dict[str, Case], tmp_path: Path, change: Any, message: str
) -> None:
    case = encoded_cases["ct"]
    sr = pydicom.dcmread(case.paths[0])
    change(sr)
    path = tmp_path / "changed.dcm"
    sr.save_as(path)
    with pytest.raises(AssertionError, match=message):
        ohif_hydrate([path], _key_slices({"ct": case}, tmp_path))
