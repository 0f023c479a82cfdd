"""The phantom's body: a chest on an axial grid as a tissue-label map (body ellipse, two lungs
with vessels, mediastinum, heart, aorta, spine, a table), lesions planned per histology (site,
size, shape, uptake), and their CT (HU) and PET (SUV) renderings. No DICOM here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FIELD_OF_VIEW_MM = 350.0


CT_RESCALE_INTERCEPT = -1024


CT_HU_MAX = 4095 + CT_RESCALE_INTERCEPT  # 12 bits stored, unsigned


# Tissue labels of the anatomy map, shared by the CT (HU) and PET (SUV) renderings.
AIR, FAT, SOFT, LUNG, HEART, AORTA, BONE, MARROW, TABLE, VESSEL = range(10)


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
class Grid:
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
class LesionShape:
    """Internal shape parameters of one lesion, drawn from the generator."""

    lesion: PhantomLesion
    inner_frac: float  # A solid core, E necrotic core, G cavity; radius fraction
    inner_offset: tuple[float, float, float]
    halo_hu: float
    lobes: tuple[tuple[tuple[float, float, float], float, float], ...]  # direction, amp, phase
    spikes: tuple[tuple[tuple[float, float, float], float], ...]  # direction, length


def _lungs(z: np.ndarray, z_mid: float, z_half: float) -> dict:
    """Lung ellipses per side at each z: centre x, centre y, semi-axes (scaled to the dome)."""
    t = np.clip((z - z_mid) / (z_half * 1.35), -0.95, 0.95)
    scale = np.sqrt(1.0 - t**2)
    return {
        "right": (-78.0, 0.0, 58.0 * scale, 82.0 * scale),
        "left": (80.0, 2.0, 52.0 * scale, 80.0 * scale),
    }


def tissue_labels(grid: Grid, z_mid: float, z_half: float, vessels: list) -> np.ndarray:
    """Tissue label map [slice, row, col] of the chest on `grid`."""
    xs = grid.xy
    x = xs[None, :]
    y = xs[:, None]
    base = np.full((grid.size, grid.size), AIR, dtype=np.uint8)
    base[((x / 160.0) ** 2 + ((y - 5.0) / 115.0) ** 2) <= 1.0] = FAT
    base[((x / 150.0) ** 2 + ((y - 5.0) / 105.0) ** 2) <= 1.0] = SOFT
    base[(y >= 128.0) & (y <= 134.0) & (np.abs(x) <= 170.0)] = TABLE
    labels = np.repeat(base[None], len(grid.z), axis=0)
    lungs = _lungs(grid.z, z_mid, z_half)
    # Heart in the lower half of the chest, pushing into the left lung.
    heart_scale = np.sqrt(np.clip((z_mid + 0.2 * z_half - grid.z) / (0.8 * z_half), 0.0, 1.0))
    for k in range(len(grid.z)):
        lung = np.zeros(base.shape, dtype=bool)
        for cx, cy, ax, ay in lungs.values():
            lung |= ((x - cx) / ax[k]) ** 2 + ((y - cy) / ay[k]) ** 2 <= 1.0
        labels[k][lung] = LUNG
        if heart_scale[k] > 0:
            hs = heart_scale[k]
            labels[k][((x - 22.0) / (55.0 * hs)) ** 2 + ((y + 18.0) / (48.0 * hs)) ** 2 <= 1.0] = (
                HEART
            )
    # Aorta posterior-left, vertebral body with marrow, spinous process: the same on every slice.
    fixed = np.full(base.shape, 255, dtype=np.uint8)
    fixed[(x - 24.0) ** 2 + (y - 52.0) ** 2 <= 13.0**2] = AORTA
    spine_r2 = x**2 + (y - 80.0) ** 2
    fixed[spine_r2 <= 17.0**2] = BONE
    fixed[spine_r2 <= 13.0**2] = MARROW
    fixed[(np.abs(x) <= 4.0) & (y > 95.0) & (y < 112.0)] = BONE
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
        sub[(dist2 <= (r0 * (1.0 - 0.6 * t)) ** 2) & (sub == LUNG)] = VESSEL
    return labels


REGIONS: tuple[str, ...] = ("chest", "abdomen", "head")


def abdomen_labels(grid: Grid) -> np.ndarray:
    """Tissue label map of an upper abdomen: body, liver, spine, aorta, loops of bowel gas,
    and the lung bases in the first fifth of the slices (largest there: the scan starts at
    the diaphragm, below the lungs' widest level). Slices run cranial to caudal from the last."""
    xs = grid.xy
    x, y = xs[None, :], xs[:, None]
    base = np.full((grid.size, grid.size), AIR, dtype=np.uint8)
    base[((x / 160.0) ** 2 + ((y - 5.0) / 115.0) ** 2) <= 1.0] = FAT
    base[((x / 150.0) ** 2 + ((y - 5.0) / 105.0) ** 2) <= 1.0] = SOFT
    base[(y >= 128.0) & (y <= 134.0) & (np.abs(x) <= 170.0)] = TABLE
    base[((x + 60.0) / 80.0) ** 2 + ((y + 5.0) / 70.0) ** 2 <= 1.0] = HEART  # liver: soft tissue
    labels = np.repeat(base[None], len(grid.z), axis=0)
    n = len(grid.z)
    top = max(1, n // 5)  # the highest slices are the last (z increases cranially)
    for k in range(n - top, n):
        scale = 0.6 * (k - (n - top) + 1) / top
        for cx, cy, ax, ay in ((-78.0, 30.0, 58.0, 60.0), (80.0, 30.0, 52.0, 58.0)):
            lung = ((x - cx) / (ax * scale)) ** 2 + ((y - cy) / (ay * scale)) ** 2 <= 1.0
            labels[k][lung] = LUNG
    for j, (gx, gy, radius) in enumerate(
        ((40.0, -40.0, 14.0), (75.0, 10.0, 11.0), (10.0, -70.0, 12.0))
    ):
        z_lo, z_hi = j * n // 4, j * n // 4 + max(2, n // 3)
        gas = (x - gx) ** 2 + (y - gy) ** 2 <= radius**2
        for k in range(z_lo, min(z_hi, n - top)):
            labels[k][gas] = AIR
    fixed = np.full(base.shape, 255, dtype=np.uint8)
    fixed[(x - 24.0) ** 2 + (y - 52.0) ** 2 <= 11.0**2] = AORTA
    spine_r2 = x**2 + (y - 80.0) ** 2
    fixed[spine_r2 <= 19.0**2] = BONE
    fixed[spine_r2 <= 15.0**2] = MARROW
    return np.where(fixed[None] != 255, fixed[None], labels)


def head_labels(grid: Grid) -> np.ndarray:
    """Tissue label map of a head: scalp, skull, brain, on the table's head rest."""
    xs = grid.xy
    x, y = xs[None, :], xs[:, None]
    base = np.full((grid.size, grid.size), AIR, dtype=np.uint8)
    base[(x / 78.0) ** 2 + (y / 98.0) ** 2 <= 1.0] = SOFT
    base[(x / 74.0) ** 2 + (y / 94.0) ** 2 <= 1.0] = BONE
    base[(x / 68.0) ** 2 + (y / 88.0) ** 2 <= 1.0] = HEART  # brain: soft tissue, 40 HU
    base[(y >= 104.0) & (y <= 110.0) & (np.abs(x) <= 90.0)] = TABLE
    return np.repeat(base[None], len(grid.z), axis=0)


def plan_vessels(rng: np.random.Generator, z_mid: float, z_half: float) -> list:
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


def random_direction(rng: np.random.Generator) -> tuple[float, float, float]:
    v = rng.normal(size=3)
    v /= np.linalg.norm(v)
    return (float(v[0]), float(v[1]), float(v[2]))


def plan_lesion(
    rng: np.random.Generator, histology: str, ct_z: np.ndarray, z_mid: float, z_half: float
) -> LesionShape:
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
    cx, cy, ax, ay = _lungs(np.array([cz]), z_mid, z_half)[side]
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
            (random_direction(rng), rng.uniform(0.08, 0.16), rng.uniform(0, 2 * np.pi))
            for _ in range(4)
        )
        inner_frac, halo_hu = rng.uniform(0.45, 0.65), rng.uniform(-400.0, -200.0)
    elif histology == "B":
        lobes = ((random_direction(rng), 0.03, rng.uniform(0, 2 * np.pi)),)
    elif histology == "E":
        lobes = tuple((random_direction(rng), 0.05, rng.uniform(0, 2 * np.pi)) for _ in range(2))
        inner_frac = rng.uniform(0.45, 0.6)
    else:
        spikes = tuple(
            (random_direction(rng), rng.uniform(0.35, 0.7)) for _ in range(int(rng.integers(8, 14)))
        )
        inner_frac = rng.uniform(0.3, 0.5)
    off = np.array(random_direction(rng)) * rng.uniform(0.0, 0.15) * radius
    return LesionShape(
        lesion,
        float(inner_frac),
        (float(off[0]), float(off[1]), float(off[2])),
        float(halo_hu),
        lobes,
        spikes,
    )


def radial_modulation(
    ux: np.ndarray,
    uy: np.ndarray,
    uz: np.ndarray,
    lobes: tuple[tuple[tuple[float, float, float], float, float], ...],
    spikes: tuple[tuple[tuple[float, float, float], float], ...],
) -> np.ndarray:
    """Relative change of a lesion's radius along unit directions (ux, uy, uz): smooth lobes
    (direction, amplitude, phase) and narrow spikes (direction, length as a radius fraction).
    Shared with the stress test's tumours (classifier.datasets.insertion)."""
    modulation = np.zeros(np.broadcast(ux, uy, uz).shape)
    for (vx, vy, vz), amp, phase in lobes:
        modulation += amp * np.cos(3.0 * np.pi * (ux * vx + uy * vy + uz * vz) + phase)
    for (vx, vy, vz), length in spikes:
        cos_angle = ux * vx + uy * vy + uz * vz
        modulation += length * np.clip((cos_angle - 0.97) / 0.03, 0.0, 1.0) ** 2
    return modulation


def _render_lesion(
    shape: LesionShape, grid: Grid
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
    modulation = radial_modulation(dx / r, dy / r, dz / r, shape.lobes, shape.spikes)
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


def ct_volume(
    rng: np.random.Generator, grid: Grid, labels: np.ndarray, shapes: list[LesionShape]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """HU volume (int16), union lesion mask and each lesion's own mask on the CT grid."""
    hu = _HU[labels]
    inner_body = (labels != AIR) & (labels != FAT) & (labels != TABLE)
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
    lung = labels == LUNG
    noise = rng.normal(0.0, _HU_NOISE_SD, size=labels.shape).astype(np.float32)
    noise[lung] *= 2.0  # parenchyma texture
    hu += noise
    hu = np.clip(np.rint(hu), CT_RESCALE_INTERCEPT, CT_HU_MAX).astype(np.int16)
    union = np.zeros(labels.shape, dtype=bool)
    for m in masks:
        union |= m
    return hu, union, masks


def pet_volume(
    rng: np.random.Generator, grid: Grid, labels: np.ndarray, shapes: list[LesionShape]
) -> np.ndarray:
    """Planned SUVbw volume on the PET grid: tissue uptake, lesions, blur and noise."""
    suv = _SUV[labels]
    inner_body = (labels != AIR) & (labels != FAT) & (labels != TABLE)
    for shape in shapes:
        rendered = _render_lesion(shape, grid)
        if rendered is not None:
            box, inside, _, les_suv = rendered
            inside = inside & inner_body[box]
            suv[box][inside] = les_suv[inside]
    suv = ndimage.gaussian_filter(suv, sigma=_PET_BLUR_VOXELS)
    suv *= 1.0 + _PET_NOISE_CV * rng.standard_normal(suv.shape).astype(np.float32)
    return np.clip(suv, 0.0, None).astype(np.float32)
