"""Stress test on real backgrounds: synthetic tumours inserted against the walls of real CT,
found by the node's own analysis or not (`lungnode stress-test`, `python -m
classifier.model.stress_cli`).

Per study of a TCIA-layout folder (the CT series `analyze_study` chooses, read as the node
reads it) and per position class (classifier.datasets.wall_positions), `per_position`
tumours are inserted, one per copy of the volume (an analysis takes about a second, so no two
tumours share a volume and none can be cut off by another or by the per-study limit). Each
tumour's size band, shape, collapse and lung side follow from its index and its study's place
in the run, its diameter and look from a generator seeded by (seed, study, position, index):
the same call gives the same tumours.

Each modified volume goes through `classifier.analyze.lesions_of` (the findings the node
reports: bundled model, default threshold and per-study limit unless told otherwise). Scored:
- found as one: exactly one reported finding whose mask overlaps the inserted tumour's;
- long-axis error: that finding's long axis against the tumour's true long axis (measured as
  the detector measures a finding: RECIST on the slice of largest area);
- hit: found as one with the long axis within AXIS_TOLERANCE and at least HIT_MIN_ON_TUMOUR of
  the finding's outline on the tumour (a finding that is mostly the tumour's collapse or the
  vessels beside it, touching the tumour, does not outline it);
- other findings: reported findings overlapping neither the tumour, nor its collapse wedge,
  nor the study's own tumour (annotated boxes, `insertion.dense_masses`).
The issue's target: at least TARGET_HIT_RATE hits and at most MAX_OTHER_FINDINGS other findings
on every modified study. Figures are given per position class and per size band (of the true
long axis); a tumour that finds no place in either lung (the lung cut by the scan's edge, too
thin, or too near the study's own tumour) is counted as not placed, not as missed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import string
import textwrap
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from classifier.analyze import lesions_of
from classifier.datasets.insertion import (
    SHAPES,
    InsertedTumour,
    StudyAnatomy,
    TumourSpec,
    insert,
    place,
    study_anatomy,
)
from classifier.datasets.tcia_dataset import AnnotatedSlice
from classifier.datasets.wall_positions import POSITION_NAMES, POSITIONS
from classifier.imaging.volume import Volume
from classifier.model.detector_eval import (
    NOT_CLINICAL,
    StudyEvaluation,
    _annotations_by_patient,
    evaluate_study_folder,
)
from classifier.model.inference import LesionClassifier
from classifier.model.model_card import replace_card_section
from classifier.settings import AnalysisSettings
from classifier.types import Lesion, ModelInfo

log = logging.getLogger("lungnode.stress")

SIZE_BANDS = ((15.0, 30.0), (30.0, 60.0), (60.0, 90.0))
AXIS_TOLERANCE = 0.3
# A hit's outline lies at least this much on the tumour: issue 16 asks for the mass outlined to
# its own border, and a finding of collapse or vessels that only touches it is not that (the
# grid once counted a hilar "hit" that was 98 % collapse wedge and 1 % tumour).
HIT_MIN_ON_TUMOUR = 0.5
TARGET_HIT_RATE = 0.9
MAX_OTHER_FINDINGS = 2
SUMMARY_JSON = "stress.json"
REPORT_MD = "stress.md"
CARD_START = "<!-- stress-test: written by classifier.model.stress -->"
CARD_END = "<!-- /stress-test -->"
SECTION_TEMPLATE = "STRESS_SECTION.md.tmpl"
_PANEL_MM = 70.0  # half-width of a picture's crop at least


def band_of(diameter_mm: float) -> str:
    """The size band a diameter falls in, e.g. '30-60 mm'."""
    for low, high in SIZE_BANDS:
        if diameter_mm < high or high == SIZE_BANDS[-1][1]:
            return f"{low:g}-{high:g} mm"
    raise AssertionError(diameter_mm)


def spec_for(
    scan_number: int, position: str, index: int, rng: np.random.Generator, side: str | None = None
) -> TumourSpec:
    """The index-th tumour of a position in the scan_number-th study: size band, shape,
    collapse and side cycle with the indices (each position gets every band and shape), the
    diameter is drawn in its band."""
    p = POSITIONS.index(position)
    low, high = SIZE_BANDS[(index + p + scan_number) % len(SIZE_BANDS)]
    return TumourSpec(
        position=position,
        side=side or ("right", "left")[(index + scan_number) % 2],
        diameter_mm=round(float(rng.uniform(low, high)), 1),
        shape=SHAPES[(index + scan_number) % len(SHAPES)],
        collapse=(index + p) % 2 == 1,
    )


def _voxels(lesion: Lesion) -> np.ndarray:
    return np.argwhere(lesion.mask) + np.array(lesion.mask_origin)


def _overlap(points: np.ndarray, origin: Sequence[int], mask: np.ndarray) -> int:
    """How many index points fall on a cropped mask."""
    local = points - np.array(origin)
    inside = np.all((local >= 0) & (local < np.array(mask.shape)), axis=1)
    return int(np.count_nonzero(mask[tuple(local[inside].T)]))


def _on_keep_out(points: np.ndarray, anatomy: StudyAnatomy) -> bool:
    """Whether index points touch the study's own tumour (the keep-out mask)."""
    f = anatomy.lungs.factor
    shape = np.array(anatomy.keep_out.shape)
    small = np.minimum(points // np.array([1, f, f]), shape - 1)
    return bool(anatomy.keep_out[tuple(small.T)].any())


@dataclass(frozen=True)
class _Picture:
    """What a panel shows: the tumour's key slice around it, with the outlines on it."""

    image: np.ndarray
    tumour: np.ndarray
    collapse: np.ndarray
    findings: list[tuple[np.ndarray, str]]
    aspect: float
    title: str


def _picture(
    ct: Volume, tumour: InsertedTumour, lesions: Sequence[Lesion], kinds: Sequence[str], title: str
) -> _Picture:
    s = tumour.key_slice_index
    half = max(_PANEL_MM, 0.9 * tumour.placement.spec.diameter_mm)
    centre = np.rint(ct.patient_to_index(np.array(tumour.placement.centre_mm))).astype(int)
    r0 = max(0, centre[1] - int(half / ct.spacing[1]))
    r1 = min(ct.shape[1], centre[1] + int(half / ct.spacing[1]))
    c0 = max(0, centre[2] - int(half / ct.spacing[2]))
    c1 = min(ct.shape[2], centre[2] + int(half / ct.spacing[2]))

    def plane(mask: np.ndarray, origin: Sequence[int]) -> np.ndarray:
        out = np.zeros((ct.shape[1], ct.shape[2]), dtype=bool)
        k = s - origin[0]
        if 0 <= k < mask.shape[0]:
            rows = slice(origin[1], origin[1] + mask.shape[1])
            cols = slice(origin[2], origin[2] + mask.shape[2])
            out[rows, cols] = mask[k]
        return out[r0:r1, c0:c1]

    return _Picture(
        image=np.asarray(ct.array[s, r0:r1, c0:c1], dtype=np.float32),
        tumour=plane(tumour.mask, tumour.origin),
        collapse=plane(tumour.collapse, tumour.origin),
        findings=[
            (plane(lesion.mask, lesion.mask_origin), kind)
            for lesion, kind in zip(lesions, kinds, strict=True)
        ],
        aspect=ct.spacing[1] / ct.spacing[2],
        title=title,
    )


def evaluate_insertion(
    ct: Volume,
    anatomy: StudyAnatomy,
    tumour: InsertedTumour,
    settings: AnalysisSettings,
    model: LesionClassifier,
    study_uid: str = "",
) -> tuple[dict[str, Any], list[Lesion], list[str]]:
    """Analyse the volume holding `tumour` as the node does and score it (module docstring);
    also the findings and what each is ('tumour', 'collapse', 'own tumour', 'other')."""
    lesions = lesions_of(ct, None, settings, model, study_uid)
    kinds: list[str] = []
    on_tumour: list[int] = []
    share: dict[int, float] = {}
    for n, lesion in enumerate(lesions):
        points = _voxels(lesion)
        overlap = _overlap(points, tumour.origin, tumour.mask)
        if overlap:
            kinds.append("tumour")
            on_tumour.append(n)
            share[n] = overlap / len(points)
        elif tumour.collapse.any() and _overlap(points, tumour.origin, tumour.collapse):
            kinds.append("collapse")
        elif _on_keep_out(points, anatomy):
            kinds.append("own tumour")
        else:
            kinds.append("other")
    spec = tumour.placement.spec
    best = lesions[on_tumour[0]] if on_tumour else None
    error = (best.long_axis_mm - tumour.long_axis_mm) / tumour.long_axis_mm if best else None
    one = len(on_tumour) == 1
    outlines = one and share[on_tumour[0]] >= HIT_MIN_ON_TUMOUR
    row = {
        "position": spec.position,
        "side": spec.side,
        "diameter_mm": spec.diameter_mm,
        "size_band": band_of(tumour.long_axis_mm),
        "shape": spec.shape,
        "collapse": spec.collapse,
        "centre_mm": [round(v, 1) for v in tumour.placement.centre_mm],
        "true_long_axis_mm": round(tumour.long_axis_mm, 1),
        "true_volume_ml": round(tumour.measured.volume_ml, 1),
        "key_slice": tumour.key_slice_index,
        "mean_hu": round(tumour.mean_hu, 1),
        "findings_on_tumour": len(on_tumour),
        "found_as_one": one,
        "finding_long_axis_mm": round(best.long_axis_mm, 1) if best else None,
        "finding_probability": round(best.lesion_probability, 3) if best else None,
        "long_axis_error": round(error, 3) if error is not None else None,
        "finding_on_tumour_share": round(share[on_tumour[0]], 3) if best else None,
        "hit": bool(outlines and error is not None and abs(error) <= AXIS_TOLERANCE),
        "findings_on_collapse": kinds.count("collapse"),
        "findings_on_own_tumour": kinds.count("own tumour"),
        "other_findings": kinds.count("other"),
    }
    return row, lesions, kinds


def _aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts and rates of a group of insertions."""
    placed = [r for r in rows if r.get("placed", True)]
    n = len(placed)
    errors = [abs(r["long_axis_error"]) for r in placed if r["found_as_one"]]
    return {
        "inserted": n,
        "not_placed": len(rows) - n,
        "found": sum(r["findings_on_tumour"] > 0 for r in placed),
        "found_as_one": sum(r["found_as_one"] for r in placed),
        "hits": sum(r["hit"] for r in placed),
        "hit_rate": round(sum(r["hit"] for r in placed) / n, 3) if n else None,
        "median_abs_long_axis_error": round(float(np.median(errors)), 3) if errors else None,
        "max_other_findings": max((r["other_findings"] for r in placed), default=0),
        "mean_other_findings": round(float(np.mean([r["other_findings"] for r in placed])), 2)
        if n
        else None,
    }


def _study_rows(
    scan_number: int,
    study: StudyEvaluation,
    positions: Sequence[str],
    per_position: int,
    seed: int,
    settings: AnalysisSettings,
    model: LesionClassifier,
    pictures: dict[str, list[_Picture]],
    progress: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Insert and score every tumour of one study; the rows and the study's baseline."""
    assert study.ct is not None
    ct = study.ct.with_array(np.array(study.ct.array, copy=True))
    boxes = [(r.lesion.lo_mm, r.lesion.hi_mm) for r in study.references]
    anatomy = study_anatomy(ct, boxes)
    baseline = study.lesions  # what the node reports on the study as it is
    base_kinds = ["own tumour" if _on_keep_out(_voxels(x), anatomy) else "other" for x in baseline]
    study_info = {
        "scan_id": study.scan_id,
        "ct_series_uid": ct.series_instance_uid,
        "shape": list(ct.shape),
        "spacing_mm": [round(v, 3) for v in ct.spacing],
        "noise_sd_hu": round(anatomy.noise_sd_hu, 1),
        "annotated_tumours": len(study.references),
        "own_tumour_ml": round(
            float(np.count_nonzero(anatomy.keep_out) * np.prod(anatomy.lungs.spacing) / 1000), 1
        ),
        "baseline_findings": len(baseline),
        "baseline_other_findings": base_kinds.count("other"),
    }
    rows: list[dict[str, Any]] = []
    for position in positions:
        for index in range(per_position):
            key = [seed, zlib.crc32(study.scan_id.encode()), POSITIONS.index(position), index]
            rng = np.random.default_rng(key)
            spec = spec_for(scan_number, position, index, rng)
            placement = place(ct, anatomy, spec, rng)
            if placement is None:  # the other lung, same tumour
                other = "left" if spec.side == "right" else "right"
                spec = dataclasses.replace(spec, side=other)
                placement = place(ct, anatomy, spec, rng)
            if placement is None:
                rows.append(
                    {
                        "scan_id": study.scan_id,
                        "position": position,
                        "index": index,
                        "diameter_mm": spec.diameter_mm,
                        "size_band": band_of(spec.diameter_mm),
                        "placed": False,
                        "why": "no place for it in either lung (lung cut by the scan's edge, "
                        "too thin, or too near the study's own tumour)",
                    }
                )
                progress(f"{study.scan_id} {position} #{index}: not placed")
                continue
            original = ct.array.copy()
            tumour = insert(ct, anatomy, placement, rng)
            row, lesions, kinds = evaluate_insertion(ct, anatomy, tumour, settings, model, "1.2.3")
            row = {"scan_id": study.scan_id, "index": index, "placed": True, **row}
            rows.append(row)
            verdict = (
                "hit"
                if row["hit"]
                else f"{row['findings_on_tumour']} finding(s) on it, axis error "
                f"{row['long_axis_error']}, {row['finding_on_tumour_share'] or 0:.0%} of it on "
                "the tumour"
            )
            title = (
                f"{study.scan_id.removeprefix('Lung_Dx-')} {spec.side} {spec.diameter_mm:g} mm "
                f"{spec.shape}{' +collapse' if spec.collapse else ''}\ntrue "
                f"{row['true_long_axis_mm']:g} mm, found "
                f"{row['finding_long_axis_mm'] or '-'} mm; {verdict}; other {row['other_findings']}"
            )
            pictures.setdefault(position, []).append(_picture(ct, tumour, lesions, kinds, title))
            ct.array[...] = original
            progress(f"{study.scan_id} {position} #{index}: {title.replace(chr(10), '; ')}")
    return rows, study_info


_COLOURS = {"tumour": "yellow", "collapse": "orange", "own tumour": "magenta", "other": "red"}


def render_position_png(position: str, pictures: Sequence[_Picture], path: Path) -> None:
    """One panel per insertion of a position class: the tumour's key slice (lung window),
    inserted tumour green, collapse cyan dashed, findings on it yellow, on the collapse
    orange, other findings red."""
    cols = min(5, max(1, len(pictures)))
    rows = max(1, math.ceil(len(pictures) / cols))
    figure = Figure(figsize=(3.2 * cols, 3.4 * rows + 0.6), dpi=60)
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, cols, squeeze=False)
    for ax in grid.ravel():
        ax.set_axis_off()
    for ax, pic in zip(grid.ravel(), pictures, strict=False):
        ax.imshow(
            np.clip((pic.image + 1350.0) / 1500.0, 0, 1),
            cmap="gray",
            vmin=0,
            vmax=1,
            aspect=pic.aspect,
            interpolation="nearest",
        )
        if pic.tumour.any():
            ax.contour(pic.tumour, [0.5], colors="lime", linewidths=0.8)
        if pic.collapse.any():
            ax.contour(pic.collapse, [0.5], colors="cyan", linewidths=0.6, linestyles="--")
        for mask, kind in pic.findings:
            if mask.any():
                ax.contour(mask, [0.5], colors=_COLOURS[kind], linewidths=0.8)
        ax.set_title(pic.title, fontsize=6)
    title = (
        f"Inserted against the {POSITION_NAMES[position]}: tumour green, collapse cyan, findings "
        f"on it yellow (collapse orange, own tumour magenta, other red). {NOT_CLINICAL}"
    )
    figure.suptitle(textwrap.fill(title, width=int(3.2 * cols * 16)), fontsize=7)
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=60)
    compact_png(path)


