"""Synthetic chest PET/CT phantoms with lung lesions, written as valid DICOM in the TCIA layout.

Tests, benchmarks and model training need studies whose truth is known: each phantom is a
deterministic function of its seed and carries the ground-truth lesion mask, the planned SUV
volume and TCIA-style annotation boxes. Not anatomy-grade: a body ellipse, two lungs with
vessels, mediastinum, heart, aorta, spine, a table, and one lesion type per histology.
"""

from __future__ import annotations

import csv
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pydicom
import pydicom.uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from scipy import ndimage

from classifier.types import HISTOLOGY_CLASSES, HISTOLOGY_NAMES

FIELD_OF_VIEW_MM = 350.0
CT_RESCALE_INTERCEPT = -1024
CT_HU_MAX = 4095 + CT_RESCALE_INTERCEPT  # 12 bits stored, unsigned
MANUFACTURER = "lungnode phantom"
COLLECTION = "Lung-PET-CT-Dx"
F18_HALF_LIFE_S = 6586.2
IMPLEMENTATION_CLASS_UID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
IMPLEMENTATION_VERSION_NAME = "LUNGNODE_PHANTOM"

_UNCOMPRESSED = {
    pydicom.uid.ExplicitVRLittleEndian,
    pydicom.uid.ImplicitVRLittleEndian,
    pydicom.uid.DeflatedExplicitVRLittleEndian,
}
_COMPRESSED = {
    pydicom.uid.RLELossless,
    pydicom.uid.JPEG2000Lossless,
    pydicom.uid.JPEGLSLossless,
}

# Tissue labels of the anatomy map, shared by the CT (HU) and PET (SUV) renderings.
_AIR, _FAT, _SOFT, _LUNG, _HEART, _AORTA, _BONE, _MARROW, _TABLE, _VESSEL = range(10)
_HU = np.array([-1000, -100, 45, -850, 40, 40, 700, 250, 150, 40], dtype=np.float32)
_SUV = np.array([0.0, 0.4, 0.8, 0.5, 2.2, 1.8, 0.6, 1.4, 0.0, 1.7], dtype=np.float32)
_HU_NOISE_SD = 12.0
_PET_NOISE_CV = 0.08
_PET_BLUR_VOXELS = 0.6


@dataclass(frozen=True)
class PhantomLesion:
    """One planted lesion: its histology, centre (patient LPS mm), radius and peak SUV."""

    histology: str
    center_mm: tuple[float, float, float]
    radius_mm: float
    suv_peak: float


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


@dataclass(frozen=True)
class _Grid:
    """Voxel-centre coordinates (mm) of an axial image stack."""

    size: int
    spacing: float
    z: np.ndarray

    @property
    def xy(self) -> np.ndarray:
        return -FIELD_OF_VIEW_MM / 2 + self.spacing / 2 + self.spacing * np.arange(self.size)

    @property
    def origin_xy(self) -> float:
        return float(self.xy[0])


@dataclass(frozen=True)
class _Shape:
    """Internal shape parameters of one lesion, drawn from the generator."""

    lesion: PhantomLesion
    inner_frac: float  # A solid core, E necrotic core, G cavity; radius fraction
    inner_offset: tuple[float, float, float]
    halo_hu: float
    lobes: tuple[tuple[tuple[float, float, float], float, float], ...]  # direction, amp, phase
    spikes: tuple[tuple[tuple[float, float, float], float], ...]  # direction, length


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:lungnode:phantom")


