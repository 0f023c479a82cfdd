"""Train the lesion/histology CNN on a Lung-PET-CT-Dx style collection (TCIA layout + XML boxes).

Patients are split (never slices) into train/validation/test, stratified by class and
deterministic in the seed. Positive patches sit at the centre of each annotated box, labelled
with the patient's histology. Negative patches are of three kinds: hard negatives, every
candidate the product's own lesion detector (classifier.imaging.lesions.find_candidates)
proposes away from the annotated boxes, so the CNN learns to reject exactly what it will be
shown; near negatives in the lung just outside each lesion; and random locations in the
project's lung mask (classifier.imaging.lung_mask) away from every box. The histology loss is
class-weighted (inverse frequency) and masked on negative patches.
Beside the model it writes MODEL_CARD.md, TensorBoard logs and the evaluation report.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from classifier.model.evaluation import PatchPredictions, write_report
from classifier.model.patches import (
    CH_LUNG,
    CH_MEDIASTINAL,
    CH_PET_FLAG,
    CH_SUV,
    PATCH_SHAPE,
    extract_patch,
)
from classifier.types import HISTOLOGY_CLASSES

if TYPE_CHECKING:  # run-time imports of the DICOM side happen inside the functions
    from classifier.datasets.tcia_dataset import DatasetScan, PatientRecord
    from classifier.imaging.lesions import Candidate
    from classifier.imaging.lung_mask import LungMask
    from classifier.imaging.volume import Volume

log = logging.getLogger(__name__)

SPLIT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train, validation, test
NEGATIVES_PER_POSITIVE = 2
NEGATIVE_MARGIN_MM = 15.0
# Near negatives: lung points just outside a lesion, so the CNN answers for the patch centre and
# not for a lesion elsewhere in its field (a vessel beside a tumour is not a tumour).
NEAR_NEGATIVE_RING_MM: tuple[float, float] = (8.0, 20.0)  # beyond the box's half long side
NEAR_NEGATIVES_PER_POSITIVE = 1
# A detector candidate is a hard negative only if its mask stays this far from every box.
BOX_MARGIN_MM = 3.0
HARD_NEGATIVE_SLICES = 3  # patches per hard-negative candidate (key slice + others it spans)
# "lesion": an annotated box's centre; "lesion_candidate": a detector candidate on a box, where
# analyze() takes its patch (key slice, candidate box centre): both are lesion patches.
# "candidate": a hard negative's patch where analyze() takes it;
# "candidate_slice": the same candidate on another slice it spans.
PATCH_KINDS: tuple[str, ...] = (
    "lesion",
    "lesion_candidate",
    "candidate",
    "candidate_slice",
    "near",
    "random",
)
LESION_KINDS: tuple[str, ...] = ("lesion", "lesion_candidate")
# Lesion-loss weight of detector-candidate patches (on or away from a box): there are few of
# them, and they are exactly what analyze() scores.
HARD_NEGATIVE_WEIGHT = 2.0
PHANTOM_MANUFACTURER = "lungnode phantom"


@dataclass(frozen=True)
class PatchSet:
    """Patches with their truth: one row per patch."""

    patches: np.ndarray  # (n, *PATCH_SHAPE) float32
    is_lesion: np.ndarray  # (n,) bool
    labels: np.ndarray  # (n,) str: the patient's histology class
    patient_ids: np.ndarray  # (n,) str
    kinds: np.ndarray  # (n,) str, one of PATCH_KINDS

    def subset(self, rows: np.ndarray) -> PatchSet:
        """The rows selected by an index or boolean array."""
        return PatchSet(
            self.patches[rows],
            self.is_lesion[rows],
            self.labels[rows],
            self.patient_ids[rows],
            self.kinds[rows],
        )

    def count(self, kind: str) -> int:
        """Number of patches of one kind (one of PATCH_KINDS)."""
        return int(np.count_nonzero(self.kinds == kind))


@dataclass
class BuildStats:
    """What building the patch set skipped, and why (reported in the model card)."""

    series_not_loadable: int = 0
    annotated_slices_not_in_ct: int = 0
    pet_not_usable: int = 0
    patients_without_patches: int = 0
    hard_negative_candidates: int = 0  # detector candidates used as negatives


def scan(data_dir: Path, annotations_dir: Path | None) -> DatasetScan:
    """Scan a TCIA download (manifest folder or its parent) and its annotation XML; without an
    annotation folder, an `Annotation` folder beside the download is used."""
    from classifier.datasets.tcia_dataset import scan_dataset

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data folder {data_dir} does not exist; pass the TCIA download folder"
        )
    return scan_dataset(data_dir, Path(annotations_dir) if annotations_dir is not None else None)


def split_patients(labels: dict[str, str], seed: int) -> dict[str, list[str]]:
    """Split patient ids into train/validation/test, stratified by class, deterministic in seed.

    Each class gives round(fraction * n) patients to test and validation, but a class keeps at
    least one training patient; with two patients the second goes to test before validation.
    """
    rng = np.random.default_rng(seed)
    split: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for cls in sorted(set(labels.values())):
        ids = sorted(p for p, c in labels.items() if c == cls)
        rng.shuffle(ids)
        n = len(ids)
        n_test = min(round(SPLIT_FRACTIONS[2] * n) or (1 if n >= 2 else 0), n - 1)
        n_val = min(round(SPLIT_FRACTIONS[1] * n) or (1 if n >= 3 else 0), n - 1 - n_test)
        split["test"] += ids[:n_test]
        split["validation"] += ids[n_test : n_test + n_val]
        split["train"] += ids[n_test + n_val :]
    return {k: sorted(v) for k, v in split.items()}


def _load_series(record: PatientRecord, series_uid: str) -> tuple[Volume, Volume | None]:
    """The CT volume of one annotated series and the SUV of the patient's PET series (the one in
    the same study folder first) on the CT grid, as analyze() puts it there (registered first
    when the Frames of Reference differ); None when there is no usable PET."""
    from classifier.imaging.dicom_io import read_series
    from classifier.imaging.resample import register_rigid, resample_to
    from classifier.imaging.suv import load_pet_suv_volume
    from classifier.imaging.volume import load_ct_volume

    ct_paths = record.series[series_uid]
    ct = load_ct_volume(read_series(ct_paths))
    study_dir = Path(ct_paths[0]).parent.parent
    pets = [uid for uid, modality in record.series_modality.items() if modality == "PT"]
    pets.sort(key=lambda uid: Path(record.series[uid][0]).parent.parent != study_dir)
    for uid in pets:
        try:
            pet = load_pet_suv_volume(read_series(record.series[uid]))
            if pet.frame_of_reference_uid == ct.frame_of_reference_uid:
                return ct, resample_to(pet, ct, fill=0.0)
            registration = register_rigid(pet, ct)
            if registration.transform is not None:
                return ct, resample_to(pet, ct, fill=0.0, transform=registration.transform)
            log.info(
                "patient %s: PET %s not registered (%s)",
                record.patient_id,
                uid,
                registration.reason,
            )
        except Exception as exc:  # noqa: BLE001 - an unusable PET leaves a CT-only patient
            log.info("patient %s: PET series %s not usable (%s)", record.patient_id, uid, exc)
    return ct, None


def _lung_points(lungs: LungMask, shape: tuple[int, int, int]) -> np.ndarray:
    """Indices (k, 3) of CT voxels in the lungs of the project's lung mask, dilated in-plane by
    two pixels so that vessels and the pleura are candidates too."""
    from classifier.imaging.lung_mask import IN_PLANE, upsample

    full = upsample(lungs.lungs, lungs.factor, shape)
    return np.argwhere(ndimage.binary_dilation(full, structure=IN_PLANE, iterations=2))


def _box_map(
    shape: tuple[int, int, int], boxes: Sequence[tuple[int, int, int, int, int]], margin: int
) -> np.ndarray:
    """Boolean CT-grid map of the annotated boxes (slice, row0, col0, row1, col1), each grown
    in-plane by `margin` pixels."""
    out = np.zeros(shape, dtype=bool)
    for z, r0, c0, r1, c1 in boxes:
        out[z, max(0, r0 - margin) : r1 + margin + 1, max(0, c0 - margin) : c1 + margin + 1] = True
    return out


def _hard_negative_centres(
    candidate: Candidate, boxes: np.ndarray
) -> list[tuple[int, int, int]] | None:
    """Patch centres for a detector candidate that is not an annotated lesion: its key-slice
    centre (where analyze() takes the patch) and the in-plane centre of its mask on up to
    HARD_NEGATIVE_SLICES - 1 other slices; None when the candidate touches an annotated box.
    """
    z0, r0, c0 = candidate.mask_origin
    dz, dr, dc = candidate.mask.shape
    if boxes[candidate.center_index] or np.any(
        boxes[z0 : z0 + dz, r0 : r0 + dr, c0 : c0 + dc] & candidate.mask
    ):
        return None
    centres = [candidate.center_index]
    others = [
        z for z in range(dz) if z0 + z != candidate.key_slice_index and candidate.mask[z].any()
    ]
    step = max(1, len(others) // max(1, HARD_NEGATIVE_SLICES - 1))
    for z in others[::step][: HARD_NEGATIVE_SLICES - 1]:
        rows, cols = np.nonzero(candidate.mask[z])
        centres.append((z0 + z, r0 + int(round(rows.mean())), c0 + int(round(cols.mean()))))
    return centres


def _touches(candidate: Candidate, boxes: np.ndarray) -> bool:
    """Whether a candidate's mask has a voxel inside an annotated box."""
    z0, r0, c0 = candidate.mask_origin
    dz, dr, dc = candidate.mask.shape
    return bool(np.any(boxes[z0 : z0 + dz, r0 : r0 + dr, c0 : c0 + dc] & candidate.mask))


