"""The CNN's lesion score with real negatives, judged leave-one-patient-out, and its calibration.

    python -m classifier.model.lopo --data ../shared/data/lung-pet-ct-dx \
        --annotations ../shared/data/lung-pet-ct-dx/Annotation \
        --annotations tests/data/annotations-approximate --phantoms PHANTOM_TCIA_FOLDER \
        --out OUT [--epochs 6 10 14 20] [--seed 0] [--install]

Per real patient (a TCIA-layout folder with tumour boxes) it builds, on the CT series the
analysis chooses: negatives = every detector candidate away from the tumour boxes (jittered
copies) and random points of the lungs and of the soft tissue at their edges, away from the
tumours; positives = points inside the patient's tumour boxes and synthetic solid lesions
(lobulated spheres of 5-100 mm, partial volume and noise) inserted into that patient's lungs,
and tumours of the stress test's generator against its walls (every shape, with and without
collapse; `_add_wall_tumours`), so the network sees real anatomy around them. Phantom patches
(`lungnode synth` folder) keep the phantom positives and are the only patches the histology
head learns from.

Each fold starts from the bundled phantom-trained model and is fine-tuned on the phantoms and
the real patches of all patients but one; the held-out patient's detector candidates are scored
with it (FROC and CPM per held-out patient, and pooled over the folds: never a figure on a
scan the fold trained on). Each fold is scored after each epoch count of --epochs, and the
count whose held-out rows find the most tumours at 0.5 (then the fewest false positives, the
best CPM and patch AUC, the shorter) trains the final model (`_epoch_objective`). The reporting
threshold is chosen on the pooled held-out scores at that count: the lowest, not below 0.5, at
which no held-out scan has more than MAX_FP_PER_SCAN false positives.
A fold holds out a patient (every annotated study of it), and its model at the chosen count is
kept (OUT/folds/<patient>.keras, sha256 in lopo.json). The final model is fine-tuned on every
patient; with --install it replaces the bundled model, its metadata records the
leave-one-patient-out figures, the threshold and the folds' sha256, the folds are copied beside
it (`held_out_models.folds_dir`: the real-CT protocol scores each patient with the fold that
held it out), and the bundled MODEL_CARD.md gets (or has replaced) its section on real CT
(`real_ct_section`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classifier.datasets.insertion import (
    MIN_DIAMETER_MM,
    SHAPES,
    TumourSpec,
    insert,
    place,
    study_anatomy,
)
from classifier.datasets.wall_positions import POSITIONS
from classifier.imaging.lung_mask import lung_mask, upsample
from classifier.imaging.volume import Volume
from classifier.model.detector_eval import (
    StudyEvaluation,
    _annotations_by_patient,
    evaluate_study_folder,
)
from classifier.model.evaluation import roc_auc
from classifier.model.froc import HIT_MARGIN_MM, Finding, GroundTruthLesion, froc, match_findings
from classifier.model.model_card import replace_card_section
from classifier.model.patch_set import PatchSet, build_patch_set, scan
from classifier.model.patches import extract_patch
from classifier.settings import AnalysisSettings
from classifier.types import HISTOLOGY_CLASSES

log = logging.getLogger("lungnode.lopo")

MAX_FP_PER_SCAN = 2
CANDIDATE_COPIES = 6  # jittered patches per detector candidate away from the tumours
RANDOM_NEGATIVES = 160  # per patient, half on soft tissue at the lungs' edges and vessels
TUMOUR_POSITIVES = 30  # per patient, points inside its tumour boxes
INSERTED_POSITIVES = 90  # per patient, synthetic lesions in its lungs
INSERTED_MIN_RADIUS_MM = 2.5  # log-uniform radii: from small solid nodules (5 mm across)
INSERTED_MAX_RADIUS_MM = 50.0  # up to masses wider than the patch
KEEP_OUT_MM = 15.0  # negatives this far from any tumour box at least
# per patient with --wall-positives, tumours of the stress test's generator against the walls
# (every shape): tried in issue 16 (model card, "score below 0.5"), not used by the bundled model
WALL_POSITIVES = 45
WALL_MAX_MM = 80.0  # diameters log-uniform from insertion.MIN_DIAMETER_MM
LEARNING_RATE = 3e-4
# Fine-tuning lengths to try with several --epochs (each fold scored after each, the count chosen
# on held-out rows); issue 16 tried 6 10 14 20 (model card, "score below 0.5").
EPOCH_CHOICES = (6,)


@dataclass
class RealPatient:
    """One real patient's analysed CT, its candidates' patches and its training patches."""

    scan_id: str
    study: StudyEvaluation
    candidate_patches: np.ndarray  # one per detector candidate, where analyze() scores it
    patches: np.ndarray
    is_lesion: np.ndarray
    kinds: np.ndarray


def _box_index(ct: Volume, lesion: GroundTruthLesion) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array(
        [
            [x, y, z]
            for x in (lesion.lo_mm[0], lesion.hi_mm[0])
            for y in (lesion.lo_mm[1], lesion.hi_mm[1])
            for z in (lesion.lo_mm[2], lesion.hi_mm[2])
        ]
    )
    idx = ct.patient_to_index(corners)
    return idx.min(axis=0), idx.max(axis=0)


def _far_from(
    points: np.ndarray, boxes: list[tuple[np.ndarray, np.ndarray]], ct: Volume, margin_mm: float
) -> np.ndarray:
    """Which index points lie at least margin_mm outside every box (index-space boxes)."""
    keep = np.ones(len(points), dtype=bool)
    spacing = np.asarray(ct.spacing)
    for lo, hi in boxes:
        gap = np.maximum(np.maximum(lo - points, points - hi), 0.0) * spacing
        keep &= np.linalg.norm(gap, axis=1) >= margin_mm
    return keep


def insert_lesion(
    array: np.ndarray,
    spacing: Sequence[float],
    centre: Sequence[int],
    radius_mm: float,
    rng: np.random.Generator,
) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Blend a lobulated solid lesion (20-60 HU, noise) into `array` in place; return the
    window changed and its previous content (to restore)."""
    reach = [int(np.ceil(1.3 * radius_mm / s)) + 2 for s in spacing]
    window = tuple(
        slice(max(0, c - r), min(n, c + r + 1))
        for c, r, n in zip(centre, reach, array.shape, strict=True)
    )
    before = array[window].copy()
    grids = np.meshgrid(
        *[
            (np.arange(w.start, w.stop) - c) * s
            for w, c, s in zip(window, centre, spacing, strict=True)
        ],
        indexing="ij",
    )
    z, y, x = grids
    dist = np.sqrt(z * z + y * y + x * x)
    theta = np.arctan2(y, x)
    phi = np.arctan2(z, np.hypot(x, y))
    lobes = 1.0 + sum(
        rng.uniform(0.0, 0.12)
        * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
        * np.cos(rng.integers(1, 3) * phi)
        for k in (2, 3, 5)
    )
    edge = max(spacing[1], spacing[0] / 2.0)
    occ = np.clip((radius_mm * lobes - dist) / edge + 0.5, 0.0, 1.0)
    value = rng.uniform(20.0, 60.0) + rng.normal(0.0, 25.0, occ.shape)
    array[window] = occ * value + (1.0 - occ) * before
    return window, before  # type: ignore[return-value]


