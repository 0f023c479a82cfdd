"""Detector evaluation on a TCIA-layout folder: `lungnode evaluate-detector`.

Runs the current `analyze_study` (the given settings, by default the bundled model and the
default settings) on every patient of a Lung-PET-CT-Dx style download, matches its findings to
the reference boxes of one or more annotation folders (TCIA's, the project's approximate ones),
and writes per study the findings, true positives, fragments and false positives, the long axis
of the finding on each tumour against the annotated extent, the FROC curve and the LUNA16 CPM
(see classifier.model.froc for the hit rule and the counting), and a picture per study of every
finding with its probability.

Every candidate is scored (the analysis runs with lesion probability threshold 0, which changes
what is reported, not what is detected or how it is scored), so the FROC curve covers all
operating points; the per-study counts are as the node would report them: at the settings'
reporting threshold (0.5 by default), at most `max_findings_per_study` findings, the most
probable first.

The reference of a study is the annotation of the CT series the analysis chose; when that
series carries no boxes but another series of the study in the same frame of reference does,
that series' boxes are mapped through patient coordinates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from classifier.analyze import analyze_study
from classifier.datasets.study_folder import scan_folder
from classifier.datasets.tcia_dataset import AnnotatedSlice, scan_dataset
from classifier.imaging.dicom_io import read_series
from classifier.imaging.volume import Volume, load_ct_volume
from classifier.model.froc import (
    HIT_MARGIN_MM,
    Finding,
    FrocCurve,
    GroundTruthLesion,
    SliceBox,
    SliceLesion,
    froc,
    group_slice_boxes,
    lesion_box_mm,
    match_findings,
)
from classifier.model.inference import LesionClassifier
from classifier.settings import AnalysisSettings
from classifier.types import Lesion

log = logging.getLogger("lungnode.evaluate_detector")

SUMMARY_JSON = "detector_eval.json"
REPORT_MD = "detector_eval.md"
FROC_PNG = "froc.png"
NOT_CLINICAL = "NOT FOR CLINICAL USE"
_LUNG_WINDOW = (1500.0, -600.0)


@dataclass(frozen=True)
class Reference:
    """One reference lesion of a study: its 3-D box in mm and what it was built from."""

    lesion: GroundTruthLesion
    series_instance_uid: str
    slice_lesion: SliceLesion
    volume: Volume  # the volume whose index space the slice boxes are in


@dataclass(frozen=True)
class StudyEvaluation:
    """What one study gave: the analysis, its references and the findings as FROC input."""

    scan_id: str
    patient_id: str
    ct: Volume | None
    lesions: tuple[Lesion, ...]
    findings: tuple[Finding, ...]
    references: tuple[Reference, ...]
    skipped: tuple[str, ...]


def _annotations_by_patient(
    data: Path, annotation_dirs: Sequence[Path]
) -> tuple[dict[str, list[AnnotatedSlice]], dict[str, Path], list[str]]:
    """Annotated slices per patient from every annotation folder, and the patient folders."""
    if annotation_dirs:
        scans = [scan_dataset(data, a) for a in annotation_dirs]
    else:
        scans = [scan_dataset(data)]
    annotated: dict[str, list[AnnotatedSlice]] = {}
    folders: dict[str, Path] = {}
    sources = [str(s.annotations_dir) for s in scans if s.annotations_dir is not None]
    for scan in scans:
        for record in scan.patients:
            folders[record.patient_id] = scan.collection_dir / record.patient_id
            seen = {(a.sop_instance_uid, a.boxes) for a in annotated.get(record.patient_id, [])}
            for item in record.annotated:
                if (item.sop_instance_uid, item.boxes) not in seen:
                    annotated.setdefault(record.patient_id, []).append(item)
    return annotated, folders, sources


def _references(
    scan_id: str, ct: Volume, annotated: Sequence[AnnotatedSlice]
) -> tuple[list[Reference], str | None]:
    """Reference lesions of a study in mm, from the analysed series or a sibling series."""
    by_series: dict[str, list[AnnotatedSlice]] = {}
    for item in annotated:
        by_series.setdefault(item.series_instance_uid, []).append(item)
    if not by_series:
        return [], None
    note = None
    if ct.series_instance_uid in by_series:
        series_uid, volume = ct.series_instance_uid, ct
    else:
        series_uid = max(by_series, key=lambda uid: len(by_series[uid]))
        folders = {item.path.parent for item in by_series[series_uid]}
        files = sorted(f for folder in folders for f in folder.glob("*.dcm") if f.is_file())
        volume = load_ct_volume(
            [ds for ds in read_series(files) if str(ds.SeriesInstanceUID) == series_uid]
        )
        if volume.frame_of_reference_uid != ct.frame_of_reference_uid:
            return [], (
                f"reference boxes are on series {series_uid}, in another frame of reference "
                "than the analysed series: not used"
            )
        note = f"reference boxes mapped from series {series_uid} through patient coordinates"
    index = {ref.sop_instance_uid: n for n, ref in enumerate(volume.slices)}
    boxes = [
        SliceBox(index[item.sop_instance_uid], (x0, y0, x1, y1))
        for item in by_series[series_uid]
        for _, x0, y0, x1, y1 in item.boxes
    ]
    out = []
    for n, group in enumerate(group_slice_boxes(boxes), start=1):
        lo, hi = lesion_box_mm(group, volume.index_to_patient)
        out.append(
            Reference(GroundTruthLesion(scan_id, lo, hi, f"tumour {n}"), series_uid, group, volume)
        )
    return out, note


def _annotated_axes_mm(reference: Reference) -> dict[str, float]:
    """The annotated extent: the 3-D box's sides, and the largest per-slice box's longer side
    and diagonal (a RECIST long axis inside that box lies between the two)."""
    _, row_mm, col_mm = reference.volume.spacing
    sides = [
        ((x1 - x0 + 1) * col_mm, (y1 - y0 + 1) * row_mm)
        for x0, y0, x1, y1 in (b.box for b in reference.slice_lesion.slices)
    ]
    largest = max(sides, key=lambda s: s[0] * s[1])
    s0, s1 = reference.slice_lesion.slice_range
    return {
        "box_x_mm": round(max(s[0] for s in sides), 1),
        "box_y_mm": round(max(s[1] for s in sides), 1),
        "box_z_mm": round((s1 - s0 + 1) * reference.volume.spacing[0], 1),
        "largest_slice_box_long_side_mm": round(max(largest), 1),
        "largest_slice_box_diagonal_mm": round(math.hypot(*largest), 1),
    }


def evaluate_study_folder(
    patient_id: str,
    folder: Path,
    annotated: Sequence[AnnotatedSlice],
    settings: AnalysisSettings,
    model: LesionClassifier,
) -> list[StudyEvaluation]:
    """Analyse every study of one patient folder and build its references."""
    studies, _ = scan_folder(folder)
    out = []
    for study in studies:
        scan_id = patient_id if len(studies) == 1 else f"{patient_id}/{study.study_instance_uid}"
        analysis = analyze_study(study, settings, model)
        result, ct = analysis.result, analysis.ct
        skipped = list(result.skipped)
        references: list[Reference] = []
        if ct is not None:
            in_study = {s.series_instance_uid for s in study.series}
            mine = [a for a in annotated if a.series_instance_uid in in_study]
            references, note = _references(scan_id, ct, mine)
            if note:
                skipped.append(note)
        findings = tuple(
            Finding(scan_id, lesion.lesion_probability, lesion.centroid_mm, lesion.tracking_id)
            for lesion in result.lesions
        )
        out.append(
            StudyEvaluation(
                scan_id, patient_id, ct, result.lesions, findings, tuple(references), tuple(skipped)
            )
        )
    return out


def _finding_box_mm(lesion: Lesion, ct: Volume) -> GroundTruthLesion:
    """The 3-D box in mm of a finding's mask (voxel edges), as a box to intersect with."""
    idx = np.argwhere(lesion.mask)
    lo_i = idx.min(axis=0) + np.array(lesion.mask_origin) - 0.5
    hi_i = idx.max(axis=0) + np.array(lesion.mask_origin) + 0.5
    corners = np.array(
        [
            [s, r, c]
            for s in (lo_i[0], hi_i[0])
            for r in (lo_i[1], hi_i[1])
            for c in (lo_i[2], hi_i[2])
        ]
    )
    points = ct.index_to_patient(corners)
    lo, hi = points.min(axis=0), points.max(axis=0)
    return GroundTruthLesion(
        "", (float(lo[0]), float(lo[1]), float(lo[2])), (float(hi[0]), float(hi[1]), float(hi[2]))
    )


