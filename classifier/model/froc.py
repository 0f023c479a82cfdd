"""FROC curve and the LUNA16 competition performance metric (CPM) of a lesion detector.

Inputs are per-scan findings (a score and a 3-D position in patient millimetres) and per-scan
ground-truth lesions (3-D boxes in patient millimetres, built from the per-slice boxes of one
tumour by `lesions_from_slice_boxes`).

Hit rule (stated once, used everywhere): a finding hits a lesion when its position (the
finding's centre) lies inside the lesion's 3-D box grown by `margin_mm` on every side
(default `HIT_MARGIN_MM`). The box is the union of the tumour's per-slice boxes, from the lower
edge of its first slice to the upper edge of its last (half a slice step beyond each centre).

Counting follows LUNA16 (Setio et al. 2017, noduleCADEvaluationLUNA16.py):
- a lesion counts once for sensitivity, at the highest score among the findings that hit it;
- the other findings that hit the same lesion (fragments, duplicates) are neither true nor
  false positives: they are left out of the curve;
- a finding that hits no lesion is a false positive; one that hits two lesions counts for both;
- lesions marked `ignore` (e.g. uncertain ones) give no sensitivity, and findings hitting them
  are left out, as LUNA16 does with its "irrelevant findings".

The FROC curve has one operating point per distinct score (ties enter together), from the
point (0 FP per scan, sensitivity 0) at a threshold above every score. Sensitivity at a given
FP rate is linearly interpolated between operating points (numpy.interp on the curve, as the
LUNA16 script does); where several points share an FP rate the highest sensitivity is used;
beyond the last point the sensitivity of the last point is used (more FPs cannot be bought).
The CPM is the mean of the interpolated sensitivities at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs per
scan.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

HIT_MARGIN_MM = 5.0
CPM_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SLICE_GAP_ALLOWED = 1  # slices without a box that may lie inside one lesion


@dataclass(frozen=True)
class Finding:
    """One detector output: the scan it belongs to, its score and its centre in patient mm."""

    scan_id: str
    score: float
    position_mm: tuple[float, float, float]
    name: str = ""


@dataclass(frozen=True)
class GroundTruthLesion:
    """A reference lesion: an axis-aligned box [lo_mm, hi_mm] in patient mm (LPS)."""

    scan_id: str
    lo_mm: tuple[float, float, float]
    hi_mm: tuple[float, float, float]
    name: str = ""
    ignore: bool = False

    def contains(self, point_mm: Sequence[float], margin_mm: float = HIT_MARGIN_MM) -> bool:
        p = np.asarray(point_mm, dtype=np.float64)
        lo = np.asarray(self.lo_mm) - margin_mm
        hi = np.asarray(self.hi_mm) + margin_mm
        return bool(np.all(p >= lo) and np.all(p <= hi))

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        lo, hi = self.lo_mm, self.hi_mm
        return (float(hi[0] - lo[0]), float(hi[1] - lo[1]), float(hi[2] - lo[2]))


@dataclass(frozen=True)
class SliceBox:
    """A per-slice reference box: slice index in the volume, and (xmin, ymin, xmax, ymax) in
    pixel columns (x) and rows (y), inclusive, as PASCAL-VOC gives them."""

    slice_index: int
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class SliceLesion:
    """Per-slice boxes grouped into one lesion, in index space: slices [s0, s1], rows, cols."""

    slices: tuple[SliceBox, ...]

    @property
    def slice_range(self) -> tuple[int, int]:
        return self.slices[0].slice_index, self.slices[-1].slice_index

    @property
    def box_xy(self) -> tuple[int, int, int, int]:
        """(xmin, ymin, xmax, ymax) of the union of the per-slice boxes."""
        boxes = np.array([b.box for b in self.slices])
        return (
            int(boxes[:, 0].min()),
            int(boxes[:, 1].min()),
            int(boxes[:, 2].max()),
            int(boxes[:, 3].max()),
        )


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def group_slice_boxes(
    boxes: Iterable[SliceBox], max_gap: int = SLICE_GAP_ALLOWED
) -> list[SliceLesion]:
    """Group per-slice boxes into lesions: a box joins a lesion when it overlaps (in plane) a
    box of that lesion on one of the `max_gap + 1` slices below it; boxes that overlap two
    lesions merge them. Lesions come back ordered by their first slice."""
    ordered = sorted(boxes, key=lambda b: (b.slice_index, b.box))
    groups: list[list[SliceBox]] = []
    for item in ordered:
        joined = [
            g
            for g in groups
            if any(
                0 < item.slice_index - other.slice_index <= max_gap + 1
                and _overlap(item.box, other.box)
                for other in g
            )
        ]
        if not joined:
            groups.append([item])
            continue
        first = joined[0]
        first.append(item)
        for other in joined[1:]:
            first.extend(other)
            groups.remove(other)
    out = [SliceLesion(tuple(sorted(g, key=lambda b: (b.slice_index, b.box)))) for g in groups]
    return sorted(out, key=lambda lesion: (lesion.slice_range, lesion.box_xy))


def lesion_box_mm(
    lesion: SliceLesion, index_to_patient: Callable[[np.ndarray], np.ndarray]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The lesion's box in patient mm: the 8 corners of [s0 - 1/2, s1 + 1/2] x [ymin - 1/2,
    ymax + 1/2] x [xmin - 1/2, xmax + 1/2] (voxel edges, index space [slice, row, col]) mapped
    by `index_to_patient` (e.g. Volume.index_to_patient), then their min and max per axis."""
    s0, s1 = lesion.slice_range
    x0, y0, x1, y1 = lesion.box_xy
    corners = np.array(
        [
            [s, r, c]
            for s in (s0 - 0.5, s1 + 0.5)
            for r in (y0 - 0.5, y1 + 0.5)
            for c in (x0 - 0.5, x1 + 0.5)
        ]
    )
    points = np.asarray(index_to_patient(corners), dtype=np.float64)
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (
        (float(lo[0]), float(lo[1]), float(lo[2])),
        (float(hi[0]), float(hi[1]), float(hi[2])),
    )


