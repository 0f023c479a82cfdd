"""One phantom study: the anatomy and lesions of a seed rendered and encoded as CT (and PET)
DICOM series, with its ground truth (lesions, mask, planned SUV, annotation boxes)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypedDict

import numpy as np
import pydicom
import pydicom.uid
from pydicom.dataset import Dataset

from classifier.datasets.field_of_view import crop_series
from classifier.datasets.phantom.anatomy import (
    AORTA,
    CT_HU_MAX,
    FIELD_OF_VIEW_MM,
    HEART,
    LUNG,
    REGIONS,
    VESSEL,
    Grid,
    LesionShape,
    PhantomLesion,
    abdomen_labels,
    ct_volume,
    head_labels,
    pet_volume,
    plan_lesion,
    plan_vessels,
    tissue_labels,
)
from classifier.datasets.phantom.dicom_series import (
    COMPRESSED,
    PHASE_DELAYS_S,
    UNCOMPRESSED,
    StudyHeader,
    bolus_tracking_datasets,
    ct_datasets,
    pet_datasets,
    phantom_uid,
)
from classifier.types import HISTOLOGY_CLASSES, HISTOLOGY_NAMES


class StudyOptions(TypedDict, total=False):
    """The keyword arguments of generate_study that a caller may pass on (write_tcia_layout)."""

    ct_size: int
    ct_slices: int
    slice_thickness_mm: float
    pet: bool
    pet_size: int
    pet_slices: int | None
    n_lesions: int
    lesion: bool
    transfer_syntax: str
    ct_phases: int
    bolus_tracking_images: int
    region: str
    field_of_view_mm: float | None


@dataclass(frozen=True)
class AnnotationBox:
    """One PASCAL-VOC box on one CT slice, in pixel columns/rows as LabelImg writes them."""

    sop_instance_uid: str
    label: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int


@dataclass(frozen=True)
class PhantomStudy:
    """A generated PET/CT study with its ground truth.

    `ct` and `pet` are ordered by increasing z (`ct` acquisition after acquisition when it
    holds several contrast phases under one series); `lesion_mask` is on the CT grid
    [slice, row, col]; `pet_suv` is the planned SUVbw on the PET grid (None without PET);
    `bolus_tracking` is a monitoring series (images at one position over time), often empty.
    """

    patient_id: str
    histology: str
    study_instance_uid: str
    ct: list[Dataset] = field(repr=False)
    pet: list[Dataset] = field(repr=False)
    lesions: list[PhantomLesion]
    boxes: list[AnnotationBox] = field(repr=False)
    lesion_mask: np.ndarray = field(repr=False, compare=False)
    pet_suv: np.ndarray | None = field(default=None, repr=False, compare=False)
    bolus_tracking: list[Dataset] = field(default_factory=list, repr=False)


def _boxes(ct: list[Dataset], masks: list[np.ndarray], label: str) -> list[AnnotationBox]:
    """One box per lesion per CT slice it crosses, in pixel columns (x) and rows (y)."""
    boxes = []
    for k, ds in enumerate(ct):
        for mask in masks:
            rows, cols = np.nonzero(mask[k])
            if len(rows):
                boxes.append(
                    AnnotationBox(
                        ds.SOPInstanceUID,
                        label,
                        int(cols.min()),
                        int(rows.min()),
                        int(cols.max()),
                        int(rows.max()),
                    )
                )
    return boxes


# HU added by contrast to blood (vessels, heart, aorta) in each phase of a multi-phase CT.
_PHASE_ENHANCEMENT_HU = (0.0, 140.0, 60.0)
_BOLUS_PEAK_HU = 250.0


def _enhanced(hu: np.ndarray, labels: np.ndarray, lesions: np.ndarray, hu_add: float) -> np.ndarray:
    """`hu` with `hu_add` in the blood (vessels, heart chambers, aorta) outside the lesions."""
    if hu_add == 0.0:
        return hu
    blood = np.isin(labels, (VESSEL, HEART, AORTA)) & ~lesions
    out = hu.astype(np.int32)
    out[blood] += int(round(hu_add))
    return np.clip(out, None, CT_HU_MAX).astype(hu.dtype)


def _region_labels(
    region: str, grid: Grid, z_mid: float, z_half: float, vessels: list
) -> np.ndarray:
    """The tissue label map of the body region on `grid`."""
    if region == "head":
        return head_labels(grid)
    if region == "abdomen":
        return abdomen_labels(grid)
    return tissue_labels(grid, z_mid, z_half, vessels)


def generate_study(
    seed: int,
    histology: str,
    *,
    patient_number: int = 1,
    ct_size: int = 128,
    ct_slices: int = 40,
    slice_thickness_mm: float = 5.0,
    pet: bool = True,
    pet_size: int = 64,
    pet_slices: int | None = None,
    n_lesions: int = 1,
    lesion: bool = True,
    transfer_syntax: str = pydicom.uid.ExplicitVRLittleEndian,
    ct_phases: int = 1,
    bolus_tracking_images: int = 0,
    region: str = "chest",
    field_of_view_mm: float | None = None,
) -> PhantomStudy:
    """Generate one chest CT (and PET) study, deterministic from `seed` and the arguments.

    PET slices cover the CT range: `pet_slices` of them when given, else as many as the PET
    slice thickness (the larger of the CT thickness and the PET pixel spacing) needs.

    `ct_phases` (1-3) puts that many contrast phases (non-contrast, portal-venous, delayed) of
    the same positions under the one CT Series Instance UID, told apart only by Acquisition
    Number and Acquisition Time, as GE multi-phase studies send them; the annotation boxes are
    on every phase. `bolus_tracking_images` (0, or 2-100) adds a bolus-tracking series of that
    many images at one table position, one a second, while the aorta fills with contrast.

    Studies the node must refuse: `region` "abdomen" (the lung bases in the highest slices,
    bowel gas) or "head" instead of the chest, without lesions; `field_of_view_mm` cuts the CT
    images to that square around the first lesion (the body centre without one), as a
    reconstruction with a small field of view would show them.
    """
    if histology not in HISTOLOGY_CLASSES:
        raise ValueError(f"histology {histology!r} is not one of {HISTOLOGY_CLASSES}")
    for name, value, low in (
        ("ct_size", ct_size, 32),
        ("ct_slices", ct_slices, 4),
        ("pet_size", pet_size, 16),
        ("pet_slices", 2 if pet_slices is None else pet_slices, 2),
        ("patient_number", patient_number, 0),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r}: expected an integer >= {low}")
    if not 0.5 <= slice_thickness_mm <= 20.0:
        raise ValueError(f"slice_thickness_mm={slice_thickness_mm!r}: expected 0.5 to 20 mm")
    if n_lesions < 0 or n_lesions > 4:
        raise ValueError(f"n_lesions={n_lesions!r}: expected 0 to 4")
    if not isinstance(ct_phases, int) or not 1 <= ct_phases <= len(PHASE_DELAYS_S):
        raise ValueError(f"ct_phases={ct_phases!r}: expected 1 to {len(PHASE_DELAYS_S)}")
    if not isinstance(bolus_tracking_images, int) or bolus_tracking_images not in (
        0,
        *range(2, 101),
    ):
        raise ValueError(f"bolus_tracking_images={bolus_tracking_images!r}: expected 0 or 2-100")
    if transfer_syntax not in UNCOMPRESSED | COMPRESSED:
        raise ValueError(
            f"transfer_syntax {transfer_syntax!r} is not supported: use one of "
            f"{sorted(UNCOMPRESSED | COMPRESSED)}"
        )
    if region not in REGIONS:
        raise ValueError(f"region {region!r} is not one of {REGIONS}")
    if region != "chest" and lesion and n_lesions:
        raise ValueError(f"region {region!r} has no lungs to plant lesions in; pass lesion=False")
    if field_of_view_mm is not None and not 50.0 <= field_of_view_mm < FIELD_OF_VIEW_MM:
        raise ValueError(
            f"field_of_view_mm={field_of_view_mm!r}: expected 50 to {FIELD_OF_VIEW_MM:g} mm"
        )
    n_lesions = n_lesions if lesion else 0
    seed_key: tuple[object, ...] = (
        seed,
        histology,
        patient_number,
        ct_size,
        ct_slices,
        slice_thickness_mm,
        pet,
        pet_size,
        pet_slices,
        n_lesions,
    )
    if ct_phases != 1:  # another CT series under the same UID must not share its UIDs
        seed_key = (*seed_key, "phases", ct_phases)
    if region != "chest" or field_of_view_mm is not None:
        seed_key = (*seed_key, region, field_of_view_mm)
    rng = np.random.default_rng([seed, HISTOLOGY_CLASSES.index(histology), patient_number])

    z = (np.arange(ct_slices) - (ct_slices - 1) / 2.0) * slice_thickness_mm
    ct_grid = Grid(ct_size, FIELD_OF_VIEW_MM / ct_size, z)
    z_mid, z_half = 0.0, max(float(z[-1]), 40.0)
    vessels = plan_vessels(rng, z_mid, z_half)
    shapes: list[LesionShape] = []
    labels = _region_labels(region, ct_grid, z_mid, z_half, vessels)
    for _ in range(n_lesions):
        for _attempt in range(50):
            shape = plan_lesion(rng, histology, z, z_mid, z_half)
            c = shape.lesion.center_mm
            ci = int(np.argmin(np.abs(z - c[2])))
            ri = int(np.argmin(np.abs(ct_grid.xy - c[1])))
            cj = int(np.argmin(np.abs(ct_grid.xy - c[0])))
            apart = all(
                np.linalg.norm(np.subtract(c, s.lesion.center_mm))
                > shape.lesion.radius_mm + s.lesion.radius_mm + 5.0
                for s in shapes
            )
            if labels[ci, ri, cj] in (LUNG, VESSEL) and apart:
                shapes.append(shape)
                break
        else:
            raise RuntimeError(f"could not place lesion {len(shapes) + 1} for seed {seed}")
    hu, union, masks = ct_volume(rng, ct_grid, labels, shapes)

    letter = histology
    patient_id = f"Lung_Dx-{letter}{patient_number:04d}"
    study_dt = datetime(2005, 1, 3, 8, 0, 0) + timedelta(
        days=int(rng.integers(0, 3650)), minutes=int(rng.integers(0, 9 * 60))
    )
    birth = datetime(1935, 1, 1) + timedelta(days=int(rng.integers(0, 40 * 365)))
    age = study_dt.year - birth.year - ((study_dt.month, study_dt.day) < (birth.month, birth.day))
    header = StudyHeader(
        patient_id=patient_id,
        patient_sex="F" if rng.random() < 0.45 else "M",
        birth_date=birth.strftime("%Y%m%d"),
        age=f"{age:03d}Y",
        weight_kg=f"{rng.uniform(50.0, 100.0):.1f}",
        study_uid=phantom_uid(*seed_key, "study"),
        frame_uid=phantom_uid(*seed_key, "frame-of-reference"),
        study_dt=study_dt,
        accession=f"PH{int(rng.integers(0, 10**8)):08d}",
        study_id=str(int(rng.integers(1, 10**6))),
    )
    ct: list[Dataset] = []
    boxes: list[AnnotationBox] = []
    seen_union = union  # the lesion mask on the CT images as written (cropped or not)
    for phase in range(ct_phases):
        phase_ct = ct_datasets(
            header,
            seed_key,
            ct_grid,
            _enhanced(hu, labels, union, _PHASE_ENHANCEMENT_HU[phase]),
            slice_thickness_mm,
            transfer_syntax,
            phase=phase,
            description=f"CT {region} phantom" if ct_phases == 1 else "CT chest multiphase phantom",
        )
        seen_masks = masks
        if field_of_view_mm is not None:
            centre = shapes[0].lesion.center_mm[:2] if shapes else (0.0, 5.0)
            phase_ct, (r0, r1, c0, c1) = crop_series(phase_ct, centre, field_of_view_mm)
            seen_masks = [m[:, r0:r1, c0:c1] for m in masks]
            seen_union = union[:, r0:r1, c0:c1]
        if region != "chest":
            for ds in phase_ct:
                ds.BodyPartExamined = region.upper()
                ds.StudyDescription = f"{region.capitalize()} CT phantom"
        ct.extend(phase_ct)
        boxes.extend(_boxes(phase_ct, seen_masks, histology))
    bolus: list[Dataset] = []
    if bolus_tracking_images:
        rise = np.linspace(0.0, _BOLUS_PEAK_HU, bolus_tracking_images)
        level = ct_slices // 2  # the monitoring level, mid-chest where the aorta is
        aorta = labels[level] == AORTA
        frames = np.repeat(hu[level : level + 1], bolus_tracking_images, axis=0).astype(np.int32)
        frames[:, aorta] += np.rint(rise).astype(np.int32)[:, None]
        bolus = bolus_tracking_datasets(
            header,
            seed_key,
            ct_grid,
            float(z[level]),
            np.clip(frames, None, CT_HU_MAX),
            transfer_syntax,
        )

    pet_ds: list[Dataset] = []
    pet_suv = None
    if pet:
        pet_spacing = FIELD_OF_VIEW_MM / pet_size
        if pet_slices is None:
            pet_thick = max(slice_thickness_mm, round(pet_spacing, 2))
            n_pet = int(np.ceil((z[-1] - z[0]) / pet_thick)) + 1
            pet_z = z[0] + pet_thick * np.arange(n_pet)
        else:
            pet_z = np.linspace(z[0], z[-1], pet_slices)
            pet_thick = float(pet_z[1] - pet_z[0])
        pet_grid = Grid(pet_size, pet_spacing, pet_z)
        pet_labels = _region_labels(region, pet_grid, z_mid, z_half, [])
        pet_suv = pet_volume(rng, pet_grid, pet_labels, shapes)
        pet_ds = pet_datasets(header, seed_key, rng, pet_grid, pet_suv, pet_thick, transfer_syntax)

    return PhantomStudy(
        patient_id=patient_id,
        histology=histology,
        study_instance_uid=header.study_uid,
        ct=ct,
        pet=pet_ds,
        lesions=[s.lesion for s in shapes],
        boxes=boxes,
        lesion_mask=seen_union,
        pet_suv=pet_suv,
        bolus_tracking=bolus,
    )


def histology_name(letter: str) -> str:
    """The words for a histology letter (for descriptions and reports)."""
    return HISTOLOGY_NAMES[letter]


def study_digest(study: PhantomStudy) -> str:
    """SHA-256 over the UIDs and pixel data of a study: equal digests mean identical phantoms."""
    h = hashlib.sha256()
    for ds in study.ct + study.pet + study.bolus_tracking:
        h.update(ds.SOPInstanceUID.encode())
        h.update(bytes(ds.PixelData))
    return h.hexdigest()