def _patient_patches(
    record: PatientRecord, rng: np.random.Generator, stats: BuildStats
) -> tuple[list[np.ndarray], list[str]]:
    """Patches of one patient over every annotated CT series, with their kind (PATCH_KINDS):
    box centres, detector candidates away from every box, random lung locations."""
    from classifier.imaging.lesions import find_candidates
    from classifier.imaging.lung_mask import lung_mask

    by_series: dict[str, list[Any]] = {}
    for item in record.annotated:
        by_series.setdefault(item.series_instance_uid, []).append(item)
    patches: list[np.ndarray] = []
    kinds: list[str] = []
    for series_uid, items in sorted(by_series.items()):
        try:
            ct, suv = _load_series(record, series_uid)
        except Exception:  # noqa: BLE001 - e.g. boxes drawn on a PET series; counted, not fatal
            stats.series_not_loadable += 1
            continue
        if suv is None:
            stats.pet_not_usable += 1
        index_of = {ref.sop_instance_uid: i for i, ref in enumerate(ct.slices)}
        centres, radii, half_sides, boxes = [], [], [], []
        for item in items:
            z = index_of.get(item.sop_instance_uid)
            if z is None:
                stats.annotated_slices_not_in_ct += 1
                continue
            for _label, xmin, ymin, xmax, ymax in item.boxes:
                r = int(np.clip(round((ymin + ymax) / 2), 0, ct.array.shape[1] - 1))
                c = int(np.clip(round((xmin + xmax) / 2), 0, ct.array.shape[2] - 1))
                centres.append((z, r, c))
                boxes.append((z, int(ymin), int(xmin), int(ymax), int(xmax)))
                radii.append(
                    0.5
                    * float(np.hypot((xmax - xmin) * ct.spacing[2], (ymax - ymin) * ct.spacing[1]))
                )
                half_sides.append(
                    0.5 * max((xmax - xmin) * ct.spacing[2], (ymax - ymin) * ct.spacing[1])
                )
        for centre in centres:
            patches.append(extract_patch(ct, centre, suv))
            kinds.append("lesion")
        if not centres:
            continue
        lungs = lung_mask(ct)
        # Hard negatives: what the detector proposes in this series away from every box;
        # hard positives: a candidate on a box, scored where analyze() scores it.
        margin = int(np.ceil(BOX_MARGIN_MM / min(ct.spacing[1], ct.spacing[2])))
        box_map = _box_map(ct.shape, boxes, margin)
        box_core = _box_map(ct.shape, boxes, 0)
        for candidate in find_candidates(ct, suv, lungs=lungs):
            hard = _hard_negative_centres(candidate, box_map)
            if hard is None:
                if _touches(candidate, box_core):
                    patches.append(extract_patch(ct, candidate.center_index, suv))
                    kinds.append("lesion_candidate")
                continue
            stats.hard_negative_candidates += 1
            for i, centre in enumerate(hard):
                patches.append(extract_patch(ct, centre, suv))
                kinds.append("candidate" if i == 0 else "candidate_slice")
        points = _lung_points(lungs, ct.shape)
        spacing = np.asarray(ct.spacing, dtype=np.float64)
        centres_mm = np.asarray(centres, dtype=np.float64) * spacing
        keep_out = np.asarray(radii) + NEGATIVE_MARGIN_MM
        wanted = NEGATIVES_PER_POSITIVE * len(centres)
        dense = ct.array[tuple(points.T)] > -300
        chosen: list[tuple[int, int, int]] = []
        # Half the random negatives on dense tissue (vessels, pleura, mediastinal border).
        for pool, quota in ((points[dense], wanted // 2), (points, wanted)):
            for k in rng.permutation(len(pool))[: 20 * wanted]:
                if len(chosen) >= quota:
                    break
                point = pool[k]
                if np.all(np.linalg.norm(centres_mm - point * spacing, axis=1) > keep_out):
                    chosen.append((int(point[0]), int(point[1]), int(point[2])))
        for centre in chosen:
            patches.append(extract_patch(ct, centre, suv))
            kinds.append("random")
        for centre in _near_points(
            points, dense, spacing, centres_mm, np.asarray(half_sides), len(centres), rng
        ):
            patches.append(extract_patch(ct, centre, suv))
            kinds.append("near")
    return patches, kinds


def _near_points(
    points: np.ndarray,
    dense: np.ndarray,
    spacing: np.ndarray,
    centres_mm: np.ndarray,
    half_sides: np.ndarray,
    n_positive: int,
    rng: np.random.Generator,
) -> list[tuple[int, int, int]]:
    """Lung points in the ring NEAR_NEGATIVE_RING_MM beyond some box's half long side and
    outside every box's inner ring, dense tissue (vessels, pleura) first."""
    wanted = NEAR_NEGATIVES_PER_POSITIVE * n_positive
    chosen: list[tuple[int, int, int]] = []
    for pool in (points[dense], points[~dense]):
        if len(chosen) >= wanted or not len(pool):
            continue
        sample = pool[rng.permutation(len(pool))[:20000]]
        dist = (
            np.linalg.norm(sample[:, None, :] * spacing - centres_mm[None, :, :], axis=2)
            - half_sides[None, :]
        )
        ok = np.all(dist > NEAR_NEGATIVE_RING_MM[0], axis=1) & np.any(
            dist <= NEAR_NEGATIVE_RING_MM[1], axis=1
        )
        for point in sample[ok][: wanted - len(chosen)]:
            chosen.append((int(point[0]), int(point[1]), int(point[2])))
    return chosen


def build_patch_set(
    dataset: DatasetScan,
    patient_ids: Sequence[str],
    *,
    seed: int,
    progress: Callable[[str], None] = print,
    stats: BuildStats | None = None,
) -> PatchSet:
    """Positive and negative patches of the given patients (deterministic in seed)."""
    stats = stats if stats is not None else BuildStats()
    records = {p.patient_id: p for p in dataset.patients}
    all_patches: list[np.ndarray] = []
    kinds: list[str] = []
    labels: list[str] = []
    owners: list[str] = []
    for pid in sorted(patient_ids):
        record = records[pid]
        rng = np.random.default_rng(
            [seed, zlib.crc32(pid.encode())]
        )  # same patches in any grouping
        patches, patch_kinds = _patient_patches(record, rng, stats)
        if not patches:
            stats.patients_without_patches += 1
        all_patches += patches
        kinds += patch_kinds
        labels += [record.label] * len(patches)
        owners += [pid] * len(patches)
        n = Counter(patch_kinds)
        progress(
            f"patches: patient {pid} ({record.label}): {n['lesion']} lesion "
            f"(+{n['lesion_candidate']} detected), "
            f"{n['candidate'] + n['candidate_slice']} detector candidate "
            f"({n['candidate']} candidates), {n['near']} near, {n['random']} random lung"
        )
    stack = np.stack(all_patches) if all_patches else np.zeros((0, *PATCH_SHAPE), dtype=np.float32)
    kind_arr = np.asarray(kinds, dtype=str).reshape(-1)
    return PatchSet(
        stack.astype(np.float32),
        np.isin(kind_arr, LESION_KINDS),
        np.asarray(labels, dtype=str),
        np.asarray(owners, dtype=str),
        kind_arr,
    )


def class_weights(labels: Sequence[str]) -> dict[str, float]:
    """Inverse-frequency weights n / (k * n_c) over the classes present; absent classes get 0."""
    counts = Counter(labels)
    present = [c for c in HISTOLOGY_CLASSES if counts[c] > 0]
    total = sum(counts[c] for c in present)
    return {
        c: (total / (len(present) * counts[c]) if counts[c] else 0.0) for c in HISTOLOGY_CLASSES
    }


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips, quarter turns, shifts of up to 3 pixels, CT/SUV intensity jitter and PET
    dropout (so the model also works on CT alone); returns a new array."""
    out = np.empty_like(batch)
    pad = 3
    for i, patch in enumerate(batch):
        p = np.rot90(patch, k=int(rng.integers(4)), axes=(0, 1))
        if rng.random() < 0.5:
            p = p[:, ::-1]
        padded = np.pad(p, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        dr, dc = rng.integers(0, 2 * pad + 1, size=2)
        p = padded[dr : dr + PATCH_SHAPE[0], dc : dc + PATCH_SHAPE[1]].copy()
        ct_channels = list(CH_LUNG + CH_MEDIASTINAL)
        p[..., ct_channels] = np.clip(
            p[..., ct_channels] * rng.uniform(0.95, 1.05) + rng.uniform(-0.03, 0.03), 0, 1
        )
        if p[0, 0, CH_PET_FLAG] > 0 and rng.random() < 0.25:
            p[..., CH_SUV] = 0.0
            p[..., CH_PET_FLAG] = 0.0
        else:
            p[..., CH_SUV] = np.clip(p[..., CH_SUV] * rng.uniform(0.85, 1.15), 0, 1)
        out[i] = p
    return out


def _targets(
    ps: PatchSet, weights: dict[str, float]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Keras targets and per-output sample weights: histology masked on background patches;
    lesion loss with detector-candidate patches (positive or negative) weighted
    HARD_NEGATIVE_WEIGHT, then lesion patches scaled so both classes weigh the same in all."""
    index = {c: i for i, c in enumerate(HISTOLOGY_CLASSES)}
    onehot = np.zeros((len(ps.labels), len(HISTOLOGY_CLASSES)), dtype=np.float32)
    onehot[np.arange(len(ps.labels)), [index[c] for c in ps.labels]] = 1.0
    hist_w = np.asarray([weights[c] for c in ps.labels], dtype=np.float32) * ps.is_lesion
    y = {"lesion": ps.is_lesion.astype(np.float32)[:, None], "histology": onehot}
    hard = np.isin(ps.kinds, ("lesion_candidate", "candidate", "candidate_slice"))
    lesion_w = np.where(hard, HARD_NEGATIVE_WEIGHT, 1.0).astype(np.float32)
    positive, negative = lesion_w[ps.is_lesion].sum(), lesion_w[~ps.is_lesion].sum()
    if positive > 0 and negative > 0:
        lesion_w[ps.is_lesion] *= negative / positive
    sw = {"lesion": lesion_w, "histology": hist_w}
    return y, sw


def _make_sequence(ps: PatchSet, weights: dict[str, float], batch_size: int, seed: int) -> Any:
    import keras

    y, sw = _targets(ps, weights)

    class AugmentedPatches(keras.utils.PyDataset):
        """Shuffled, augmented batches; the order and augmentation depend on seed and epoch."""

        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng([seed, 0]).permutation(len(ps.labels))

        def __len__(self) -> int:
            return int(np.ceil(len(ps.labels) / batch_size))

        def __getitem__(
            self, i: int
        ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
            rows = self.order[i * batch_size : (i + 1) * batch_size]
            rng = np.random.default_rng([seed, self.epoch, i])
            x = augment(ps.patches[rows], rng)
            return x, {k: v[rows] for k, v in y.items()}, {k: v[rows] for k, v in sw.items()}

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(ps.labels))

    return AugmentedPatches()


def _data_description(dataset: DatasetScan) -> str:
    """'synthetic phantoms generated by lungnode synth ...' or the real collection's name."""
    from classifier.imaging.dicom_io import read_header

    first = next((a.path for p in dataset.patients for a in p.annotated), None)
    phantom = (
        first is not None
        and str(read_header(Path(first)).get("Manufacturer", "")) == PHANTOM_MANUFACTURER
    )
    n = len(dataset.patients)
    if phantom:
        return (
            f"synthetic phantoms generated by lungnode synth ({n} patients, "
            f"data fingerprint {dataset.fingerprint()})"
        )
    return f"Lung-PET-CT-Dx layout ({n} patients, data fingerprint {dataset.fingerprint()})"


def train(
    data_dir: Path,
    annotations_dir: Path | None,
    out: Path,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 32,
    command: str,
    progress: Callable[[str], None] = print,
) -> Path:
    """Train on a TCIA-layout folder and write the model, MODEL_CARD.md, TensorBoard logs and
    the evaluation report (on the test split) beside `out`; return `out`."""
    import keras

    from classifier.model.inference import sha256_of, write_model_metadata
    from classifier.model.network import build_model

    out = Path(out)
    if out.suffix != ".keras":
        raise ValueError(f"model file {out} must end in .keras (Keras 3 format)")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs} and batch_size={batch_size} must be at least 1")
    started = time.monotonic()
    dataset = scan(Path(data_dir), annotations_dir)
    labels = {p.patient_id: p.label for p in dataset.patients if p.annotated and p.label}
    if not labels:
        raise ValueError(f"no annotated patients found in {data_dir}; check the annotation folder")
    split = split_patients(labels, seed)
    progress(
        f"split by patient (seed {seed}): " + ", ".join(f"{k} {len(v)}" for k, v in split.items())
    )
    stats = BuildStats()
    sets = {
        k: build_patch_set(dataset, v, seed=seed, progress=progress, stats=stats)
        for k, v in split.items()
    }
    if not sets["train"].is_lesion.any():
        raise ValueError(
            f"no lesion patches could be built from {data_dir}; see the skipped counts {stats}"
        )
    weights = class_weights(sets["train"].labels[sets["train"].is_lesion].tolist())
    progress(
        "histology class weights (inverse frequency of training lesion patches): "
        + ", ".join(f"{c} {w:.2f}" for c, w in weights.items())
    )

    keras.utils.set_random_seed(seed)
    model = build_model(name=out.stem.replace("-", "_"))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={"lesion": "binary_crossentropy", "histology": "categorical_crossentropy"},
        metrics={"lesion": ["accuracy"]},
        weighted_metrics={"histology": ["accuracy"]},
    )
    validation = None
    if len(sets["validation"].labels):
        y_val, sw_val = _targets(sets["validation"], weights)
        validation = (sets["validation"].patches, y_val, sw_val)

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted((logs or {}).items()))
            progress(f"epoch {epoch + 1}/{epochs}: {shown}")

    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = out.parent / f"{out.stem}.logs"
    history = model.fit(
        _make_sequence(sets["train"], weights, batch_size, seed),
        validation_data=validation,
        epochs=epochs,
        verbose=0,
        callbacks=[
            Progress(),
            keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False),
        ],
    )
    hist = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    trained_on = _data_description(dataset)
    version = importlib.metadata.version("lungnode")
    model.save(out)
    write_model_metadata(
        out,
        {
            "name": out.stem,
            "version": version,
            "trained_on": trained_on,
            "clinical_use": False,
            "seed": seed,
            "epochs": epochs,
            "command": command,
            "split": split,
            "class_weights": weights,
            "data_fingerprint": dataset.fingerprint(),
            "history": hist,
        },
    )
    sha = sha256_of(out)

    scope_name = next((k for k in ("test", "validation", "train") if len(sets[k].labels)), "test")
    test = sets[scope_name]
    from classifier.model.inference import LesionClassifier

    lesion, histo = LesionClassifier.load(out).predict(test.patches)
    report_dir = out.parent / f"{out.stem}-report"
    metrics = write_report(
        PatchPredictions(test.patient_ids, test.is_lesion, test.labels, lesion, histo, test.kinds),
        report_dir,
        title=f"{out.stem} {version} ({scope_name} split)",
        history=hist,
        extra={
            "model": {"name": out.stem, "version": version, "sha256": sha},
            "data_fingerprint": dataset.fingerprint(),
            "scope": f"{scope_name} split recorded in the model",
        },
        seed=seed,
    )
    elapsed = time.monotonic() - started
    _write_model_card(
        out,
        report_dir,
        version,
        sha,
        trained_on,
        command,
        dataset,
        split,
        sets,
        weights,
        stats,
        metrics,
        epochs,
        batch_size,
        seed,
        model.count_params(),
        elapsed,
    )
    progress(f"model {out} (sha256 {sha[:12]}...), card and report written in {elapsed:.0f} s")
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(value: Any) -> str:
    return "n/a" if not value else f"{value[0]:.3f}-{value[1]:.3f}"