def _uid(*parts: object) -> str:
    """A reproducible 2.25 UID from a name-based (v5) UUID of `parts`.

    pydicom's generate_uid(prefix=None, entropy_srcs=...) ignores the entropy and is random,
    so the UUID is derived here; uniqueness rests on SHA-1 like any name-based UUID.
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '|'.join(map(str, parts))).int}"


def _ds_str(value: float, digits: int = 10) -> str:
    """A value formatted to fit a DS (16 characters) whose parsed float is the value used."""
    text = f"{value:.{digits}g}"
    while len(text) > 16:
        digits -= 1
        text = f"{value:.{digits}g}"
    return text


def _lungs(x: np.ndarray, y: np.ndarray, z: np.ndarray, z_mid: float, z_half: float) -> dict:
    """Lung ellipses per side at each z: centre x, centre y, semi-axes (scaled to the dome)."""
    t = np.clip((z - z_mid) / (z_half * 1.35), -0.95, 0.95)
    scale = np.sqrt(1.0 - t**2)
    return {
        "right": (-78.0, 0.0, 58.0 * scale, 82.0 * scale),
        "left": (80.0, 2.0, 52.0 * scale, 80.0 * scale),
    }


def _anatomy(grid: _Grid, z_mid: float, z_half: float, vessels: list) -> np.ndarray:
    """Tissue label map [slice, row, col] of the chest on `grid`."""
    xs = grid.xy
    x = xs[None, :]
    y = xs[:, None]
    base = np.full((grid.size, grid.size), _AIR, dtype=np.uint8)
    base[((x / 160.0) ** 2 + ((y - 5.0) / 115.0) ** 2) <= 1.0] = _FAT
    base[((x / 150.0) ** 2 + ((y - 5.0) / 105.0) ** 2) <= 1.0] = _SOFT
    base[(y >= 128.0) & (y <= 134.0) & (np.abs(x) <= 170.0)] = _TABLE
    labels = np.repeat(base[None], len(grid.z), axis=0)
    lungs = _lungs(None, None, grid.z, z_mid, z_half)
    # Heart in the lower half of the chest, pushing into the left lung.
    heart_scale = np.sqrt(np.clip((z_mid + 0.2 * z_half - grid.z) / (0.8 * z_half), 0.0, 1.0))
    for k in range(len(grid.z)):
        lung = np.zeros(base.shape, dtype=bool)
        for cx, cy, ax, ay in lungs.values():
            lung |= ((x - cx) / ax[k]) ** 2 + ((y - cy) / ay[k]) ** 2 <= 1.0
        labels[k][lung] = _LUNG
        if heart_scale[k] > 0:
            hs = heart_scale[k]
            labels[k][((x - 22.0) / (55.0 * hs)) ** 2 + ((y + 18.0) / (48.0 * hs)) ** 2 <= 1.0] = (
                _HEART
            )
    # Aorta posterior-left, vertebral body with marrow, spinous process: the same on every slice.
    fixed = np.full(base.shape, 255, dtype=np.uint8)
    fixed[(x - 24.0) ** 2 + (y - 52.0) ** 2 <= 13.0**2] = _AORTA
    spine_r2 = x**2 + (y - 80.0) ** 2
    fixed[spine_r2 <= 17.0**2] = _BONE
    fixed[spine_r2 <= 13.0**2] = _MARROW
    fixed[(np.abs(x) <= 4.0) & (y > 95.0) & (y < 112.0)] = _BONE
    labels = np.where(fixed[None] != 255, fixed[None], labels)
    for start, end, r0 in vessels:
        lo, hi = np.minimum(start, end) - r0, np.maximum(start, end) + r0
        box = tuple(
            slice(int(np.searchsorted(c, lo[a])), int(np.searchsorted(c, hi[a], side="right")))
            for a, c in ((2, grid.z), (1, xs), (0, xs))
        )
        pz = grid.z[box[0]][:, None, None]
        py = xs[box[1]][None, :, None]
        px = xs[box[2]][None, None, :]
        d = end - start
        t = ((px - start[0]) * d[0] + (py - start[1]) * d[1] + (pz - start[2]) * d[2]) / (d @ d)
        t = np.clip(t, 0.0, 1.0)
        dist2 = (
            (px - start[0] - t * d[0]) ** 2
            + (py - start[1] - t * d[1]) ** 2
            + (pz - start[2] - t * d[2]) ** 2
        )
        sub = labels[box]
        sub[(dist2 <= (r0 * (1.0 - 0.6 * t)) ** 2) & (sub == _LUNG)] = _VESSEL
    return labels


def _plan_vessels(rng: np.random.Generator, z_mid: float, z_half: float) -> list:
    """Thin tubes from each hilum outwards: (start mm, end mm, radius mm)."""
    vessels = []
    for cx, cy in ((-78.0, 0.0), (80.0, 2.0)):
        hilum = np.array([cx * 0.55, cy, z_mid])
        for _ in range(6):
            direction = rng.normal(size=3)
            direction[0] = abs(direction[0]) * np.sign(cx)
            direction[2] *= 0.8
            direction /= np.linalg.norm(direction)
            length = rng.uniform(40.0, min(90.0, 0.9 * z_half + 40.0))
            vessels.append((hilum, hilum + direction * length, rng.uniform(1.5, 3.0)))
    return vessels


def _unit(rng: np.random.Generator) -> tuple[float, float, float]:
    v = rng.normal(size=3)
    v /= np.linalg.norm(v)
    return (float(v[0]), float(v[1]), float(v[2]))


def _plan_lesion(
    rng: np.random.Generator, histology: str, ct_z: np.ndarray, z_mid: float, z_half: float
) -> _Shape:
    """Place and shape one lesion of `histology` inside a lung (type-specific site and look)."""
    radius = {
        "A": rng.uniform(8.0, 20.0),
        "B": rng.uniform(10.0, 20.0),
        "E": rng.uniform(20.0, 30.0),
        "G": rng.uniform(10.0, 20.0),
    }[histology]
    suv = {
        "A": rng.uniform(3.0, 6.0),
        "B": rng.uniform(8.0, 15.0),
        "E": rng.uniform(7.0, 13.0),
        "G": rng.uniform(6.0, 12.0),
    }[histology]
    z_lo = max(float(ct_z[0]) + 0.5 * radius, z_mid - 0.55 * z_half)
    z_hi = min(float(ct_z[-1]) - 0.5 * radius, z_mid + 0.35 * z_half)
    cz = rng.uniform(min(z_lo, z_hi), max(z_lo, z_hi)) if z_hi > z_lo else z_mid
    side = "right" if rng.random() < 0.55 else "left"
    cx, cy, ax, ay = _lungs(None, None, np.array([cz]), z_mid, z_half)[side]
    ax, ay = float(ax[0]), float(ay[0])
    medial = 0.0 if side == "right" else np.pi  # angle pointing to the mediastinum
    if histology in ("A", "E"):  # peripheral: anterior, lateral or posterior pleura
        theta = medial + np.pi + rng.uniform(-1.3, 1.3)
        depth = radius * (0.85 if histology == "A" else 1.0) + 2.0
    elif histology == "B":  # hilar: against the mediastinum
        theta = medial + rng.uniform(-0.5, 0.5)
        depth = 0.6 * radius
    else:  # G: central-ish
        theta = medial + rng.uniform(-0.9, 0.9)
        depth = max(radius + 6.0, 0.45 * min(ax, ay))
    ex, ey = cx + ax * np.cos(theta), cy + ay * np.sin(theta)
    to_centre = np.array([cx - ex, cy - ey])
    to_centre /= np.linalg.norm(to_centre)
    depth = min(depth, 0.8 * min(ax, ay))
    center = (float(ex + to_centre[0] * depth), float(ey + to_centre[1] * depth), float(cz))
    lesion = PhantomLesion(histology, center, float(radius), float(suv))
    lobes: tuple = ()
    spikes: tuple = ()
    inner_frac, halo_hu = 0.0, 0.0
    if histology == "A":
        lobes = tuple(
            (_unit(rng), rng.uniform(0.08, 0.16), rng.uniform(0, 2 * np.pi)) for _ in range(4)
        )
        inner_frac, halo_hu = rng.uniform(0.45, 0.65), rng.uniform(-400.0, -200.0)
    elif histology == "B":
        lobes = ((_unit(rng), 0.03, rng.uniform(0, 2 * np.pi)),)
    elif histology == "E":
        lobes = tuple((_unit(rng), 0.05, rng.uniform(0, 2 * np.pi)) for _ in range(2))
        inner_frac = rng.uniform(0.45, 0.6)
    else:
        spikes = tuple(
            (_unit(rng), rng.uniform(0.35, 0.7)) for _ in range(int(rng.integers(8, 14)))
        )
        inner_frac = rng.uniform(0.3, 0.5)
    off = np.array(_unit(rng)) * rng.uniform(0.0, 0.15) * radius
    return _Shape(
        lesion, float(inner_frac), tuple(float(o) for o in off), float(halo_hu), lobes, spikes
    )


def _render_lesion(
    shape: _Shape, grid: _Grid
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
    """Lesion on `grid` within its bounding box: (box, inside mask, HU, SUV); None if off-grid."""
    les = shape.lesion
    reach = les.radius_mm * (1.0 + max((s[1] for s in shape.spikes), default=0.2)) + grid.spacing
    xs = grid.xy

    def span(coords: np.ndarray, c: float) -> slice:
        idx = np.nonzero(np.abs(coords - c) <= reach)[0]
        return slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0)

    box = (span(grid.z, les.center_mm[2]), span(xs, les.center_mm[1]), span(xs, les.center_mm[0]))
    if any(s.stop == s.start for s in box):
        return None
    dz = grid.z[box[0]][:, None, None] - les.center_mm[2]
    dy = xs[box[1]][None, :, None] - les.center_mm[1]
    dx = xs[box[2]][None, None, :] - les.center_mm[0]
    r = np.sqrt(dx**2 + dy**2 + dz**2) + 1e-6
    ux, uy, uz = dx / r, dy / r, dz / r
    modulation = np.zeros_like(r)
    for (vx, vy, vz), amp, phase in shape.lobes:
        modulation += amp * np.cos(3.0 * np.pi * (ux * vx + uy * vy + uz * vz) + phase)
    for (vx, vy, vz), length in shape.spikes:
        cos_angle = ux * vx + uy * vy + uz * vz
        modulation += length * np.clip((cos_angle - 0.97) / 0.03, 0.0, 1.0) ** 2
    rn = r / (les.radius_mm * (1.0 + modulation))
    inside = rn <= 1.0
    ox, oy, oz = shape.inner_offset
    r_inner = np.sqrt((dx - ox) ** 2 + (dy - oy) ** 2 + (dz - oz) ** 2) / les.radius_mm
    inner = inside & (r_inner <= shape.inner_frac)
    hu = np.full(r.shape, 40.0, dtype=np.float32)
    suv = np.full(r.shape, les.suv_peak, dtype=np.float32)
    if les.histology == "A":  # ground-glass halo around a solid core
        hu[:] = shape.halo_hu
        hu[inner] = 30.0
        suv[:] = max(1.0, 0.3 * les.suv_peak)
        suv[inner] = les.suv_peak
    elif les.histology == "E":  # necrotic core, hot rim
        hu[inner] = 10.0
        suv[inner] = 1.0
    elif les.histology == "G":  # cavity filled with air
        hu[:] = 35.0
        hu[inner] = -980.0
        suv[inner] = 0.2
    return box, inside, hu, suv


def _ct_volume(
    rng: np.random.Generator, grid: _Grid, labels: np.ndarray, shapes: list[_Shape]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """HU volume (int16), union lesion mask and each lesion's own mask on the CT grid."""
    hu = _HU[labels]
    inner_body = (labels != _AIR) & (labels != _FAT) & (labels != _TABLE)
    masks = []
    for shape in shapes:
        full = np.zeros(labels.shape, dtype=bool)
        rendered = _render_lesion(shape, grid)
        if rendered is not None:
            box, inside, les_hu, _ = rendered
            inside = inside & inner_body[box]
            hu[box][inside] = les_hu[inside]
            full[box] = inside
        masks.append(full)
    lung = labels == _LUNG
    noise = rng.normal(0.0, _HU_NOISE_SD, size=labels.shape).astype(np.float32)
    noise[lung] *= 2.0  # parenchyma texture
    hu += noise
    hu = np.clip(np.rint(hu), CT_RESCALE_INTERCEPT, CT_HU_MAX).astype(np.int16)
    union = np.zeros(labels.shape, dtype=bool)
    for m in masks:
        union |= m
    return hu, union, masks


