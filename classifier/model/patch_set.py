"""The patch set of a Lung-PET-CT-Dx style collection (TCIA layout + XML boxes), for training
and for evaluating a model on the same patches.

Positive patches sit at the centre of each annotated box, labelled with the patient's histology,
and at each detector candidate on a box, where analyze() takes its patch. Negative patches are of
three kinds: hard negatives, every candidate the product's own lesion detector
(classifier.imaging.lesions.find_candidates) proposes away from the annotated boxes, so the CNN
learns to reject exactly what it will be shown; near negatives in the lung just outside each
lesion; and random locations in the project's lung mask (classifier.imaging.lung_mask) away from
every box. The patches of a patient depend only on the seed and the patient id.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from classifier.model.patches import PATCH_SHAPE, extract_patch

if TYPE_CHECKING:  # run-time imports of the DICOM side happen inside the functions
    from classifier.datasets.tcia_dataset import DatasetScan, PatientRecord
    from classifier.imaging.lesions import Candidate
    from classifier.imaging.lung_mask import LungMask
    from classifier.imaging.volume import Volume

log = logging.getLogger(__name__)

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
        # A patient without a diagnosis has label None, which the str array makes "None".
        labels += [str(record.label)] * len(patches)
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
