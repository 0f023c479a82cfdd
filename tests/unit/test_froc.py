"""FROC and CPM (LUNA16 convention) on hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.model.froc import (
    CPM_FP_RATES,
    Finding,
    GroundTruthLesion,
    SliceBox,
    froc,
    group_slice_boxes,
    lesion_box_mm,
    match_findings,
    per_scan_counts,
    sensitivity_at,
)


def _lesion(scan: str, centre: tuple[float, float, float], half: float = 10.0, **kw):
    lo = tuple(c - half for c in centre)
    hi = tuple(c + half for c in centre)
    return GroundTruthLesion(scan, lo, hi, **kw)  # type: ignore[arg-type]


def _two_scans() -> tuple[list[Finding], list[GroundTruthLesion]]:
    lesions = [_lesion("a", (0, 0, 0)), _lesion("b", (100, 100, 100))]
    findings = [
        Finding("a", 0.9, (1, 1, 1)),  # hits lesion a
        Finding("a", 0.8, (5, -5, 0)),  # second hit on lesion a: a fragment, not an FP
        Finding("a", 0.7, (50, 50, 50)),  # FP
        Finding("b", 0.95, (0, 0, 0)),  # FP (lesion a is in scan a, not b)
        Finding("b", 0.6, (100, 95, 104)),  # hits lesion b
        Finding("b", 0.5, (-50, 0, 0)),  # FP
    ]
    return findings, lesions


def test_froc_curve_and_cpm_known_answer() -> None:
    findings, lesions = _two_scans()
    curve = froc(findings, lesions, ["a", "b"])
    # Operating points, highest threshold first, from (0 FP, sensitivity 0).
    assert curve.thresholds[0] == np.inf
    np.testing.assert_allclose(curve.thresholds[1:], [0.95, 0.9, 0.7, 0.6, 0.5])
    np.testing.assert_allclose(curve.fps_per_scan, [0, 0.5, 0.5, 1.0, 1.0, 1.5])
    np.testing.assert_allclose(curve.sensitivity, [0, 0, 0.5, 0.5, 1.0, 1.0])
    # Interpolated: best sensitivity per FP rate is 0 -> 0, 0.5 -> 0.5, 1 -> 1, 1.5 -> 1.
    expected = {0.125: 0.125, 0.25: 0.25, 0.5: 0.5, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0}
    assert curve.cpm_points == pytest.approx(expected)
    assert curve.cpm == pytest.approx(4.875 / 7)
    assert curve.n_lesions == 2 and curve.n_scans == 2 and curve.n_findings == 6


def test_fragments_are_neither_tp_nor_fp() -> None:
    findings, lesions = _two_scans()
    matching = match_findings(findings, lesions)
    assert matching.hits == {0: [0, 1], 1: [4]}
    assert matching.false_positives == [2, 3, 5]
    counts = per_scan_counts(findings, lesions)
    assert counts["a"] == {"findings": 3, "lesions": 1, "tp": 1, "extra_hits": 1, "fp": 1}
    assert counts["b"] == {"findings": 3, "lesions": 1, "tp": 1, "extra_hits": 0, "fp": 2}
    at_065 = per_scan_counts(findings, lesions, threshold=0.65)
    assert at_065["b"] == {"findings": 1, "lesions": 1, "tp": 0, "extra_hits": 0, "fp": 1}


def test_hit_rule_margin() -> None:
    lesion = GroundTruthLesion("a", (0.0, 0.0, 0.0), (10.0, 10.0, 10.0))
    just_outside = (14.9, 5.0, 5.0)
    assert lesion.contains(just_outside, margin_mm=5.0)
    assert not lesion.contains(just_outside, margin_mm=4.0)
    assert lesion.contains((5.0, 5.0, 5.0), margin_mm=0.0)
    assert not lesion.contains((5.0, 5.0, -0.1), margin_mm=0.0)
    assert lesion.extent_mm == (10.0, 10.0, 10.0)


def test_interpolation_between_points_and_beyond_the_curve() -> None:
    # Points (0, 0.2), (1, 0.6), (3, 0.8); several points at FP rate 1 -> the highest used.
    fps = np.array([0.0, 0.0, 1.0, 1.0, 3.0])
    sens = np.array([0.0, 0.2, 0.4, 0.6, 0.8])
    got = sensitivity_at(fps, sens, CPM_FP_RATES)
    assert got[0.125] == pytest.approx(0.2 + 0.125 * 0.4)
    assert got[0.5] == pytest.approx(0.4)
    assert got[1.0] == pytest.approx(0.6)
    assert got[2.0] == pytest.approx(0.7)
    assert got[4.0] == pytest.approx(0.8) and got[8.0] == pytest.approx(0.8)


def test_no_false_positives_gives_full_sensitivity_everywhere() -> None:
    lesions = [_lesion("a", (0, 0, 0)), _lesion("a", (50, 0, 0))]
    findings = [Finding("a", 0.3, (0, 0, 0))]
    curve = froc(findings, lesions, ["a", "b"])
    assert set(curve.cpm_points.values()) == {0.5}
    assert curve.cpm == pytest.approx(0.5)


def test_no_findings_and_no_lesions() -> None:
    curve = froc([], [_lesion("a", (0, 0, 0))], ["a"])
    assert curve.cpm == 0.0
    np.testing.assert_allclose(curve.fps_per_scan, [0.0])
    assert froc([Finding("a", 0.5, (0, 0, 0))], [], ["a"]).cpm == 0.0
    with pytest.raises(ValueError, match="scan_ids"):
        froc([Finding("z", 0.5, (0, 0, 0))], [], ["a"])


def test_ignored_lesions_neither_count_nor_make_fps() -> None:
    lesions = [_lesion("a", (0, 0, 0)), _lesion("a", (50, 0, 0), ignore=True)]
    findings = [Finding("a", 0.9, (50, 0, 0)), Finding("a", 0.4, (0, 0, 0))]
    curve = froc(findings, lesions, ["a"])
    assert curve.n_lesions == 1
    np.testing.assert_allclose(curve.fps_per_scan, [0.0, 0.0])
    np.testing.assert_allclose(curve.sensitivity, [0.0, 1.0])
    assert curve.cpm == pytest.approx(1.0)


def test_group_slice_boxes_by_overlap_on_adjacent_slices() -> None:
    boxes = [
        SliceBox(3, (10, 10, 30, 30)),
        SliceBox(4, (12, 12, 32, 32)),
        SliceBox(6, (15, 15, 35, 35)),  # one empty slice (5) in between: same lesion
        SliceBox(4, (100, 100, 120, 120)),  # same slice, elsewhere: another lesion
        SliceBox(9, (15, 15, 35, 35)),  # two empty slices (7, 8): a new lesion
        SliceBox(10, (40, 40, 50, 50)),  # adjacent to 9 but not overlapping: a new lesion
    ]
    lesions = group_slice_boxes(boxes)
    assert [lesion.slice_range for lesion in lesions] == [(3, 6), (4, 4), (9, 9), (10, 10)]
    assert lesions[0].box_xy == (10, 10, 35, 35)
    assert len(group_slice_boxes(boxes, max_gap=2)) == 3


def test_group_merges_two_groups_joined_by_one_box() -> None:
    boxes = [
        SliceBox(1, (0, 0, 10, 10)),
        SliceBox(1, (20, 0, 30, 10)),
        SliceBox(2, (5, 0, 25, 10)),  # overlaps both boxes of slice 1
    ]
    (lesion,) = group_slice_boxes(boxes)
    assert lesion.box_xy == (0, 0, 30, 10)


def test_lesion_box_mm_covers_voxel_edges() -> None:
    # Axial volume: x = col * 0.5, y = row * 0.5, z = 100 + slice * 5 (index [s, r, c]).
    def index_to_patient(idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.float64)
        return np.stack([idx[..., 2] * 0.5, idx[..., 1] * 0.5, 100 + idx[..., 0] * 5], axis=-1)

    (lesion,) = group_slice_boxes([SliceBox(2, (10, 20, 19, 39)), SliceBox(3, (10, 20, 19, 39))])
    lo, hi = lesion_box_mm(lesion, index_to_patient)
    assert lo == pytest.approx((4.75, 9.75, 107.5))
    assert hi == pytest.approx((9.75, 19.75, 117.5))