def _touches(lesion: Lesion, ct: Volume, reference: Reference) -> bool:
    """Whether the finding's mask has a voxel inside one of the tumour's annotated slice boxes
    (on that slice): the finding outlines part of the tumour, not something beside it."""
    idx = np.argwhere(lesion.mask) + np.array(lesion.mask_origin)
    if reference.volume is not ct:  # boxes on a sibling series: through patient coordinates
        idx = np.rint(reference.volume.patient_to_index(ct.index_to_patient(idx))).astype(int)
    for box in reference.slice_lesion.slices:
        x0, y0, x1, y1 = box.box
        on = idx[idx[:, 0] == box.slice_index]
        inside = (on[:, 1] >= y0) & (on[:, 1] <= y1) & (on[:, 2] >= x0) & (on[:, 2] <= x1)
        if inside.any():
            return True
    return False


def _boxes_intersect(a: GroundTruthLesion, b: GroundTruthLesion) -> bool:
    return all(
        al <= bh and bl <= ah
        for al, ah, bl, bh in zip(a.lo_mm, a.hi_mm, b.lo_mm, b.hi_mm, strict=True)
    )


def _summary(lesion: Lesion, **extra: Any) -> dict[str, Any]:
    """A finding in the report: its name, probability and long axis, and `extra` keys."""
    return {
        "finding": lesion.tracking_id,
        "probability": round(lesion.lesion_probability, 3),
        "long_axis_mm": round(lesion.long_axis_mm, 1),
        **extra,
    }