@dataclass(frozen=True)
class Matching:
    """Findings matched to lesions under the hit rule, per the LUNA16 convention."""

    hits: dict[int, list[int]]  # lesion index -> finding indices hitting it, best score first
    false_positives: list[int]  # finding indices hitting no lesion
    ignored: list[int]  # finding indices hitting only `ignore` lesions


def match_findings(
    findings: Sequence[Finding],
    lesions: Sequence[GroundTruthLesion],
    margin_mm: float = HIT_MARGIN_MM,
) -> Matching:
    """Which finding hits which lesion (same scan, centre in the grown box)."""
    hits: dict[int, list[int]] = {n: [] for n in range(len(lesions))}
    false_positives: list[int] = []
    ignored: list[int] = []
    for f_index, finding in enumerate(findings):
        hit = [
            n
            for n, lesion in enumerate(lesions)
            if lesion.scan_id == finding.scan_id and lesion.contains(finding.position_mm, margin_mm)
        ]
        for n in hit:
            hits[n].append(f_index)
        if not hit:
            false_positives.append(f_index)
        elif all(lesions[n].ignore for n in hit):
            ignored.append(f_index)
    for n in hits:
        hits[n].sort(key=lambda i: -findings[i].score)
    return Matching(hits, false_positives, ignored)


@dataclass(frozen=True)
class FrocCurve:
    """Operating points (threshold, FPs per scan, sensitivity), highest threshold first."""

    thresholds: np.ndarray
    fps_per_scan: np.ndarray
    sensitivity: np.ndarray
    n_scans: int
    n_lesions: int
    n_findings: int
    margin_mm: float = HIT_MARGIN_MM
    cpm_points: dict[float, float] = field(default_factory=dict)

    @property
    def cpm(self) -> float:
        return float(np.mean(list(self.cpm_points.values()))) if self.cpm_points else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "n_scans": self.n_scans,
            "n_lesions": self.n_lesions,
            "n_findings": self.n_findings,
            "hit_margin_mm": self.margin_mm,
            "cpm": round(self.cpm, 4),
            "sensitivity_at_fp_per_scan": {
                f"{k:g}": round(v, 4) for k, v in self.cpm_points.items()
            },
            "curve": [
                {
                    "threshold": float(t) if np.isfinite(t) else None,
                    "fps_per_scan": float(f),
                    "sensitivity": float(s),
                }
                for t, f, s in zip(
                    self.thresholds, self.fps_per_scan, self.sensitivity, strict=True
                )
            ],
        }


