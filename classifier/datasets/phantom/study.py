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

from classifier.datasets.phantom.anatomy import (
    FIELD_OF_VIEW_MM,
    LUNG,
    VESSEL,
    Grid,
    LesionShape,
    PhantomLesion,
    ct_volume,
    pet_volume,
    plan_lesion,
    plan_vessels,
    tissue_labels,
)
from classifier.datasets.phantom.dicom_series import (
    COMPRESSED,
    UNCOMPRESSED,
    StudyHeader,
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

    `ct` and `pet` are ordered by increasing z; `lesion_mask` is on the CT grid
    [slice, row, col]; `pet_suv` is the planned SUVbw on the PET grid (None without PET).
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
) -> PhantomStudy:
    """Generate one chest CT (and PET) study, deterministic from `seed` and the arguments.

    PET slices cover the CT range: `pet_slices` of them when given, else as many as the PET
    slice thickness (the larger of the CT thickness and the PET pixel spacing) needs.
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
    if transfer_syntax not in UNCOMPRESSED | COMPRESSED:
        raise ValueError(
            f"transfer_syntax {transfer_syntax!r} is not supported: use one of "
            f"{sorted(UNCOMPRESSED | COMPRESSED)}"
        )
    n_lesions = n_lesions if lesion else 0
    seed_key = (
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
    rng = np.random.default_rng([seed, HISTOLOGY_CLASSES.index(histology), patient_number])

    z = (np.arange(ct_slices) - (ct_slices - 1) / 2.0) * slice_thickness_mm
    ct_grid = Grid(ct_size, FIELD_OF_VIEW_MM / ct_size, z)
    z_mid, z_half = 0.0, max(float(z[-1]), 40.0)
    vessels = plan_vessels(rng, z_mid, z_half)
    shapes: list[LesionShape] = []
    labels = tissue_labels(ct_grid, z_mid, z_half, vessels)
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
    ct = ct_datasets(header, seed_key, ct_grid, hu, slice_thickness_mm, transfer_syntax)

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
        pet_labels = tissue_labels(pet_grid, z_mid, z_half, [])
        pet_suv = pet_volume(rng, pet_grid, pet_labels, shapes)
        pet_ds = pet_datasets(header, seed_key, rng, pet_grid, pet_suv, pet_thick, transfer_syntax)

    return PhantomStudy(
        patient_id=patient_id,
        histology=histology,
        study_instance_uid=header.study_uid,
        ct=ct,
        pet=pet_ds,
        lesions=[s.lesion for s in shapes],
        boxes=_boxes(ct, masks, histology),
        lesion_mask=union,
        pet_suv=pet_suv,
    )


def histology_name(letter: str) -> str:
    """The words for a histology letter (for descriptions and reports)."""
    return HISTOLOGY_NAMES[letter]


def study_digest(study: PhantomStudy) -> str:
    """SHA-256 over the UIDs and pixel data of a study: equal digests mean identical phantoms."""
    h = hashlib.sha256()
    for ds in study.ct + study.pet:
        h.update(ds.SOPInstanceUID.encode())
        h.update(bytes(ds.PixelData))
    return h.hexdigest()