def reported(study: StudyEvaluation, threshold: float, max_findings: int = 0) -> list[int]:
    """Indices of the findings the node would report: at or above the threshold, at most
    `max_findings` of them (0: all), the most probable first (as `analyze_study` does)."""
    order = sorted(range(len(study.findings)), key=lambda n: -study.findings[n].score)
    kept = [n for n in order if study.findings[n].score >= threshold]
    return kept[:max_findings] if max_findings else kept


def study_row(
    study: StudyEvaluation,
    threshold: float,
    margin_mm: float = HIT_MARGIN_MM,
    max_findings: int = 0,
) -> dict[str, Any]:
    """Per-study figures as reported: at the reporting threshold, at most `max_findings` (0:
    no limit), the most probable first."""
    kept = reported(study, threshold, max_findings)
    findings = [study.findings[n] for n in kept]
    lesions = [study.lesions[n] for n in kept]
    matching = match_findings(findings, [r.lesion for r in study.references], margin_mm)
    tumours: list[dict[str, Any]] = []
    for n, reference in enumerate(study.references):
        touching = [
            i
            for i in matching.hits[n]
            if study.ct is not None
            and lesions[i].mask.any()
            and _touches(lesions[i], study.ct, reference)
        ]
        # The tumour's finding is the most probable one that outlines part of it; a more
        # probable hit that touches none of its boxes lies beside it.
        hits = touching + [i for i in matching.hits[n] if i not in touching]
        best = lesions[hits[0]] if hits else None
        tumours.append(
            {
                "name": reference.lesion.name,
                "slices": list(reference.slice_lesion.slice_range),
                "reference_series_uid": reference.series_instance_uid,
                "detected": bool(hits),
                # findings that outline part of the tumour (at least the one that hit it)
                "fragments": max(len(touching), 1) if hits else 0,
                "hits": [_summary(lesions[i], touches_annotated_boxes=i in touching) for i in hits],
                # hits by the centroid rule that touch none of its boxes: findings beside it
                "beside": [
                    _summary(lesions[i], key_slice=lesions[i].key_slice_index)
                    for i in hits[1:]
                    if i not in touching
                ],
                "best_finding_long_axis_mm": round(best.long_axis_mm, 1) if best else None,
                "false_positives_overlapping": [
                    _summary(lesions[i])
                    for i in matching.false_positives
                    if study.ct is not None
                    and lesions[i].mask.any()
                    and _boxes_intersect(_finding_box_mm(lesions[i], study.ct), reference.lesion)
                ],
                "annotated": _annotated_axes_mm(reference),
            }
        )
    return {
        "scan_id": study.scan_id,
        "analysed_series_uid": study.ct.series_instance_uid if study.ct is not None else None,
        "candidates_scored": len(study.findings),
        "findings": len(findings),
        "tumours": len(study.references),
        "true_positives": sum(t["detected"] for t in tumours),
        "false_positives": len(matching.false_positives),
        "extra_fragments": sum(max(0, int(t["fragments"]) - 1) for t in tumours),
        # what a reader must dismiss besides the tumours: FPs and findings beside a tumour
        "other_findings": len(matching.false_positives) + sum(len(t["beside"]) for t in tumours),
        "per_tumour": tumours,
        "false_positive_findings": [
            _summary(lesions[i], side=lesions[i].side, key_slice=lesions[i].key_slice_index)
            for i in matching.false_positives
        ],
        "notes": list(study.skipped),
    }