def _kind_lines(by_kind: dict[str, Any] | None) -> list[str]:
    """Model-card lines for the per-kind detection numbers of evaluation.compute_metrics."""
    if not by_kind:
        return []
    lines = []
    if by_kind.get("auc_lesion_vs_candidate") is not None:
        lines.append(
            "- Lesion vs detector candidates only (key-slice patches, as analyze() scores them):"
            f" AUC {_fmt(by_kind['auc_lesion_vs_candidate'])};"
            f" candidates scored >= 0.5 (would be reported as lesions):"
            f" {by_kind['candidate_reported']} of {by_kind['candidates']}"
            f" ({_fmt(by_kind['candidate_reported_per_patient'], 2)} per patient)"
        )
    for kind, row in by_kind.get("kinds", {}).items():
        lines.append(
            f"  - {kind}: {row['patches']} patches, mean lesion probability "
            f"{_fmt(row['mean_probability'])},"
            f" fraction >= 0.5 {_fmt(row['fraction_at_0.5'])}"
        )
    return lines


def _write_model_card(
    out: Path,
    report_dir: Path,
    version: str,
    sha: str,
    trained_on: str,
    command: str,
    dataset: DatasetScan,
    split: dict[str, list[str]],
    sets: dict[str, PatchSet],
    weights: dict[str, float],
    stats: BuildStats,
    metrics: dict[str, Any],
    epochs: int,
    batch_size: int,
    seed: int,
    params: int,
    elapsed_s: float,
) -> None:
    """MODEL_CARD.md beside the model: what it is, what it was trained on, how well it did."""
    rel = report_dir.name
    h, d = metrics["histology"], metrics["lesion_detection"]
    rows = []
    for name in ("train", "validation", "test"):
        ps = sets[name]
        patients = Counter(p.label for p in dataset.patients if p.patient_id in split[name])
        rows.append(
            f"| {name} | {len(split[name])} | "
            + " | ".join(str(patients[c]) for c in HISTOLOGY_CLASSES)
            + f" | {ps.count('lesion')} + {ps.count('lesion_candidate')}"
            + f" | {ps.count('candidate')} / "
            + f"{ps.count('candidate') + ps.count('candidate_slice')} | {ps.count('near')}"
            + f" | {ps.count('random')} |"
        )
    lines = [
        f"# Model card: {out.stem} {version}",
        "",
        "**NOT FOR CLINICAL USE.** A research/demo model of the lungnode DICOM node. It has not "
        "been",
        "validated on patients and must not inform any diagnosis or treatment.",
        "",
        "## Intended use",
        "",
        "Demonstrate the lungnode pipeline end to end: for each lung lesion candidate, a lesion",
        "probability and histologic-type probabilities (A adenocarcinoma, B small cell, E large "
        "cell,",
        "G squamous cell carcinoma), carried into a TID 1500 SR. "
        + (
            "Trained on synthetic phantoms only, so its numbers say nothing about real CT."
            if "phantom" in trained_on
            else ""
        ),
        "",
        "## Model",
        "",
        f"- File: `{out.name}` (Keras 3), SHA-256 `{sha}`",
        "- Provenance inside the file (zip comment, JSON): name, version, trained_on, "
        "clinical_use=false, split, history",
        f"- Input: 2.5-D patch {PATCH_SHAPE} (96 mm x 96 mm at 1.5 mm; CT slices at -5/0/+5 mm in "
        "lung",
        "  W1500/L-600 and mediastinal W400/L40 windows, SUV/10 on the centre slice, PET-present "
        "flag)",
        "- Architecture: 3 blocks of 2x(conv 3x3, batch norm, ReLU) + max-pool (16/32/48 "
        "filters), conv 64,",
        "  global average pooling, dropout 0.3, dense 64; outputs `lesion` (sigmoid) and "
        "`histology`",
        f"  (softmax over A/B/E/G); {params} parameters; layers from keras.layers only "
        "(TensorFlow/JAX/PyTorch)",
        "",
        "## Training data",
        "",
        f"- {trained_on}",
        f"- Data fingerprint (DatasetScan.fingerprint()): `{dataset.fingerprint()}`",
        (
            f"- Skipped while building patches: {stats.series_not_loadable} annotated series not "
            "loadable as CT, "
            f"{stats.annotated_slices_not_in_ct} annotated slices not in their CT volume, "
            f"{stats.patients_without_patches} patients without patches; {stats.pet_not_usable} "
            "annotated series without usable PET (CT-only patches)"
        ),
        "- Positive patches: centre of each annotated box on its slice, label = the patient's "
        "histology;",
        "  and each detector candidate whose mask touches a box, at the point where `analyze()` "
        "takes",
        "  its patch (key slice, candidate box centre), which is off the lesion's centre when the",
        "  candidate also covers adjacent mediastinum.",
        "- Hard-negative patches (detector candidates): the product's lesion detector",
        "  (`classifier.imaging.lesions.find_candidates`, on the CT and the SUV resampled onto it "
        "as `analyze()`",
        "  does) is run on every annotated series; every candidate whose key-slice centre is in "
        "no box and",
        f"  whose mask does not touch any annotated box (grown {BOX_MARGIN_MM:.0f} mm in-plane) "
        "is a negative:",
        f"  its patch where `analyze()` takes it, plus up to {HARD_NEGATIVE_SLICES - 1} more at "
        "its centre on other slices it spans",
        f"  ({stats.hard_negative_candidates} candidates in all splits). Detector-candidate "
        "patches,"
        f" positive or negative, have lesion-loss weight {HARD_NEGATIVE_WEIGHT:g}: there are few"
        " of them and they are what `analyze()` scores. Lesion patches are then scaled so that"
        " lesion and background weigh the same in the lesion loss.",
        f"- Near negative patches: {NEAR_NEGATIVES_PER_POSITIVE} per positive at lung points "
        "(vessels and"
        f" pleura first) {NEAR_NEGATIVE_RING_MM[0]:.0f}-{NEAR_NEGATIVE_RING_MM[1]:.0f} mm beyond "
        "a box's"
        " half long side, so a vessel beside a tumour is not called a tumour.",
        f"- Random negative patches: {NEGATIVES_PER_POSITIVE} per positive at random locations of "
        "the",
        "  project's lung mask (`classifier.imaging.lung_mask.lung_mask`, dilated 2 px; half on "
        "dense tissue:",
        f"  vessels, pleura) at least box radius + {NEGATIVE_MARGIN_MM:.0f} mm from every box "
        "centre.",
        "",
        "## Split (by patient, stratified by class, seed " + str(seed) + ")",
        "",
        "| split | patients | "
        + " | ".join(HISTOLOGY_CLASSES)
        + " | lesion patches (box centres + detected) | detector candidates / their patches"
        + " | near patches"
        + " | random lung patches |",
        "|---|---|" + "---|" * len(HISTOLOGY_CLASSES) + "---|---|---|---|",
        *rows,
        "",
        *(f"- {name}: {', '.join(ids) if ids else '(none)'}" for name, ids in split.items()),
        "",
        "## Class imbalance",
        "",
        "Histology loss weighted per patch by inverse class frequency among the training lesion "
        "patches,",
        "w_c = n / (k * n_c) over the k classes present: "
        + ", ".join(f"{c} {w:.2f}" for c, w in weights.items())
        + ". The histology loss is masked (weight 0) on background patches.",
        "Augmentation: flips, quarter turns, shifts up to 3 px, CT contrast/brightness jitter, "
        "SUV scale",
        "jitter, PET dropout (25 %, so CT-only studies are in distribution).",
        "",
        "## Reproduce",
        "",
        "```",
        command,
        "```",
        "",
        f"Epochs {epochs}, batch size {batch_size}, Adam 1e-3, seed {seed}; trained in "
        f"{elapsed_s:.0f} s on CPU. TensorBoard logs: `{out.stem}.logs/` (not committed).",
        "",
        "## Metrics (" + metrics.get("scope", "test split") + f", {metrics['patients']} patients)",
        "",
        (
            "- Histology, per patient (mean of lesion-patch probabilities): accuracy "
            f"{_fmt(h['accuracy'])},"
            f" balanced accuracy {_fmt(h['balanced_accuracy'])} (95% CI "
            f"{_ci(h['balanced_accuracy_ci95'])}),"
            f" macro-F1 {_fmt(h['macro_f1'])} (95% CI {_ci(h['macro_f1_ci95'])});"
            f" majority-class accuracy {_fmt(h['majority_class_accuracy'])}"
        ),
        f"- Lesion detection, per patch: AUC {_fmt(d['auc'])} (95% CI {_ci(d['auc_ci95'])}), "
        f"accuracy at 0.5 {_fmt(d['accuracy_at_0.5'])}",
        *_kind_lines(d.get("by_kind")),
        f"- Bootstrap: {metrics['bootstrap']['rounds']} resamples of patients, percentile "
        "interval.",
        (
            f"- Report: [{rel}/metrics.json]({rel}/metrics.json), [confusion "
            f"matrix]({rel}/confusion_matrix.png),"
            f" [ROC curves]({rel}/roc_histology.png), [training curves]({rel}/training_curves.png)"
        ),
        "",
    ]
    (out.parent / "MODEL_CARD.md").write_text("\n".join(lines))