def compact_png(path: Path, colours: int = 64, scale: float = 1.0, to: Path | None = None) -> None:
    """Re-save a picture (into `to`, or in place) with a palette of `colours`, `scale`d:
    about a third of the bytes at 64 colours, small enough to keep beside the model card
    at 32 colours and 0.75 of the size."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
        if scale != 1.0:
            size = (round(rgb.width * scale), round(rgb.height * scale))
            rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        small = rgb.quantize(colors=colours)
    small.save(to or path, format="PNG", optimize=True)


def install_card(summary: dict[str, Any], out: Path, card: Path, command: str) -> None:
    """Put the stress-test section into `card` and its pictures (smaller copies of those in
    `out`) beside it, into stress-test/."""
    folder = card.parent / "stress-test"
    folder.mkdir(exist_ok=True)
    for position in summary["positions"]:
        name = f"stress-{position}.png"
        compact_png(out / name, colours=32, scale=0.75, to=folder / name)
    pictures = ", ".join(f"[{p}](stress-test/stress-{p}.png)" for p in summary["positions"])
    replace_card_section(card, CARD_START, CARD_END, card_section(summary, command, pictures))


def _table(groups: dict[str, dict[str, Any]], label: str) -> list[str]:
    lines = [
        f"| {label} | inserted | not placed | found | found as one | hits (one, axis within "
        f"{AXIS_TOLERANCE:.0%}, at least {HIT_MIN_ON_TUMOUR:.0%} of it on the tumour) | median "
        "axis error | most other findings |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, g in groups.items():
        rate = f"{g['hit_rate']:.0%}" if g["hit_rate"] is not None else "-"
        err = g["median_abs_long_axis_error"]
        lines.append(
            f"| {name} | {g['inserted']} | {g['not_placed']} | {g['found']} | "
            f"{g['found_as_one']} | {g['hits']} ({rate}) | "
            f"{f'{err:.0%}' if err is not None else '-'} | {g['max_other_findings']} |"
        )
    return lines


def report_md(summary: dict[str, Any]) -> str:
    """The Markdown report of a run."""
    total = summary["overall"]
    lines = [
        "# Stress test on real backgrounds (lungnode stress-test)",
        "",
        f"Model: {summary['model']['name']} {summary['model']['version']} (sha256 "
        f"{summary['model']['sha256'][:12]}); threshold "
        f"{summary['settings']['lesion_probability_threshold']:g}, at most "
        f"{summary['settings']['max_findings_per_study']} findings per study. Seed "
        f"{summary['seed']}, {summary['per_position']} tumours per position and study, one per "
        f"copy of the volume; {summary['elapsed_s']:.0f} s.",
        "",
        f"Overall: **{total['hits']}/{total['inserted']} hits ({(total['hit_rate'] or 0):.0%})**"
        f" (target {TARGET_HIT_RATE:.0%}); at most {total['max_other_findings']} other findings "
        f"on a modified study (target {MAX_OTHER_FINDINGS}); target met: "
        f"**{'yes' if summary['target_met'] else 'no'}**.",
        "",
        *_table(summary["by_position"], "position"),
        "",
        *_table(summary["by_size"], "size band"),
        "",
        "| study | noise sd HU | own tumour kept out (ml) | findings before insertion (other) |",
        "|---|---|---|---|",
        *[
            f"| {s['scan_id']} | {s['noise_sd_hu']} | {s['own_tumour_ml']} | "
            f"{s['baseline_findings']} ({s['baseline_other_findings']}) |"
            for s in summary["studies"]
        ],
        "",
        f"Pictures: {', '.join(f'stress-{p}.png' for p in summary['positions'])}. {NOT_CLINICAL}",
        "",
    ]
    return "\n".join(lines)


@dataclass
class _PatientResult:
    """What one patient folder gives the run: its studies' rows and facts, the pictures per
    position, the progress lines, and the scan number the next patient starts at."""

    rows: list[dict[str, Any]]
    studies: list[dict[str, Any]]
    pictures: dict[str, list[_Picture]]
    messages: list[str]
    first_scan: int
    next_scan: int
    model: ModelInfo


@dataclass(frozen=True)
class _Grid:
    """The part of a run every study shares (sent to each worker process)."""

    positions: tuple[str, ...]
    per_position: int
    seed: int
    settings: AnalysisSettings


def _patient_result(
    patient_id: str,
    folder: Path,
    annotated: Sequence[AnnotatedSlice],
    first_scan: int,
    grid: _Grid,
    model: LesionClassifier,
    progress: Callable[[str], None],
) -> _PatientResult:
    """Analyse the studies of one patient folder and insert into each; scan numbers (which
    cycle the tumours' bands, shapes and sides) go on from `first_scan`."""
    result = _PatientResult([], [], {}, [], first_scan, first_scan, model.info)

    def say(message: str) -> None:
        result.messages.append(message)
        progress(message)

    for study in evaluate_study_folder(patient_id, folder, annotated, grid.settings, model):
        if study.ct is None:
            say(f"{study.scan_id}: no CT analysed ({'; '.join(study.skipped)})")
            continue
        study_rows, study_info = _study_rows(
            result.next_scan,
            study,
            grid.positions,
            grid.per_position,
            grid.seed,
            grid.settings,
            model,
            result.pictures,
            say,
        )
        result.rows += study_rows
        result.studies.append(study_info)
        result.next_scan += 1
    return result


_worker_model: list[LesionClassifier] = []  # the model a worker process loaded, once


def _load_worker_model(settings: AnalysisSettings) -> None:
    """Pool initializer: each worker process loads the model itself (spawned, no TF fork)."""
    _worker_model.append(LesionClassifier.load(settings.model))


def _worker_patient(
    task: tuple[str, Path, Sequence[AnnotatedSlice], int, _Grid],
) -> _PatientResult:  # pragma: no cover - runs in a spawned process (test_stress_parallel)
    patient_id, folder, annotated, first_scan, grid = task
    return _patient_result(
        patient_id, folder, annotated, first_scan, grid, _worker_model[0], lambda _m: None
    )


def _patient_results(
    tasks: Sequence[tuple[str, Path, Sequence[AnnotatedSlice]]],
    grid: _Grid,
    workers: int,
    progress: Callable[[str], None],
) -> list[_PatientResult]:
    """Every patient's result in the order of `tasks`, as a serial run gives them.

    With several workers, patient k is started assuming one study with CT per patient before
    it (the TCIA layout); a patient whose first scan number turns out otherwise is done again
    with the right one, so the tumours are those of the serial run whatever the layout."""
    if workers <= 1 or len(tasks) <= 1:
        model = LesionClassifier.load(grid.settings.model)
        results: list[_PatientResult] = []
        scan = 0
        for patient_id, folder, annotated in tasks:
            results.append(
                _patient_result(patient_id, folder, annotated, scan, grid, model, progress)
            )
            scan = results[-1].next_scan
        return results
    context = multiprocessing.get_context("spawn")
    with context.Pool(
        min(workers, len(tasks)), initializer=_load_worker_model, initargs=(grid.settings,)
    ) as pool:
        guessed = pool.imap(
            _worker_patient,
            [(p, f, a, k, grid) for k, (p, f, a) in enumerate(tasks)],
            chunksize=1,
        )
        results = []
        scan = 0
        for (patient_id, folder, annotated), result in zip(tasks, guessed, strict=True):
            if result.first_scan != scan:
                result = pool.apply(_worker_patient, ((patient_id, folder, annotated, scan, grid),))
            for message in result.messages:
                progress(message)
            results.append(result)
            scan = result.next_scan
    return results


def run_stress(
    data: Path,
    annotation_dirs: Sequence[Path],
    out: Path,
    *,
    per_position: int = 3,
    seed: int = 0,
    positions: Sequence[str] = POSITIONS,
    patients: Sequence[str] | None = None,
    settings: AnalysisSettings | None = None,
    progress: Callable[[str], None] = lambda _m: None,
    workers: int = 1,
) -> dict[str, Any]:
    """Run the stress test on the studies of `data` (only `patients`, folder names, when
    given), write stress.json, stress.md and stress-<position>.png into `out`, return it.

    `workers` > 1 analyses that many patient folders at once in spawned processes (each loads
    the model and holds one study's CT, about 1.2 GB at peak); the results are the serial
    run's, in its order."""
    unknown = [p for p in positions if p not in POSITIONS]
    if unknown:
        raise ValueError(f"positions {unknown} are not among {POSITIONS}")
    if per_position < 1:
        raise ValueError(f"per_position {per_position} must be at least 1")
    if workers < 1:
        raise ValueError(f"workers {workers} must be at least 1")
    started = time.monotonic()
    settings = settings or AnalysisSettings()
    annotated, folders, sources = _annotations_by_patient(Path(data), list(annotation_dirs))
    chosen = sorted(folders) if patients is None else list(patients)
    missing = [p for p in chosen if p not in folders]
    if missing:
        raise ValueError(f"patients {missing} are not in {data} (it holds {sorted(folders)})")
    grid = _Grid(tuple(positions), per_position, seed, settings)
    tasks = [(p, folders[p], annotated.get(p, [])) for p in chosen]
    rows: list[dict[str, Any]] = []
    studies: list[dict[str, Any]] = []
    pictures: dict[str, list[_Picture]] = {}
    results = _patient_results(tasks, grid, workers, progress)
    for result in results:
        rows += result.rows
        studies += result.studies
        for position, panels in result.pictures.items():
            pictures.setdefault(position, []).extend(panels)
    placed = [r for r in rows if r["placed"]]
    overall = _aggregate(rows)
    info = results[0].model if results else LesionClassifier.load(settings.model).info
    summary: dict[str, Any] = {
        "data": str(data),
        "annotations": sources,
        "model": {"name": info.name, "version": info.version, "sha256": info.sha256},
        "settings": {
            "lesion_probability_threshold": settings.lesion_probability_threshold,
            "max_findings_per_study": settings.max_findings_per_study,
        },
        "seed": seed,
        "per_position": per_position,
        "positions": list(positions),
        "target": {
            "hit_rate": TARGET_HIT_RATE,
            "axis_tolerance": AXIS_TOLERANCE,
            "max_other_findings": MAX_OTHER_FINDINGS,
        },
        "overall": overall,
        "target_met": bool(
            placed
            and overall["hit_rate"] >= TARGET_HIT_RATE
            and overall["max_other_findings"] <= MAX_OTHER_FINDINGS
        ),
        "by_position": {p: _aggregate([r for r in rows if r["position"] == p]) for p in positions},
        "by_size": {
            band_of(low): _aggregate([r for r in rows if r["size_band"] == band_of(low)])
            for low, _ in SIZE_BANDS
        },
        "studies": studies,
        "insertions": rows,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    (out / REPORT_MD).write_text(report_md(summary))
    for position in positions:
        render_position_png(position, pictures.get(position, []), out / f"stress-{position}.png")
    return summary


def card_section(summary: dict[str, Any], command: str, pictures: str) -> str:
    """The model card's stress-test section (templates/STRESS_SECTION.md.tmpl)."""
    text = resources.files("classifier.model").joinpath("templates", SECTION_TEMPLATE)
    template = string.Template(text.read_text())
    total = summary["overall"]
    return template.substitute(
        start=CARD_START,
        end=CARD_END,
        model=f"{summary['model']['name']} {summary['model']['version']} (sha256 "
        f"{summary['model']['sha256'][:12]})",
        studies=", ".join(s["scan_id"] for s in summary["studies"]),
        per_position=summary["per_position"],
        seed=summary["seed"],
        hits=total["hits"],
        inserted=total["inserted"],
        hit_rate=f"{(total['hit_rate'] or 0):.0%}",
        max_other=total["max_other_findings"],
        target_rate=f"{TARGET_HIT_RATE:.0%}",
        tolerance=f"{AXIS_TOLERANCE:.0%}",
        on_tumour=f"{HIT_MIN_ON_TUMOUR:.0%}",
        target_other=MAX_OTHER_FINDINGS,
        met="met" if summary["target_met"] else "not met",
        by_position="\n".join(_table(summary["by_position"], "position")),
        by_size="\n".join(_table(summary["by_size"], "size band")),
        pictures=pictures,
        elapsed=f"{summary['elapsed_s']:.0f}",
        command=command,
    )