def real_patient(
    study: StudyEvaluation, rng: np.random.Generator, wall_positives: int = 0
) -> RealPatient:
    """Patches of one analysed real study (see the module docstring)."""
    assert study.ct is not None
    ct = study.ct.with_array(np.array(study.ct.array, dtype=np.float32, copy=True))
    boxes = [_box_index(ct, r.lesion) for r in study.references]
    candidate_patches = (
        np.stack([extract_patch(ct, _centre(lesion), None) for lesion in study.lesions])
        if study.lesions
        else np.zeros((0, 64, 64, 8), dtype=np.float32)
    )
    matching = match_findings(study.findings, [r.lesion for r in study.references], HIT_MARGIN_MM)
    hits = {i for v in matching.hits.values() for i in v}
    patches: list[np.ndarray] = []
    positive: list[bool] = []
    kinds: list[str] = []

    def add(centre: Any, is_lesion: bool, kind: str) -> None:
        """A patch at an index point (clipped into the volume)."""
        s, r, c = (int(np.clip(v, 0, n - 1)) for v, n in zip(centre, ct.shape, strict=True))
        patches.append(extract_patch(ct, (s, r, c), None))
        positive.append(is_lesion)
        kinds.append(kind)

    jitter_px = max(1, round(4.0 / ct.spacing[1]))
    for n, lesion in enumerate(study.lesions):
        centre = np.array(_centre(lesion))
        if n in hits or not _far_from(centre[None].astype(float), boxes, ct, 0.0)[0]:
            continue
        for k in range(CANDIDATE_COPIES):
            shift = np.array([0, *rng.integers(-jitter_px, jitter_px + 1, 2)]) if k else 0
            add(centre + shift, False, "real_candidate")
    lungs = lung_mask(ct)
    lung_full = upsample(lungs.labels > 0, lungs.factor, ct.shape)
    region_full = upsample(lungs.region, lungs.factor, ct.shape)
    points = np.argwhere(region_full[:, ::4, ::4]) * np.array([1, 4, 4])
    dense = ct.array[tuple(points.T)] > -300
    for pool, quota in (
        (points[dense], RANDOM_NEGATIVES // 2),
        (points[~dense], RANDOM_NEGATIVES // 2),
    ):
        pool = pool[_far_from(pool.astype(float), boxes, ct, KEEP_OUT_MM)]
        for k in rng.permutation(len(pool))[:quota]:
            add(pool[k], False, "real_random")
    for lo, hi in boxes:
        core_lo = np.floor(lo + 0.2 * (hi - lo)).astype(int)
        core_hi = np.ceil(hi - 0.2 * (hi - lo)).astype(int)
        inside = np.argwhere(np.ones(np.maximum(core_hi - core_lo + 1, 1), dtype=bool)) + core_lo
        inside = inside[(inside >= 0).all(axis=1) & (inside < np.array(ct.shape)).all(axis=1)]
        solid = inside[ct.array[tuple(inside.T)] > -300] if len(inside) else inside
        for k in rng.permutation(len(solid))[: TUMOUR_POSITIVES // max(1, len(boxes))]:
            add(solid[k], True, "real_tumour")
    if wall_positives:
        _add_wall_tumours(ct, study, add, rng, jitter_px, wall_positives)
    lung_points = np.argwhere(lung_full[:, ::3, ::3]) * np.array([1, 3, 3])
    lung_points = lung_points[_far_from(lung_points.astype(float), boxes, ct, 40.0)]
    for k in rng.permutation(len(lung_points))[:INSERTED_POSITIVES]:
        radius = float(
            np.exp(rng.uniform(np.log(INSERTED_MIN_RADIUS_MM), np.log(INSERTED_MAX_RADIUS_MM)))
        )
        window, before = insert_lesion(ct.array, ct.spacing, lung_points[k], radius, rng)
        jitter = rng.integers(-jitter_px, jitter_px + 1, 2)
        add(np.array(lung_points[k]) + np.array([0, *jitter]), True, "inserted")
        ct.array[window] = before
    return RealPatient(
        study.scan_id,
        study,
        candidate_patches.astype(np.float32),
        np.stack(patches).astype(np.float32),
        np.array(positive),
        np.array(kinds),
    )


def _add_wall_tumours(
    ct: Volume,
    study: StudyEvaluation,
    add: Callable[[Any, bool, str], None],
    rng: np.random.Generator,
    jitter_px: int,
    count: int,
) -> None:
    """`count` tumours of the insertion generator (`classifier.datasets.insertion`:
    lobulated, spiculated or necrotic, with and without a collapse wedge, against each wall the
    stress test uses) put into the study one at a time, each a positive patch where `analyze()`
    would take it (key slice, box centre, jittered). Drawn from the fine-tune's own generator
    (not the stress test's seeds) at log-uniform diameters: not the grid's tumours."""
    anatomy = study_anatomy(ct, [(r.lesion.lo_mm, r.lesion.hi_mm) for r in study.references])
    pristine = np.array(ct.array, copy=True)
    for k in range(count):
        spec = TumourSpec(
            position=POSITIONS[k % len(POSITIONS)],
            side=("right", "left")[int(rng.integers(2))],
            diameter_mm=float(np.exp(rng.uniform(np.log(MIN_DIAMETER_MM), np.log(WALL_MAX_MM)))),
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            collapse=bool(rng.random() < 0.5),
        )
        placement = place(ct, anatomy, spec, rng)
        if placement is None:
            continue
        tumour = insert(ct, anatomy, placement, rng)
        s, (r0, c0, r1, c1) = tumour.key_slice_index, tumour.measured.box_rc
        jitter = rng.integers(-jitter_px, jitter_px + 1, 2)
        add(np.array([s, (r0 + r1) // 2 + jitter[0], (c0 + c1) // 2 + jitter[1]]), True, "wall")
        window = tumour.window()
        ct.array[window] = pristine[window]


def fold_patients(patients: Sequence[RealPatient]) -> dict[str, list[RealPatient]]:
    """The folds: every scan of one patient held out together (a patient with two annotated
    studies is never trained on in the fold that scores the other), keyed by patient id."""
    folds: dict[str, list[RealPatient]] = {}
    for p in patients:
        folds.setdefault(p.study.patient_id, []).append(p)
    return dict(sorted(folds.items()))


def training_scans(patients: Sequence[RealPatient], held_out: str) -> list[RealPatient]:
    """The real scans the fold that holds out patient `held_out` trains on: every other
    patient's, none of the held-out patient's."""
    return [p for p in patients if p.study.patient_id != held_out]


def _fold_path(out: Path, epochs: int, patient_id: str) -> Path:
    """Where a fold's model after `epochs` is saved while the fine-tune runs."""
    path = out / "folds" / f"e{epochs}" / f"{patient_id}.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _keep_folds(
    out: Path, chosen: int, patient_ids: Sequence[str], tried: Sequence[int]
) -> dict[str, dict[str, str]]:
    """The chosen epoch count's fold models moved to OUT/folds/<patient>.keras (the others'
    removed), each with metadata naming the patient it held out; their file names and
    sha256 per held-out patient id."""
    from classifier.model.inference import sha256_of, write_model_metadata

    kept: dict[str, dict[str, str]] = {}
    for patient_id in patient_ids:
        path = out / "folds" / f"{patient_id}.keras"
        shutil.move(_fold_path(out, chosen, patient_id), path)
        write_model_metadata(
            path,
            {
                "name": "lungnode-demo-fold",
                "held_out_patient": patient_id,
                "trained_on": f"lesion score fine-tune of one leave-one-patient-out fold "
                f"({chosen} epochs): every real patient but {patient_id}",
            },
        )
        kept[patient_id] = {"file": path.name, "sha256": sha256_of(path)}
    for epochs in tried:
        shutil.rmtree(out / "folds" / f"e{epochs}", ignore_errors=True)
    return kept


def install_folds(out: Path, fold_models: dict[str, dict[str, str]], model: Path) -> Path:
    """Copy the fold models of OUT/folds beside `model` (`held_out_models.folds_dir`),
    replacing any earlier set."""
    from classifier.model.held_out_models import folds_dir

    target = folds_dir(model)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for entry in fold_models.values():
        shutil.copyfile(out / "folds" / entry["file"], target / entry["file"])
    return target


def _centre(lesion: Any) -> tuple[int, int, int]:
    r0, c0, r1, c1 = lesion.box_rc
    return (lesion.key_slice_index, (r0 + r1) // 2, (c0 + c1) // 2)


def _fine_tune(
    base: Path,
    phantoms: PatchSet,
    real: Sequence[RealPatient],
    *,
    epochs: int,
    seed: int,
    progress: Callable[[str], None],
    on_epoch: Callable[[int, Any], None] = lambda _e, _m: None,
) -> Any:
    """The bundled model fine-tuned on phantom and real patches (lesion loss balanced between
    classes; histology only on phantom lesion patches); `on_epoch(n, model)` after epoch n."""
    import keras

    from classifier.model.training import augment, class_weights

    keras.utils.set_random_seed(seed)
    model = keras.saving.load_model(base, compile=False)
    x = np.concatenate([phantoms.patches, *[p.patches for p in real]]).astype(np.float32)
    lesion = np.concatenate([phantoms.is_lesion, *[p.is_lesion for p in real]]).astype(np.float32)
    n_phantom = len(phantoms.labels)
    weights = class_weights(phantoms.labels[phantoms.is_lesion].tolist())
    onehot = np.zeros((len(x), len(HISTOLOGY_CLASSES)), dtype=np.float32)
    hist_w = np.zeros(len(x), dtype=np.float32)
    index = {c: i for i, c in enumerate(HISTOLOGY_CLASSES)}
    for i, label in enumerate(phantoms.labels):
        onehot[i, index[label]] = 1.0
        hist_w[i] = weights[label] * float(phantoms.is_lesion[i])
    # Real patients weigh as much as the phantoms in the lesion loss; classes balanced.
    lesion_w = np.ones(len(x), dtype=np.float32)
    real_rows = np.arange(n_phantom, len(x))
    if len(real_rows):
        lesion_w[real_rows] *= n_phantom / len(real_rows)
    pos, neg = lesion_w[lesion > 0].sum(), lesion_w[lesion == 0].sum()
    lesion_w[lesion > 0] *= neg / max(pos, 1e-6)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss={"lesion": "binary_crossentropy", "histology": "categorical_crossentropy"},
    )
    rng = np.random.default_rng(seed)
    batch = 32
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        losses = []
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            out = model.train_on_batch(
                augment(x[rows], rng),
                {"lesion": lesion[rows, None], "histology": onehot[rows]},
                sample_weight={"lesion": lesion_w[rows], "histology": hist_w[rows]},
                return_dict=True,
            )
            losses.append(float(out["loss"]))
        progress(f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}")
        on_epoch(epoch + 1, model)
    return model


def _score(model: Any, info: Any, patches: np.ndarray) -> np.ndarray:
    """Lesion probabilities as `analyze` computes them (LesionClassifier.predict)."""
    from classifier.model.inference import LesionClassifier

    if len(patches) == 0:
        return np.zeros(0, dtype=np.float64)
    return LesionClassifier(model, info).predict(patches)[0].astype(np.float64)


def _held_out_rows(
    scored: Sequence[tuple[RealPatient, np.ndarray, float]],
    lesions: Sequence[GroundTruthLesion],
    scan_ids: Sequence[str],
) -> dict[str, Any]:
    """The held-out rows of one epoch count: each patient's candidates as scored by the fold
    that did not train on it, the threshold chosen on them, the counts at it (and at the
    node's 0.5) and the mean held-out patch AUC."""
    findings: list[Finding] = []
    folds = []
    for p, scores, auc in scored:
        mine = _findings(p, scores)
        findings += mine
        curve = froc(mine, [r.lesion for r in p.study.references], [p.scan_id])
        folds.append(
            {
                "held_out": p.scan_id,
                "cpm": round(curve.cpm, 4),
                "patch_auc": round(auc, 4),
                "scores": {f.name: round(f.score, 3) for f in mine},
            }
        )
    threshold = choose_threshold(findings, lesions, scan_ids)
    return {
        "findings": findings,
        "folds": folds,
        "cpm": round(froc(findings, lesions, scan_ids).cpm, 4),
        "threshold": round(threshold, 4),
        "counts": _counts(findings, lesions, scan_ids, threshold),
        "counts_at_0.5": _counts(findings, lesions, scan_ids, 0.5),
        "patch_auc": round(float(np.nanmean([f["patch_auc"] for f in folds])), 4),
    }


def _epoch_objective(trial: dict[str, Any], epochs: int) -> tuple[float, ...]:
    """How an epoch count's held-out rows rank (larger is better), each key breaking the ties
    of the one before: held-out tumours found at 0.5, fewest held-out scans with more than
    MAX_FP_PER_SCAN false positives at 0.5, then fewest of them, then the CPM, then the mean
    held-out patch AUC, then fewer epochs."""
    counts = trial["counts_at_0.5"].values()
    return (
        sum(c["tp"] for c in counts),
        -sum(c["fp"] > MAX_FP_PER_SCAN for c in counts),
        -sum(c["fp"] for c in counts),
        trial["cpm"],
        trial["patch_auc"],
        -epochs,
    )


def _findings(patient: RealPatient, scores: np.ndarray) -> list[Finding]:
    return [
        Finding(patient.scan_id, float(s), lesion.centroid_mm, lesion.tracking_id)
        for s, lesion in zip(scores, patient.study.lesions, strict=True)
    ]


def choose_threshold(
    findings: Sequence[Finding],
    lesions: Sequence[GroundTruthLesion],
    scan_ids: Sequence[str],
    max_fp: int = MAX_FP_PER_SCAN,
) -> float:
    """The lowest score threshold, not below 0.5 (what the network rates more likely a lesion
    than not), at which no scan has more than `max_fp` false positives."""
    candidates = sorted({f.score for f in findings if f.score >= 0.5} | {0.5})
    for threshold in candidates:
        kept = [f for f in findings if f.score >= threshold]
        fps = match_findings(kept, lesions).false_positives
        per_scan = {s: 0 for s in scan_ids}
        for i in fps:
            per_scan[kept[i].scan_id] += 1
        if max(per_scan.values(), default=0) <= max_fp:
            return float(threshold)
    return 1.0


def run(
    data: Path,
    annotation_dirs: Sequence[Path],
    phantoms_dir: Path,
    out: Path,
    *,
    epochs: Sequence[int],
    seed: int,
    install: bool,
    wall_positives: int = 0,
    progress: Callable[[str], None] = print,
    command: str = "python -m classifier.model.lopo ...",
    base: Path | None = None,
) -> dict[str, Any]:
    from classifier.model.bundled import BUNDLED_MODEL
    from classifier.model.inference import LesionClassifier, read_model_metadata, sha256_of

    base = Path(base or BUNDLED_MODEL)
    if read_model_metadata(base).get("real_data"):
        raise ValueError(
            f"{base} was already fine-tuned on real CT: folds started from it would have seen "
            "the held-out patient. Pass --base with the phantom-only model (git history)."
        )
    base_sha = sha256_of(base)

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    settings = AnalysisSettings()
    scoring = dataclasses.replace(
        settings, lesion_probability_threshold=0.0, max_findings_per_study=0
    )
    annotated, folders, _ = _annotations_by_patient(data, list(annotation_dirs))
    bundled = LesionClassifier.load(base)
    rng = np.random.default_rng(seed)
    patients: list[RealPatient] = []
    for patient_id, folder in sorted(folders.items()):
        for study in evaluate_study_folder(
            patient_id, folder, annotated.get(patient_id, []), scoring, bundled
        ):
            if study.ct is None or not study.references:
                continue
            patients.append(real_patient(study, rng, wall_positives))
            p = patients[-1]
            progress(
                f"{p.scan_id}: {len(p.study.lesions)} candidates, "
                f"{int(p.is_lesion.sum())} positive / {int((~p.is_lesion).sum())} negative patches"
            )
    phantom_scan = scan(phantoms_dir, None)
    phantom_ids = sorted(p.patient_id for p in phantom_scan.patients if p.annotated)
    phantoms = build_patch_set(phantom_scan, phantom_ids, seed=seed, progress=lambda _m: None)
    progress(f"phantoms: {len(phantoms.labels)} patches of {len(phantom_ids)} patients")

    lesions_all = [r.lesion for p in patients for r in p.study.references]
    scan_ids = [p.scan_id for p in patients]
    before: list[Finding] = []
    for p in patients:
        before += _findings(p, _score(bundled.model, bundled.info, p.candidate_patches))
    choices = sorted(set(epochs))
    # Per epoch count tried: each held-out scan's candidate scores and patch AUC.
    scored: dict[int, list[tuple[RealPatient, np.ndarray, float]]] = {e: [] for e in choices}
    for patient_id, held in fold_patients(patients).items():
        progress(f"fold: {patient_id} held out ({', '.join(p.scan_id for p in held)})")

        def checkpoint(
            epoch: int, model: Any, patient_id: str = patient_id, held: Any = held
        ) -> None:
            if epoch not in scored:
                return
            model.save(_fold_path(out, epoch, patient_id))
            for p in held:
                own = _score(model, bundled.info, p.patches)
                separation = roc_auc(p.is_lesion, own)
                auc = float("nan") if separation is None else separation
                scored[epoch].append((p, _score(model, bundled.info, p.candidate_patches), auc))
                progress(f"  {epoch} epochs: {p.scan_id} held-out patch AUC {auc:.3f}")

        _fine_tune(
            base,
            phantoms,
            training_scans(patients, patient_id),
            epochs=choices[-1],
            seed=seed,
            progress=progress,
            on_epoch=checkpoint,
        )
    trials = {e: _held_out_rows(scored[e], lesions_all, scan_ids) for e in choices}
    chosen = max(choices, key=lambda e: _epoch_objective(trials[e], e))
    progress(f"epochs chosen on the held-out rows: {chosen}")
    fold_models = _keep_folds(out, chosen, sorted(fold_patients(patients)), choices)
    folds = trials[chosen]["folds"]
    held_out = trials[chosen]["findings"]
    pooled = froc(held_out, lesions_all, scan_ids)
    threshold = trials[chosen]["threshold"]
    at_threshold = trials[chosen]["counts"]
    progress(f"LOPO pooled CPM {pooled.cpm:.3f}; threshold {threshold:.3f}: {at_threshold}")
    final = _fine_tune(base, phantoms, patients, epochs=chosen, seed=seed, progress=progress)
    model_path = out / "lungnode-demo.keras"
    final.save(model_path)
    summary = {
        "patients": scan_ids,
        "phantom_patients": len(phantom_ids),
        "base_model_sha256": base_sha,
        "epochs": chosen,
        "fold_models": fold_models,
        "wall_positives": wall_positives,
        "epochs_tried": {
            str(e): {k: v for k, v in t.items() if k not in ("findings", "folds")}
            for e, t in trials.items()
        },
        "seed": seed,
        "patches": {
            p.scan_id: {k: int(np.count_nonzero(p.kinds == k)) for k in np.unique(p.kinds)}
            for p in patients
        },
        "bundled_before": {
            "cpm": round(froc(before, lesions_all, scan_ids).cpm, 4),
            "counts_at_0.5": _counts(before, lesions_all, scan_ids, 0.5),
        },
        "lopo": {
            "folds": folds,
            "pooled": pooled.as_dict(),
            "threshold": round(threshold, 4),
            "counts_at_threshold": at_threshold,
        },
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    (out / "lopo.json").write_text(json.dumps(summary, indent=2))
    if install:
        from classifier.model.bundled import BUNDLED_MODEL
        from classifier.model.calibration import calibration_path
        from classifier.model.inference import write_checksum, write_model_metadata

        meta = read_model_metadata(BUNDLED_MODEL)
        shutil.copyfile(model_path, BUNDLED_MODEL)
        # The phantom training it started from, without an earlier fine-tune's clause.
        base_trained_on = str(meta.get("trained_on", "")).split(FINE_TUNED_CLAUSE, 1)[0]
        meta.update(
            {
                "trained_on": base_trained_on + FINE_TUNED_CLAUSE + " with real "
                f"negatives and inserted lesions of {len(patients)} Lung-PET-CT-Dx patients "
                f"({', '.join(scan_ids)}) and {len(phantom_ids)} phantoms",
                "real_data": {k: v for k, v in summary.items() if k != "bundled_before"},
            }
        )
        write_model_metadata(BUNDLED_MODEL, meta)
        write_checksum(BUNDLED_MODEL)
        install_folds(out, fold_models, BUNDLED_MODEL)
        # The calibration belongs to the weights it was fitted for: the new weights report
        # their raw score until `lungnode real-ct-protocol ... --install` fits them one.
        stale = calibration_path(BUNDLED_MODEL)
        if stale.is_file():
            stale.unlink()
            log.warning("removed %s: fitted for the replaced weights", stale)
        card = BUNDLED_MODEL.parent / "MODEL_CARD.md"
        replace_card_section(card, CARD_START, CARD_END, real_ct_section(summary, command))
    return summary


FINE_TUNED_CLAUSE = "; lesion score fine-tuned"
CARD_START = "<!-- real-ct: written by classifier.model.lopo -->"
CARD_END = "<!-- /real-ct -->"


def real_ct_section(summary: dict[str, Any], command: str) -> str:
    """The model card's section on real CT: what was trained on, the per-fold and pooled
    leave-one-patient-out FROC/CPM, the chosen threshold and the counts at it."""
    lopo = summary["lopo"]
    pooled = lopo["pooled"]
    rows = "\n".join(
        f"| {f['held_out']} | {f['cpm']:.3f} | {f.get('patch_auc', float('nan')):.3f} | "
        + ", ".join(f"{k} {v:.2f}" for k, v in f["scores"].items())
        + f" | {lopo['counts_at_threshold'][f['held_out']]['tp']}/"
        f"{lopo['counts_at_threshold'][f['held_out']]['tumours']} | "
        f"{lopo['counts_at_threshold'][f['held_out']]['fp']} |"
        for f in lopo["folds"]
    )
    patches = "; ".join(
        f"{sid}: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        for sid, kinds in summary["patches"].items()
    )
    sens = ", ".join(
        f"{k} FP/scan {v:.2f}" for k, v in pooled["sensitivity_at_fp_per_scan"].items()
    )
    before = summary["bundled_before"]
    wall = (
        f", and up to {summary['wall_positives']} tumours per patient of the stress test's "
        'generator ("wall": lobulated, spiculated or necrotic, with or without collapse, '
        f"against each wall, {MIN_DIAMETER_MM:g}-{WALL_MAX_MM:g} mm log-uniform, drawn from this "
        "script's seed, not the stress test's: the grid's tumours are not trained on; \"wall\" "
        "counts those placed)"
        if summary.get("wall_positives")
        else ""
    )
    tried = "\n".join(
        f"| {e} | "
        + f"{sum(c['tp'] for c in t['counts_at_0.5'].values())}/"
        + f"{sum(c['tumours'] for c in t['counts_at_0.5'].values())} | "
        + f"{sum(c['fp'] for c in t['counts_at_0.5'].values())} | {t['cpm']:.3f} | "
        + f"{t['patch_auc']:.3f} |"
        for e, t in summary.get("epochs_tried", {}).items()
    )
    return f"""{CARD_START}
## Real CT: lesion score fine-tuned with real negatives (leave one patient out)

The lesion output was fine-tuned from the phantom-trained weights (sha256
{summary["base_model_sha256"][:12]}) on {len(summary["patients"])}
real Lung-PET-CT-Dx CT studies ({", ".join(summary["patients"])}; all but A0002 with the
project's approximate boxes, `tests/data/annotations-approximate`) and {summary["phantom_patients"]}
phantoms: negatives are every detector candidate away from the tumour boxes (jittered copies)
and random points of the lung region and its soft-tissue edges, >= {KEEP_OUT_MM:g} mm from the
boxes; positives are points in the tumour boxes and synthetic lobulated solid lesions (radius
{INSERTED_MIN_RADIUS_MM:g}-{INSERTED_MAX_RADIUS_MM:g} mm, partial volume, noise) inserted into
each patient's lungs{wall}.
Patches: {patches}. The histology head learns from phantom lesion patches only: its
probabilities still say nothing about real tumours. {summary["epochs"]} epochs, Adam
{LEARNING_RATE:g}, seed {summary["seed"]}; all folds and the final model in
{summary["elapsed_s"]:.0f} s on CPU.

Leave one patient out: each fold is fine-tuned on the phantoms and the other patients and
scores the held-out patient's detector candidates (every candidate the analysis proposes) and
its own training patches (patch AUC: tumour and inserted-lesion patches against random lung,
edge and candidate patches). The length of the fine-tune is chosen on these held-out rows:
each fold is scored after each epoch count tried, and the count that finds the most held-out
tumours at 0.5 wins, then the fewest held-out false positives at 0.5, then the pooled CPM, then
the mean patch AUC, then the shorter fine-tune:

| epochs | held-out tumours at 0.5 | held-out FP at 0.5 | pooled CPM | mean held-out patch AUC |
|---|---|---|---|---|
{tried}

Chosen: **{summary["epochs"]} epochs**. Per held-out scan at that length:

| held-out scan | CPM | patch AUC | candidate scores | tumours at threshold | FP at threshold |
|---|---|---|---|---|---|
{rows}

Pooled over the held-out scans: CPM **{pooled["cpm"]:.3f}** ({sens}). The phantom-only model
before fine-tuning, on the same candidates: CPM {before["cpm"]:.3f}. With only
{len(summary["patients"])} patients and {pooled["n_findings"]} candidates these figures are
coarse: one candidate moves the CPM a lot.

Reporting threshold chosen on the pooled held-out scores: **{lopo["threshold"]:.3f}** (the
lowest, not below 0.5, at which no held-out scan has more than {MAX_FP_PER_SCAN} false positives).
The bundled model is the final fine-tune on all {len(summary["patients"])} patients: its
figures on these studies (`lungnode evaluate-detector`) are on training scans and are not a
measure of quality.{_folds_note(summary)}
To reproduce, fine-tune the phantom-only model (`--base`, e.g. `git show
d20fd30:classifier/model/weights/lungnode-demo.keras > base.keras`): this script refuses a base
already fine-tuned on real CT.

```
{command}
```
{CARD_END}
"""


def _folds_note(summary: dict[str, Any]) -> str:
    """The card's sentence on the fold models kept beside the bundled model."""
    folds = summary.get("fold_models") or {}
    if not folds:
        return ""
    shas = ", ".join(
        f"{p.replace('Lung_Dx-', '')} {f['sha256'][:12]}" for p, f in sorted(folds.items())
    )
    return (
        f"\nThe {len(folds)} folds' models at that length are kept beside it "
        "(`lungnode-demo-folds/<patient>.keras`, about 1.1 MB each; sha256 in the bundled "
        f"model's metadata, `real_data.fold_models`: {shas}): the real-CT protocol scores each "
        "patient with the fold that held it out, so its threshold, radius and calibration are "
        "chosen on held-out scores. The node runs the bundled model."
    )


def _counts(
    findings: Sequence[Finding],
    lesions: Sequence[GroundTruthLesion],
    scan_ids: Sequence[str],
    threshold: float,
) -> dict[str, dict[str, int]]:
    kept = [f for f in findings if f.score >= threshold]
    matching = match_findings(kept, lesions)
    out = {s: {"tp": 0, "fp": 0, "tumours": 0} for s in scan_ids}
    for n, lesion in enumerate(lesions):
        out[lesion.scan_id]["tumours"] += 1
        out[lesion.scan_id]["tp"] += int(bool(matching.hits[n]))
    for i in matching.false_positives:
        out[kept[i].scan_id]["fp"] += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--annotations", action="append", default=[])
    parser.add_argument("--phantoms", required=True, help="a lungnode synth folder")
    parser.add_argument(
        "--phantoms-made-by",
        default="",
        help="the lungnode synth command that wrote --phantoms (for the model card)",
    )
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        default=list(EPOCH_CHOICES),
        help="epoch counts to try; the one chosen on the held-out rows trains the final model",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--install", action="store_true", help="replace the bundled model")
    parser.add_argument(
        "--wall-positives",
        type=int,
        default=0,
        help=f"tumours of the stress test's generator per patient as positives (tried: "
        f"{WALL_POSITIVES}; default 0)",
    )
    parser.add_argument(
        "--base", help="phantom-only model to fine-tune (default: the bundled model)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    summary = run(
        Path(args.data),
        [Path(a) for a in args.annotations],
        Path(args.phantoms),
        Path(args.out),
        epochs=args.epochs,
        seed=args.seed,
        install=args.install,
        wall_positives=args.wall_positives,
        base=Path(args.base) if args.base else None,
        command="\n".join(
            ([args.phantoms_made_by] if args.phantoms_made_by else [])
            + ["python -m classifier.model.lopo " + shlex.join(argv or sys.argv[1:])]
        ),
    )
    print(json.dumps(summary["lopo"]["folds"], indent=2))
    print(json.dumps({k: summary["lopo"][k] for k in ("threshold", "counts_at_threshold")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