def _windowed(ct: Volume, s: int) -> np.ndarray:
    width, level = _LUNG_WINDOW
    return np.clip((ct.array[s].astype(np.float32) - (level - width / 2)) / width, 0.0, 1.0)


def _rect(r0: float, c0: float, r1: float, c1: float, colour: str, dashed: bool = False):
    return Rectangle(
        (c0 - 0.5, r0 - 0.5),
        c1 - c0 + 1,
        r1 - r0 + 1,
        fill=False,
        edgecolor=colour,
        linewidth=1.0,
        linestyle="--" if dashed else "-",
    )


def _reference_boxes_on(study: StudyEvaluation, s: int) -> list[tuple[int, int, int, int]]:
    """Reference boxes (xmin, ymin, xmax, ymax) on slice s of the analysed volume (only when
    the references are on the analysed series itself)."""
    if study.ct is None:
        return []
    return [
        b.box
        for r in study.references
        if r.series_instance_uid == study.ct.series_instance_uid
        for b in r.slice_lesion.slices
        if b.slice_index == s
    ]


def render_study_png(
    study: StudyEvaluation, threshold: float, path: Path, margin_mm: float = HIT_MARGIN_MM
) -> None:
    """Every finding of a study on its key slice (lung window), with its probability: red a
    false positive, yellow a hit on a tumour, orange a finding beside one (within the hit
    margin, touching none of its boxes); dashed when below the reporting threshold;
    reference boxes green. A first panel per tumour shows its middle annotated slice."""
    ct = study.ct
    if ct is None:
        return
    matching = match_findings(study.findings, [r.lesion for r in study.references], margin_mm)
    hit_by = {i: n for n, hits in matching.hits.items() for i in hits}
    panels: list[tuple[int, str, list[tuple[int, tuple[int, int, int, int], str, bool]]]] = []
    for reference in study.references:
        if reference.series_instance_uid != ct.series_instance_uid:
            continue
        s0, s1 = reference.slice_lesion.slice_range
        panels.append(((s0 + s1) // 2, f"{reference.lesion.name} (reference)", []))
    best = set()
    for n, hits in matching.hits.items():
        touching = [
            i
            for i in hits
            if study.lesions[i].mask.any() and _touches(study.lesions[i], ct, study.references[n])
        ]
        if hits:
            best.add((touching or hits)[0])
    order = sorted(range(len(study.findings)), key=lambda i: -study.findings[i].score)
    for i in order:
        lesion = study.lesions[i]
        if i not in hit_by:
            kind, colour = "FP", "red"
        else:
            reference = study.references[hit_by[i]]
            touches = lesion.mask.any() and _touches(lesion, ct, reference)
            kind = f"{'hit' if touches or i in best else 'beside'} {reference.lesion.name}"
            colour = "yellow" if touches or i in best else "orange"
        panels.append(
            (
                lesion.key_slice_index,
                f"{lesion.tracking_id} p={lesion.lesion_probability:.2f} {kind}\n"
                f"{lesion.long_axis_mm:.0f} mm, slice {lesion.key_slice_index}",
                [(i, lesion.box_rc, colour, lesion.lesion_probability < threshold)],
            )
        )
    cols = min(6, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    figure = Figure(figsize=(2.6 * cols, 2.9 * rows + 0.6), dpi=70)
    FigureCanvasAgg(figure)
    axes_grid = figure.subplots(rows, cols, squeeze=False)
    aspect = ct.spacing[1] / ct.spacing[2]
    for ax in axes_grid.ravel():
        ax.set_axis_off()
    for ax, (s, title, boxes) in zip(axes_grid.ravel(), panels, strict=False):
        _draw_panel(ax, ct, s, aspect, study, boxes, title)
    title = (
        f"{study.scan_id}: every candidate with its raw lesion score p (reporting threshold "
        f"{threshold:g}; dashed below it); reference green, hit yellow, beside a tumour orange, "
        f"FP red. {NOT_CLINICAL}"
    )
    figure.suptitle(textwrap.fill(title, width=int(2.6 * cols * 14)), fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=70)


def _draw_panel(
    ax: Axes,
    ct: Volume,
    s: int,
    aspect: float,
    study: StudyEvaluation,
    boxes: list[tuple[int, tuple[int, int, int, int], str, bool]],
    title: str,
) -> None:
    ax.imshow(_windowed(ct, s), cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
    for x0, y0, x1, y1 in _reference_boxes_on(study, s):
        ax.add_patch(_rect(y0, x0, y1, x1, "lime"))
    for _, (r0, c0, r1, c1), colour, dashed in boxes:
        pad = 4
        ax.add_patch(_rect(r0 - pad, c0 - pad, r1 + pad, c1 + pad, colour, dashed))
    body = np.nonzero(ct.array[s] > -500)
    if body[0].size:
        ax.set_xlim(body[1].min() - 5, body[1].max() + 5)
        ax.set_ylim(body[0].max() + 5, body[0].min() - 5)
    ax.set_title(title, fontsize=7)


def render_froc_png(curve: FrocCurve, path: Path, title: str) -> None:
    """The FROC curve (FPs per scan on a log axis) with the CPM's seven points."""
    figure = Figure(figsize=(6.0, 4.5), dpi=90)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    fps = np.maximum(curve.fps_per_scan, 1e-3)
    ax.plot(fps, curve.sensitivity, "-", color="tab:blue", label="operating points")
    rates = list(curve.cpm_points)
    ax.plot(rates, list(curve.cpm_points.values()), "o", color="tab:orange", label="CPM points")
    ax.set_xscale("log")
    ax.set_xlim(0.1, max(10.0, float(fps.max()) * 1.2))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity (tumours)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(
        f"{title}\nCPM {curve.cpm:.3f}; {curve.n_lesions} tumours, {curve.n_scans} scans, "
        f"hit margin {curve.margin_mm:g} mm. {NOT_CLINICAL}",
        fontsize=8,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def _report_md(summary: dict[str, Any]) -> str:
    lines = [
        "# Detector evaluation (lungnode evaluate-detector)",
        "",
        f"Model: {summary['model']['name']} {summary['model']['version']} "
        f"(sha256 {summary['model']['sha256'][:12]}), trained on: {summary['model']['trained_on']}",
        f"Data: {summary['data']}; annotations: {', '.join(summary['annotations'])}",
        f"Hit rule: {summary['hit_rule']}",
        "Leave one patient out: a figure is only valid for a scan the model was not trained on; "
        "check the training data above against the studies below.",
        "",
        f"Per study as reported: at the reporting threshold {summary['reporting_threshold']:g}, "
        f"at most {summary['settings']['max_findings_per_study'] or 'all'} findings per study "
        "(the most probable first):",
        "",
        "| study | findings | tumours | TP | fragments on tumours | beside a tumour | FP | "
        "other findings | finding long axis vs annotated (mm) | "
        "FPs overlapping a tumour, centre outside |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["studies"]:
        axes = "; ".join(
            f"{t['name']}: {t['best_finding_long_axis_mm'] or '-'} vs box "
            f"{t['annotated']['largest_slice_box_long_side_mm']}-"
            f"{t['annotated']['largest_slice_box_diagonal_mm']} in plane, "
            f"{t['annotated']['box_z_mm']} z"
            for t in row["per_tumour"]
        )
        fragments = ", ".join(str(t["fragments"]) for t in row["per_tumour"])
        overlapping = "; ".join(
            f"{f['finding']} {f['long_axis_mm']} mm p={f['probability']}"
            for t in row["per_tumour"]
            for f in t["false_positives_overlapping"]
        )
        beside = "; ".join(
            f"{f['finding']} {f['long_axis_mm']} mm p={f['probability']}"
            for t in row["per_tumour"]
            for f in t["beside"]
        )
        lines.append(
            f"| {row['scan_id']} | {row['findings']} | {row['tumours']} | "
            f"{row['true_positives']} | {fragments or '-'} | {beside or '-'} | "
            f"{row['false_positives']} | {row['other_findings']} | "
            f"{axes or '-'} | {overlapping or '-'} |"
        )
    froc_part = summary["froc"]
    at_rates = froc_part["sensitivity_at_fp_per_scan"].items()
    lines += [
        "",
        f"FROC over every scored candidate: CPM **{froc_part['cpm']:.3f}**; sensitivity at "
        + ", ".join(f"{k} FP/scan {v:.2f}" for k, v in at_rates),
        "",
        f"Pictures: {FROC_PNG}, <study>-findings.png. {NOT_CLINICAL}",
        "",
    ]
    return "\n".join(lines)


def evaluate_detector(
    data: Path,
    annotation_dirs: Sequence[Path],
    out: Path,
    *,
    settings: AnalysisSettings | None = None,
    margin_mm: float = HIT_MARGIN_MM,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the detector on every patient of `data`, write the report into `out`, return it."""
    settings = settings or AnalysisSettings()
    threshold = settings.lesion_probability_threshold
    limit = settings.max_findings_per_study
    scoring = dataclasses.replace(
        settings, lesion_probability_threshold=0.0, max_findings_per_study=0
    )
    annotated, folders, sources = _annotations_by_patient(Path(data), list(annotation_dirs))
    model = LesionClassifier.load(settings.model)
    studies: list[StudyEvaluation] = []
    for n, (patient_id, folder) in enumerate(sorted(folders.items()), start=1):
        if progress is not None:
            progress(f"{n}/{len(folders)} {patient_id}")
        studies += evaluate_study_folder(
            patient_id, folder, annotated.get(patient_id, []), scoring, model
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    findings = [f for s in studies for f in s.findings]
    references = [r.lesion for s in studies for r in s.references]
    curve = froc(findings, references, [s.scan_id for s in studies], margin_mm)
    info = model.info
    summary: dict[str, Any] = {
        "data": str(data),
        "annotations": sources,
        "model": {
            "name": info.name,
            "version": info.version,
            "sha256": info.sha256,
            "trained_on": info.trained_on,
        },
        "settings": {
            "lesion_probability_threshold": threshold,
            "max_findings_per_study": limit,
            "note": "every candidate is scored (threshold 0, no limit) for the FROC; counts per "
            "study are as reported: at the reporting threshold, at most max_findings_per_study",
        },
        "reporting_threshold": threshold,
        "hit_rule": f"a finding (its centroid) is on a tumour when it lies in the tumour's 3-D "
        f"reference box grown by {margin_mm:g} mm; several findings on one tumour count once "
        f"(the best), the others neither TP nor FP (LUNA16). Of those, a finding whose outline "
        f"touches one of the tumour's annotated slice boxes is a fragment (the tumour reported in "
        f"pieces); one that touches none lies beside the tumour and counts, with the FPs, among "
        f"the other findings a reader must dismiss",
        "studies": [study_row(s, threshold, margin_mm, limit) for s in studies],
        "froc": curve.as_dict(),
    }
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    (out / REPORT_MD).write_text(_report_md(summary))
    render_froc_png(curve, out / FROC_PNG, f"{info.name} {info.version} on {len(studies)} scans")
    for study in studies:
        name = study.scan_id.replace("/", "_")
        render_study_png(study, threshold, out / f"{name}-findings.png", margin_mm)
    return summary