def _pet_volume(
    rng: np.random.Generator, grid: _Grid, labels: np.ndarray, shapes: list[_Shape]
) -> np.ndarray:
    """Planned SUVbw volume on the PET grid: tissue uptake, lesions, blur and noise."""
    suv = _SUV[labels]
    inner_body = (labels != _AIR) & (labels != _FAT) & (labels != _TABLE)
    for shape in shapes:
        rendered = _render_lesion(shape, grid)
        if rendered is not None:
            box, inside, _, les_suv = rendered
            inside = inside & inner_body[box]
            suv[box][inside] = les_suv[inside]
    suv = ndimage.gaussian_filter(suv, sigma=_PET_BLUR_VOXELS)
    suv *= 1.0 + _PET_NOISE_CV * rng.standard_normal(suv.shape).astype(np.float32)
    return np.clip(suv, 0.0, None).astype(np.float32)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


@dataclass(frozen=True)
class _Header:
    """Patient and study facts shared by every instance of a phantom study."""

    patient_id: str
    patient_sex: str
    birth_date: str
    age: str
    weight_kg: str
    study_uid: str
    frame_uid: str
    study_dt: datetime
    accession: str
    study_id: str


def _common(h: _Header, sop_class: str, sop_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = h.study_dt.strftime("%Y%m%d")
    ds.StudyTime = h.study_dt.strftime("%H%M%S")
    ds.AccessionNumber = h.accession
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "synthetic"
    ds.ReferringPhysicianName = "Phantom^Referrer"
    ds.StudyDescription = "Chest PET-CT phantom"
    ds.PatientName = h.patient_id
    ds.PatientID = h.patient_id
    ds.PatientBirthDate = h.birth_date
    ds.PatientSex = h.patient_sex
    ds.PatientAge = h.age
    ds.PatientWeight = h.weight_kg
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = h.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = h.study_id
    ds.FrameOfReferenceUID = h.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    return ds


def _encode(ds: Dataset, pixels: np.ndarray, transfer_syntax: str) -> None:
    """Attach `pixels` as PixelData in `transfer_syntax` (uncompressed or lossless)."""
    if transfer_syntax in _COMPRESSED:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.PixelData = pixels.tobytes()
        ds.compress(transfer_syntax, pixels, generate_instance_uid=False)
    else:
        ds.PixelData = pixels.tobytes()


def _ct_datasets(
    h: _Header, seed_key: tuple, grid: _Grid, hu: np.ndarray, thickness: float, ts: str
) -> list[Dataset]:
    series_uid = _uid(*seed_key, "ct-series")
    series_dt = h.study_dt + timedelta(minutes=2)
    out = []
    for k, z in enumerate(grid.z):
        sop_uid = _uid(*seed_key, "ct", k)
        ds = _common(h, pydicom.uid.CTImageStorage, sop_uid, series_uid)
        ds.file_meta = _file_meta(pydicom.uid.CTImageStorage, sop_uid, ts)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = "CT"
        ds.SeriesDescription = "CT chest phantom"
        ds.SeriesNumber = 2
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = series_dt.strftime("%Y%m%d")
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = series_dt.strftime("%H%M%S")
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.KVP = 120
        ds.ConvolutionKernel = "STANDARD"
        ds.SliceThickness = _ds_str(thickness)
        ds.SpacingBetweenSlices = _ds_str(thickness)
        ds.ImagePositionPatient = [_ds_str(grid.origin_xy), _ds_str(grid.origin_xy), _ds_str(z)]
        ds.SliceLocation = _ds_str(z)
        ds.PixelSpacing = [_ds_str(grid.spacing), _ds_str(grid.spacing)]
        ds.Rows = ds.Columns = grid.size
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = CT_RESCALE_INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.PatientPosition = "HFS"
        ds.WindowCenter = [-600, 40]
        ds.WindowWidth = [1500, 400]
        stored = (hu[k].astype(np.int32) - CT_RESCALE_INTERCEPT).astype(np.uint16)
        _encode(ds, stored, ts)
        out.append(ds)
    return out


def _pet_datasets(
    h: _Header,
    seed_key: tuple,
    rng: np.random.Generator,
    grid: _Grid,
    suv: np.ndarray,
    thickness: float,
    ts: str,
) -> list[Dataset]:
    series_uid = _uid(*seed_key, "pet-series")
    injection = h.study_dt - timedelta(minutes=int(rng.integers(55, 66)))
    series_dt = h.study_dt + timedelta(minutes=5)
    dose = 370e6
    dt_s = (series_dt - injection).total_seconds()
    weight_g = float(h.weight_kg) * 1000.0
    bq_per_suv = dose * 2.0 ** (-dt_s / F18_HALF_LIFE_S) / weight_g
    out = []
    for k, z in enumerate(grid.z):
        sop_uid = _uid(*seed_key, "pet", k)
        ds = _common(h, pydicom.uid.PositronEmissionTomographyImageStorage, sop_uid, series_uid)
        ds.file_meta = _file_meta(pydicom.uid.PositronEmissionTomographyImageStorage, sop_uid, ts)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.Modality = "PT"
        ds.SeriesDescription = "PET WB phantom"
        ds.SeriesNumber = 3
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = series_dt.strftime("%Y%m%d")
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = series_dt.strftime("%H%M%S")
        ds.InstanceNumber = k + 1
        ds.ImageIndex = k + 1
        ds.Units = "BQML"
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.NumberOfSlices = len(grid.z)
        ds.CorrectedImage = ["ATTN", "DECY", "SCAT", "DTIM", "RAN", "NORM"]
        ds.DecayCorrection = "START"
        ds.DecayFactor = "1"
        ds.RandomsCorrectionMethod = "DLYD"
        ds.AttenuationCorrectionMethod = "CT"
        ds.ReconstructionMethod = "OSEM"
        ds.CollimatorType = "NONE"
        ds.FrameReferenceTime = "0"
        ds.ActualFrameDuration = 180000
        ds.SliceThickness = _ds_str(thickness)
        ds.ImagePositionPatient = [_ds_str(grid.origin_xy), _ds_str(grid.origin_xy), _ds_str(z)]
        ds.SliceLocation = _ds_str(z)
        ds.PixelSpacing = [_ds_str(grid.spacing), _ds_str(grid.spacing)]
        ds.Rows = ds.Columns = grid.size
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        activity = suv[k].astype(np.float64) * bq_per_suv
        slope_text = _ds_str(max(float(activity.max()), 1.0) / 32000.0, 8)
        slope = float(slope_text)
        stored = np.clip(np.rint(activity / slope), 0, 32767).astype(np.int16)
        ds.RescaleIntercept = 0
        ds.RescaleSlope = slope_text
        drug = Dataset()
        drug.Radiopharmaceutical = "Fluorodeoxyglucose"
        drug.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S")
        drug.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S")
        drug.RadionuclideTotalDose = _ds_str(dose)
        drug.RadionuclideHalfLife = _ds_str(F18_HALF_LIFE_S)
        drug.RadionuclidePositronFraction = "0.97"
        drug.RadionuclideCodeSequence = Sequence([_code("77004003", "SCT", "^18^Fluorine")])
        drug.RadiopharmaceuticalCodeSequence = Sequence(
            [_code("35321007", "SCT", "Fluorodeoxyglucose F^18^")]
        )
        ds.RadiopharmaceuticalInformationSequence = Sequence([drug])
        orientation = _code("102538003", "SCT", "recumbent")
        orientation.PatientOrientationModifierCodeSequence = Sequence(
            [_code("40199007", "SCT", "supine")]
        )
        ds.PatientOrientationCodeSequence = Sequence([orientation])
        ds.PatientGantryRelationshipCodeSequence = Sequence(
            [_code("102540008", "SCT", "headfirst")]
        )
        _encode(ds, stored, ts)
        out.append(ds)
    return out


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
    if transfer_syntax not in _UNCOMPRESSED | _COMPRESSED:
        raise ValueError(
            f"transfer_syntax {transfer_syntax!r} is not supported: use one of "
            f"{sorted(_UNCOMPRESSED | _COMPRESSED)}"
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
    ct_grid = _Grid(ct_size, FIELD_OF_VIEW_MM / ct_size, z)
    z_mid, z_half = 0.0, max(float(z[-1]), 40.0)
    vessels = _plan_vessels(rng, z_mid, z_half)
    shapes: list[_Shape] = []
    labels = _anatomy(ct_grid, z_mid, z_half, vessels)
    for _ in range(n_lesions):
        for _attempt in range(50):
            shape = _plan_lesion(rng, histology, z, z_mid, z_half)
            c = shape.lesion.center_mm
            ci = int(np.argmin(np.abs(z - c[2])))
            ri = int(np.argmin(np.abs(ct_grid.xy - c[1])))
            cj = int(np.argmin(np.abs(ct_grid.xy - c[0])))
            apart = all(
                np.linalg.norm(np.subtract(c, s.lesion.center_mm))
                > shape.lesion.radius_mm + s.lesion.radius_mm + 5.0
                for s in shapes
            )
            if labels[ci, ri, cj] in (_LUNG, _VESSEL) and apart:
                shapes.append(shape)
                break
        else:
            raise RuntimeError(f"could not place lesion {len(shapes) + 1} for seed {seed}")
    hu, union, masks = _ct_volume(rng, ct_grid, labels, shapes)

    letter = histology
    patient_id = f"Lung_Dx-{letter}{patient_number:04d}"
    study_dt = datetime(2005, 1, 3, 8, 0, 0) + timedelta(
        days=int(rng.integers(0, 3650)), minutes=int(rng.integers(0, 9 * 60))
    )
    birth = datetime(1935, 1, 1) + timedelta(days=int(rng.integers(0, 40 * 365)))
    age = study_dt.year - birth.year - ((study_dt.month, study_dt.day) < (birth.month, birth.day))
    header = _Header(
        patient_id=patient_id,
        patient_sex="F" if rng.random() < 0.45 else "M",
        birth_date=birth.strftime("%Y%m%d"),
        age=f"{age:03d}Y",
        weight_kg=f"{rng.uniform(50.0, 100.0):.1f}",
        study_uid=_uid(*seed_key, "study"),
        frame_uid=_uid(*seed_key, "frame-of-reference"),
        study_dt=study_dt,
        accession=f"PH{int(rng.integers(0, 10**8)):08d}",
        study_id=str(int(rng.integers(1, 10**6))),
    )
    ct = _ct_datasets(header, seed_key, ct_grid, hu, slice_thickness_mm, transfer_syntax)

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
        pet_grid = _Grid(pet_size, pet_spacing, pet_z)
        pet_labels = _anatomy(pet_grid, z_mid, z_half, [])
        pet_suv = _pet_volume(rng, pet_grid, pet_labels, shapes)
        pet_ds = _pet_datasets(header, seed_key, rng, pet_grid, pet_suv, pet_thick, transfer_syntax)

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


def _nbia_name(text: str) -> str:
    """A description as NBIA writes it into folder names (drops ^, (), / and the like)."""
    return re.sub(r"[^A-Za-z0-9 ._-]", "", text).strip()


def _study_folder(ds: Dataset) -> str:
    date = datetime.strptime(ds.StudyDate, "%Y%m%d").strftime("%m-%d-%Y")
    return f"{date}-NA-{_nbia_name(ds.StudyDescription)}-{ds.StudyInstanceUID[-5:]}"


def _series_folder(ds: Dataset) -> str:
    name = _nbia_name(ds.SeriesDescription)
    return f"{int(ds.SeriesNumber)}.000000-{name}-{ds.SeriesInstanceUID[-5:]}"


def annotation_xml(box_list: list[AnnotationBox], rows: int, columns: int) -> str:
    """LabelImg PASCAL-VOC XML for the boxes of one slice, shaped like the TCIA annotation."""
    objects = "".join(
        f"""  <object>
    <name>{escape(b.label)}</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <Difficult>0</Difficult>
    <bndbox>
      <xmin>{b.xmin}</xmin>
      <ymin>{b.ymin}</ymin>
      <xmax>{b.xmax}</xmax>
      <ymax>{b.ymax}</ymax>
    </bndbox>
  </object>
"""
        for b in box_list
    )
    return f"""<annotation verified="no">
  <folder>Unknow</folder>
  <filename>Unknow</filename>
  <path>Unknow</path>
  <source>Unknow<database>Unknown</database>
  </source>
  <size>
    <width>{columns}</width>
    <height>{rows}</height>
    <depth>1</depth>
  </size>
  <segmented>0</segmented>
{objects}</annotation>
"""


def write_study(study: PhantomStudy, out: Path) -> list[Path]:
    """Write one patient as the TCIA download lays it out, plus its Annotation/<id>/ XML files.

    Returns the DICOM file paths written (CT first, then PET), in `study.ct`/`study.pet` order.
    """
    out = Path(out)
    patient_dir = out / COLLECTION / study.patient_id
    written = []
    for series in (study.ct, study.pet):
        if not series:
            continue
        series_dir = patient_dir / _study_folder(series[0]) / _series_folder(series[0])
        series_dir.mkdir(parents=True, exist_ok=True)
        width = max(2, len(str(len(series))))
        for k, ds in enumerate(series, start=1):
            path = series_dir / f"1-{k:0{width}d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    if study.boxes:
        ann_dir = out / "Annotation" / study.patient_id.removeprefix("Lung_Dx-")
        ann_dir.mkdir(parents=True, exist_ok=True)
        by_uid: dict[str, list[AnnotationBox]] = {}
        for box in study.boxes:
            by_uid.setdefault(box.sop_instance_uid, []).append(box)
        size = study.ct[0].Rows, study.ct[0].Columns
        for uid, box_list in by_uid.items():
            (ann_dir / f"{uid}.xml").write_text(annotation_xml(box_list, *size))
    return written


METADATA_COLUMNS = (
    "Series UID",
    "Collection",
    "3rd Party Analysis",
    "Data Description URI",
    "Subject ID",
    "Study UID",
    "Study Description",
    "Study Date",
    "Series Description",
    "Manufacturer",
    "Modality",
    "SOP Class Name",
    "SOP Class UID",
    "Number of Images",
    "File Size",
    "File Location",
    "Download Timestamp",
)


def _metadata_rows(study: PhantomStudy, out: Path, paths: list[Path]) -> list[dict[str, str]]:
    rows = []
    for series in (study.ct, study.pet):
        if not series:
            continue
        ds = series[0]
        folder = out / COLLECTION / study.patient_id / _study_folder(ds) / _series_folder(ds)
        size = sum(p.stat().st_size for p in paths if p.parent == folder)
        rel = folder.relative_to(out)
        rows.append(
            {
                "Series UID": ds.SeriesInstanceUID,
                "Collection": COLLECTION,
                "3rd Party Analysis": "NO",
                "Data Description URI": "",
                "Subject ID": study.patient_id,
                "Study UID": ds.StudyInstanceUID,
                "Study Description": ds.StudyDescription,
                "Study Date": datetime.strptime(ds.StudyDate, "%Y%m%d").strftime("%m-%d-%Y"),
                "Series Description": ds.SeriesDescription,
                "Manufacturer": ds.Manufacturer,
                "Modality": ds.Modality,
                "SOP Class Name": pydicom.uid.UID(ds.SOPClassUID).name,
                "SOP Class UID": ds.SOPClassUID,
                "Number of Images": str(len(series)),
                "File Size": f"{size / 1e6:.2f} MB",
                "File Location": ".\\" + "\\".join(rel.parts),
                "Download Timestamp": ds.StudyDate[:4] + "-12-22T12:00:00.000",
            }
        )
    return rows


def write_tcia_layout(
    out: Path,
    patients: int,
    seed: int,
    *,
    class_weights: dict[str, float] | None = None,
    **generate_kwargs: object,
) -> list[PhantomStudy]:
    """Write `patients` phantom patients as a TCIA Lung-PET-CT-Dx download with metadata.csv.

    Classes cycle A, B, E, G, or are drawn with `class_weights` (e.g. the real 251/38/5/61);
    patients are numbered per class (A0001, B0001, ...) as in the collection.
    """
    if patients < 1:
        raise ValueError(f"patients={patients!r}: expected at least 1")
    out = Path(out)
    rng = np.random.default_rng([seed, 7919])
    if class_weights is not None:
        unknown = set(class_weights) - set(HISTOLOGY_CLASSES)
        if unknown or sum(class_weights.values()) <= 0:
            raise ValueError(
                f"class_weights {class_weights!r}: expected positive weights keyed by "
                f"{HISTOLOGY_CLASSES}"
            )
        p = np.array([class_weights.get(c, 0.0) for c in HISTOLOGY_CLASSES], dtype=float)
        classes = list(rng.choice(HISTOLOGY_CLASSES, size=patients, p=p / p.sum()))
    else:
        classes = [HISTOLOGY_CLASSES[i % len(HISTOLOGY_CLASSES)] for i in range(patients)]
    counters = dict.fromkeys(HISTOLOGY_CLASSES, 0)
    studies, rows = [], []
    for i, histology in enumerate(classes):
        counters[histology] += 1
        child_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        study = generate_study(
            child_seed, str(histology), patient_number=counters[histology], **generate_kwargs
        )
        paths = write_study(study, out)
        rows.extend(_metadata_rows(study, out, paths))
        studies.append(study)
    with open(out / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return studies


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