def sensitivity_at(
    fps_per_scan: np.ndarray, sensitivity: np.ndarray, rates: Iterable[float]
) -> dict[float, float]:
    """Sensitivity at each FP rate, interpolated as the module doc says."""
    fps = np.asarray(fps_per_scan, dtype=np.float64)
    sens = np.asarray(sensitivity, dtype=np.float64)
    best: dict[float, float] = {}
    for f, s in zip(fps, sens, strict=True):
        best[float(f)] = max(best.get(float(f), 0.0), float(s))
    xs = np.array(sorted(best))
    ys = np.maximum.accumulate(np.array([best[x] for x in xs]))
    return {float(r): float(np.interp(r, xs, ys)) for r in rates}


def froc(
    findings: Sequence[Finding],
    lesions: Sequence[GroundTruthLesion],
    scan_ids: Iterable[str],
    margin_mm: float = HIT_MARGIN_MM,
    rates: Sequence[float] = CPM_FP_RATES,
) -> FrocCurve:
    """The FROC curve and CPM of `findings` against `lesions` over the scans `scan_ids`
    (every scan evaluated, including those without findings or lesions)."""
    scans = sorted(set(scan_ids))
    if not scans:
        raise ValueError("FROC needs at least one scan; pass the ids of the scans evaluated")
    unknown = {f.scan_id for f in findings} - set(scans)
    unknown |= {lesion.scan_id for lesion in lesions} - set(scans)
    if unknown:
        raise ValueError(f"findings or lesions of scans not in scan_ids: {sorted(unknown)}")
    matching = match_findings(findings, lesions, margin_mm)
    counted = [n for n, lesion in enumerate(lesions) if not lesion.ignore]
    # Events: (score, is_fp, lesion or None). A lesion enters at its best hit's score.
    fp_scores = [findings[i].score for i in matching.false_positives]
    lesion_scores = [findings[matching.hits[n][0]].score for n in counted if matching.hits[n]]
    thresholds = np.unique(np.array(fp_scores + lesion_scores, dtype=np.float64))[::-1]
    fp_arr, tp_arr = np.array(fp_scores), np.array(lesion_scores)
    n_lesions = len(counted)
    fps = [0.0]
    sens = [0.0]
    for t in thresholds:
        fps.append(float(np.count_nonzero(fp_arr >= t)) / len(scans))
        sens.append(float(np.count_nonzero(tp_arr >= t)) / n_lesions if n_lesions else 0.0)
    curve_t = np.r_[np.inf, thresholds]
    points = sensitivity_at(np.array(fps), np.array(sens), rates)
    return FrocCurve(
        thresholds=curve_t,
        fps_per_scan=np.array(fps),
        sensitivity=np.array(sens),
        n_scans=len(scans),
        n_lesions=n_lesions,
        n_findings=len(findings),
        margin_mm=margin_mm,
        cpm_points=points,
    )


def per_scan_counts(
    findings: Sequence[Finding],
    lesions: Sequence[GroundTruthLesion],
    margin_mm: float = HIT_MARGIN_MM,
    threshold: float = 0.0,
) -> dict[str, dict[str, int]]:
    """Per scan, at score >= threshold: findings, lesions, lesions hit (TP), findings hitting a
    lesion beyond the first (extra fragments), false positives."""
    kept = [f for f in findings if f.score >= threshold]
    matching = match_findings(kept, lesions, margin_mm)
    out: dict[str, dict[str, int]] = defaultdict(
        lambda: {"findings": 0, "lesions": 0, "tp": 0, "extra_hits": 0, "fp": 0}
    )
    for f in kept:
        out[f.scan_id]["findings"] += 1
    for n, lesion in enumerate(lesions):
        if lesion.ignore:
            continue
        row = out[lesion.scan_id]
        row["lesions"] += 1
        row["tp"] += bool(matching.hits[n])
        row["extra_hits"] += max(0, len(matching.hits[n]) - 1)
    for i in matching.false_positives:
        out[kept[i].scan_id]["fp"] += 1
    return dict(out)
