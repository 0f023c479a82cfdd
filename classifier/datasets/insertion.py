"""Synthetic tumours inserted into real CT against its walls: the stress test's instrument.

A tumour is 15-90 mm across: lobulated (4-7 bulges), spiculated (12-23 thin tapering spiculae,
8-30 mm long) or with a necrotic centre (a lower-HU core), every one with a fine surface ripple
(the phantom generator's lobes, `radial_modulation`); optionally with a wedge of collapsed lung
(atelectasis, 20-45 HU) beside it: a cone of 12-20 degrees reaching 20-40 mm beyond the tumour,
towards the periphery from a hilar or mediastinal tumour, along the wall from one against a
wall. Its HU are soft tissue with a low-frequency texture and the study's own noise level; its
edge has partial volume (the shape is sampled at three depths across each slice's thickness and
softened over one pixel in plane).

Where it goes comes from the study's anatomy (the project's lung mask): against the posterior
chest wall beside the spine, the lateral chest wall, the mediastinum (the medial lung border
above the hilum), the hilum (the medial border at mid depth and mid height), the apex (the top
lung slices) or the diaphragm (the lung base's dome, lateral half). The tumour's centre lies
inside the lung, 0.75 of its radius from the wall point, so its edge reaches the wall; it
replaces only lung: the lung of its side filled per slice, grown WALL_RIM_MM into the pleural
rim, and below MAX_REPLACED_HU (never bone, never outside the body), so it is cut flat where it
meets the wall. A tumour's centre keeps 1.15 x its radius plus KEEP_OUT_MARGIN_MM from the
study's own tumour: its annotated boxes, where there are any, and its `dense_masses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from classifier.datasets.phantom.anatomy import radial_modulation, random_direction
from classifier.datasets.wall_positions import POSITIONS
from classifier.imaging.lesions import Candidate, _measure
from classifier.imaging.lung_mask import (
    LEFT,
    RIGHT,
    LungMask,
    fill_in_plane,
    lung_mask,
    subsample,
    upsample,
)
from classifier.imaging.volume import Volume
from classifier.settings import MtvThreshold

SHAPES = ("lobulated", "spiculated", "necrotic")
SIDES = {"right": RIGHT, "left": LEFT}
MIN_DIAMETER_MM, MAX_DIAMETER_MM = 15.0, 90.0
WALL_RIM_MM = 3.0
MAX_REPLACED_HU = 100.0
KEEP_OUT_MARGIN_MM = 10.0
# A study's own mass when no box says where it is: non-aerated soft tissue of the lung region
# and chest cavity, >= 10 mm thick, of at least this volume. On the five real studies this is
# the primary tumour (82-146 ml) and leaves out the hilar vessels (18-34 ml pieces).
DENSE_MASS_MIN_ML = 40.0
CENTRE_DEPTH = 0.75  # of the radius: the centre's distance from the wall point
MIN_LUNG_AREA_MM2 = 200.0
# Slice ranges (0 = lung base, 1 = apex) where a position's wall point is looked for.
LEVELS = {
    "posterior": (0.3, 0.8),
    "lateral": (0.3, 0.75),
    "mediastinum": (0.55, 0.85),
    "hilum": (0.4, 0.65),
}
# Depth bands (0 = the lung's anterior edge on the slice, 1 = its posterior edge) of the
# medial positions: the mediastinum above the hilum (great vessels), the hilum in the middle.
DEPTHS = {"mediastinum": (0.2, 0.7), "hilum": (0.35, 0.7)}
_SUBSAMPLES = 3  # depths across a slice's thickness (partial volume)
_TRIES = 40


@dataclass(frozen=True)
class TumourSpec:
    """What to insert: where (position class, lung side), how big and what it looks like."""

    position: str
    side: str
    diameter_mm: float
    shape: str
    collapse: bool

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"position {self.position!r} is not one of {POSITIONS}")
        if self.side not in SIDES:
            raise ValueError(f"side {self.side!r} is not 'right' or 'left'")
        if not MIN_DIAMETER_MM <= self.diameter_mm <= MAX_DIAMETER_MM:
            raise ValueError(
                f"diameter_mm {self.diameter_mm} is outside {MIN_DIAMETER_MM:g}-"
                f"{MAX_DIAMETER_MM:g} mm: choose a diameter in that range"
            )
        if self.shape not in SHAPES:
            raise ValueError(f"shape {self.shape!r} is not one of {SHAPES}")


@dataclass(frozen=True)
class StudyAnatomy:
    """What placement needs of one CT, computed once: lungs per side (filled per slice, full
    grid), the study's noise level, and the distance in mm from the keep-out mask."""

    lungs: LungMask
    filled: np.ndarray  # uint8 on the full grid: 0 none, RIGHT, LEFT
    keep_out: np.ndarray  # bool on the working grid
    keep_out_distance_mm: np.ndarray  # float32 on the working grid
    noise_sd_hu: float
    slice_z_mm: np.ndarray  # patient z of each slice


@dataclass(frozen=True)
class Placement:
    """Where a tumour goes: centre and the wall point it reaches (patient mm), the unit
    normal from the lung into the wall (patient), and the slice range searched."""

    spec: TumourSpec
    centre_mm: tuple[float, float, float]
    wall_mm: tuple[float, float, float]
    normal: tuple[float, float, float]


@dataclass(frozen=True)
class InsertedTumour:
    """An inserted tumour: its mask (cropped at `origin`, occupancy >= 0.5, spiculae
    included), the collapse wedge's mask beside it (empty without), and its true size: its
    body (without spiculae, as RECIST measures) measured as the detector measures a finding
    (`lesions._measure`: long axis on the slice of largest area)."""

    placement: Placement
    origin: tuple[int, int, int]
    mask: np.ndarray
    collapse: np.ndarray
    measured: Candidate
    mean_hu: float

    @property
    def long_axis_mm(self) -> float:
        return self.measured.long_axis_mm

    @property
    def key_slice_index(self) -> int:
        return self.measured.key_slice_index

    def window(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + n) for o, n in zip(self.origin, self.mask.shape, strict=True))  # type: ignore[return-value]


def noise_sd(ct: Volume) -> float:
    """The CT's noise (HU sd) in soft tissue: robust spread of each pixel against the mean of
    its in-plane neighbours, on the middle slices."""
    mid = ct.shape[0] // 2
    block = np.asarray(ct.array[max(0, mid - 2) : mid + 3], dtype=np.float32)
    local = ndimage.uniform_filter(block, size=(1, 3, 3))
    spread = ndimage.uniform_filter((block - local) ** 2, size=(1, 7, 7))
    soft = (local > -100) & (local < 150)
    diff = (block - local)[soft & (spread < np.percentile(spread[soft], 30))]
    if diff.size < 100:
        return 20.0
    mad = float(np.median(np.abs(diff - np.median(diff))))
    return 1.4826 * mad * float(np.sqrt(9.0 / 8.0))


def dense_masses(ct: Volume, lungs: LungMask, min_ml: float = DENSE_MASS_MIN_ML) -> np.ndarray:
    """Thick soft tissue (> -100 HU) of the lungs' region and chest cavity where no lung is
    aerated, in pieces of at least `min_ml` (working grid): a study's own tumour or collapse,
    kept away from (with the annotated boxes, where there are any)."""
    small = subsample(ct.array, lungs.factor)
    aerated = fill_in_plane(lungs.labels > 0)
    room = lungs.region | (lungs.cavity if lungs.cavity is not None else False)
    mass = room & ~aerated & (small > -100)
    radius = 5.0 / min(lungs.spacing[1:])
    r = int(np.ceil(radius))
    yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
    disk = ((yy * yy + xx * xx) <= radius * radius)[np.newaxis]
    mass = ndimage.binary_opening(mass, structure=disk)
    labels, count = ndimage.label(mass)
    if not count:
        return mass
    voxel_ml = float(np.prod(lungs.spacing)) / 1000.0
    sizes = np.bincount(labels.ravel())[1:] * voxel_ml
    return np.isin(labels, np.flatnonzero(sizes >= min_ml) + 1)


def box_mask(
    ct: Volume, lungs: LungMask, boxes_mm: Sequence[tuple[Sequence[float], ...]]
) -> np.ndarray:
    """The working-grid voxels inside 3-D boxes (lo, hi) given in patient mm."""
    out = np.zeros(lungs.labels.shape, dtype=bool)
    f = lungs.factor
    for lo, hi in boxes_mm:
        corners = np.array(
            [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        )
        idx = ct.patient_to_index(corners)
        a, b = np.floor(idx.min(axis=0)).astype(int), np.ceil(idx.max(axis=0)).astype(int)
        a[1:], b[1:] = a[1:] // f, b[1:] // f
        a = np.maximum(a, 0)
        b = np.minimum(b + 1, np.array(out.shape))
        if (b > a).all():
            out[a[0] : b[0], a[1] : b[1], a[2] : b[2]] = True
    return out


def study_anatomy(
    ct: Volume, boxes_mm: Sequence[tuple[Sequence[float], Sequence[float]]] = ()
) -> StudyAnatomy:
    """The anatomy placement needs (see `StudyAnatomy`); the keep-out mask is the study's
    annotated tumour boxes (lo, hi in patient mm) and its `dense_masses`."""
    lungs = lung_mask(ct)
    filled_small = np.zeros(lungs.labels.shape, dtype=np.uint8)
    for label in (RIGHT, LEFT):
        filled_small[fill_in_plane(lungs.labels == label)] = label
    filled = upsample(filled_small, lungs.factor, ct.shape)
    keep = box_mask(ct, lungs, boxes_mm) | dense_masses(ct, lungs)
    if keep.any():
        distance = ndimage.distance_transform_edt(~keep, sampling=lungs.spacing)
    else:
        distance = np.full(keep.shape, np.inf)
    z = ct.index_to_patient(
        np.stack([np.arange(ct.shape[0]), np.zeros(ct.shape[0]), np.zeros(ct.shape[0])], -1)
    )[:, 2]
    return StudyAnatomy(
        lungs, filled, keep, distance.astype(np.float32), noise_sd(ct), np.asarray(z)
    )


def _levels(anatomy: StudyAnatomy, label: int) -> tuple[np.ndarray, np.ndarray]:
    """The slices holding this lung and their level (0 = lowest lung slice, 1 = top)."""
    area_mm2 = (anatomy.lungs.labels == label).sum(axis=(1, 2)) * float(
        np.prod(anatomy.lungs.spacing[1:])
    )
    slices = np.flatnonzero(area_mm2 >= MIN_LUNG_AREA_MM2)
    if slices.size < 2:
        return slices, np.zeros(slices.size)
    z = anatomy.slice_z_mm[slices]
    return slices, (z - z.min()) / max(float(z.max() - z.min()), 1e-6)


def _pixels_mm(ct: Volume, anatomy: StudyAnatomy, s: int, plane: np.ndarray) -> np.ndarray:
    """Patient mm of a working-grid slice's true pixels (their block centres)."""
    f = anatomy.lungs.factor
    rows, cols = np.nonzero(plane)
    idx = np.stack([np.full(rows.size, s), rows * f + f // 2, cols * f + f // 2], -1)
    return ct.index_to_patient(idx)


def _midline_x(ct: Volume, anatomy: StudyAnatomy) -> float:
    """Patient x midway between the two lungs' centroids (0 when one lung is missing)."""
    xs = []
    for label in (RIGHT, LEFT):
        idx = np.argwhere(anatomy.lungs.labels == label)
        if idx.size:
            f = anatomy.lungs.factor
            centre = idx.mean(axis=0) * np.array([1, f, f])
            xs.append(float(ct.index_to_patient(centre)[0]))
    return float(np.mean(xs)) if len(xs) == 2 else 0.0


def _unit(v: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def _in_plane_wall(
    ct: Volume, anatomy: StudyAnatomy, spec: TumourSpec, s: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """A wall point and normal on lung slice `s` for the in-plane position classes."""
    label = SIDES[spec.side]
    points = _pixels_mm(ct, anatomy, s, anatomy.lungs.labels[s] == label)
    x, y = points[:, 0], points[:, 1]
    mid = _midline_x(ct, anatomy)
    medial = np.sign(mid - x.mean()) or 1.0  # +1: the mediastinum lies at larger x
    to_mid = np.abs(x - mid)
    depth = (y - y.min()) / max(float(np.ptp(y)), 1e-6)  # 0 anterior, 1 posterior
    if spec.position == "posterior":
        band = to_mid <= to_mid.min() + 0.35 * np.ptp(x)
        score, normal = y, (0.3 * medial, 1.0, 0.0)
    elif spec.position == "lateral":
        band = (depth >= 0.2) & (depth <= 0.8)
        score, normal = to_mid, (-medial, 0.0, 0.0)
    else:  # mediastinum, hilum
        low, high = DEPTHS[spec.position]
        band = (depth >= low) & (depth <= high)
        score, normal = -to_mid, (medial, 0.0, 0.0)
    if not band.any():
        return None
    best = float(score[band].max())
    near = np.flatnonzero(band & (score >= best - 3.0))
    wall = points[int(rng.choice(near))]
    return wall, _unit(normal)


def _vertical_wall(
    ct: Volume, anatomy: StudyAnatomy, spec: TumourSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """A wall point and normal at the apex (top lung slices) or on the diaphragm (the lung
    base's dome: the in-plane points where the lung reaches lowest, highest first)."""
    label = SIDES[spec.side]
    slices, _ = _levels(anatomy, label)
    if slices.size < 2:
        return None
    z = anatomy.slice_z_mm
    radius = spec.diameter_mm / 2.0
    lung = anatomy.lungs.labels == label
    if spec.position == "apex":
        top = slices[int(np.argmax(z[slices]))]
        if top in (0, ct.shape[0] - 1):
            return None  # the lung reaches the edge of the scan: its apex is not in it
        target = z[top] - CENTRE_DEPTH * radius
        s = slices[int(np.argmin(np.abs(z[slices] - target)))]
        points = _pixels_mm(ct, anatomy, s, lung[s])
        centre = points.mean(axis=0) + np.r_[rng.normal(0.0, 3.0, 2), 0.0]
        wall = np.array([centre[0], centre[1], z[top]])
        return wall, np.array([0.0, 0.0, 1.0])
    # diaphragm: per in-plane point the lowest lung slice (patient z)
    present = lung[slices]
    order = np.argsort(z[slices])
    lowest = np.full(lung.shape[1:], np.nan)
    for k in order[::-1]:  # from the top down, so the lowest slice is written last
        lowest[present[k]] = z[slices[k]]
    base = slices[order[0]]
    if base in (0, ct.shape[0] - 1):
        return None  # the lung reaches the edge of the scan: its base is not in it
    footprint = ~np.isnan(lowest)
    inner = ndimage.binary_erosion(
        footprint, iterations=max(1, int(0.3 * radius / anatomy.lungs.spacing[1]))
    )
    if not inner.any():
        return None
    # The dome under the lung, not the lung's edge over the heart: the lower 60 % of the base
    # heights, on the lateral half of the footprint.
    rows, cols = np.nonzero(inner)
    f = anatomy.lungs.factor
    x = ct.index_to_patient(np.stack([np.zeros(rows.size), rows * f, cols * f], -1))[:, 0]
    lateral = np.abs(x - _midline_x(ct, anatomy))
    heights = lowest[rows, cols]
    keep = (heights <= np.quantile(heights, 0.6)) & (lateral >= np.median(lateral))
    dome = np.zeros_like(inner)
    dome[rows[keep], cols[keep]] = True
    rows, cols = np.nonzero(dome)
    k = int(rng.integers(rows.size))
    s_idx = int(np.argmin(np.abs(z - lowest[rows[k], cols[k]])))
    wall = ct.index_to_patient(np.array([s_idx, rows[k] * f + f // 2, cols[k] * f + f // 2]))
    wall[2] = lowest[rows[k], cols[k]] - ct.spacing[0] / 2.0
    return wall, np.array([0.0, 0.0, -1.0])


def place(
    ct: Volume, anatomy: StudyAnatomy, spec: TumourSpec, rng: np.random.Generator
) -> Placement | None:
    """Where `spec` goes in this study (see the module docstring); None when its lung has no
    such place clear of the keep-out mask (tried _TRIES times)."""
    radius = spec.diameter_mm / 2.0
    label = SIDES[spec.side]
    f = anatomy.lungs.factor
    vertical = spec.position in ("apex", "diaphragm")
    if vertical:
        tries: list[int] = [-1] * _TRIES
    else:  # every slice at the position's level, in random order, twice
        slices, level = _levels(anatomy, label)
        low, high = LEVELS[spec.position]
        chosen = slices[(level >= low) & (level <= high)]
        tries = [int(s) for s in rng.permutation(np.r_[chosen, chosen])]
    for s in tries:
        found = (
            _vertical_wall(ct, anatomy, spec, rng)
            if vertical
            else _in_plane_wall(ct, anatomy, spec, s, rng)
        )
        if found is None:
            if vertical:
                return None
            continue
        wall, normal = found
        centre = wall - normal * CENTRE_DEPTH * radius
        idx = np.rint(ct.patient_to_index(centre)).astype(int)
        if not ((idx >= 0) & (idx < np.array(ct.shape))).all():
            continue
        if anatomy.filled[tuple(idx)] != label:
            continue  # the lung is thinner than the tumour here: its centre is not in it
        small = (
            idx[0],
            min(idx[1] // f, anatomy.keep_out.shape[1] - 1),
            min(idx[2] // f, anatomy.keep_out.shape[2] - 1),
        )
        if anatomy.keep_out_distance_mm[small] < 1.15 * radius + KEEP_OUT_MARGIN_MM:
            continue
        return Placement(
            spec,
            tuple(float(v) for v in centre),  # type: ignore[arg-type]
            tuple(float(v) for v in wall),  # type: ignore[arg-type]
            tuple(float(v) for v in normal),  # type: ignore[arg-type]
        )
    return None


@dataclass(frozen=True)
class _Look:
    """The drawn appearance of one tumour (shape parameters and HU)."""

    lobes: tuple[tuple[tuple[float, float, float], float, float], ...]  # surface ripple
    bumps: np.ndarray  # (k, 3) directions of the lobulation's bulges
    bump_amp: np.ndarray  # (k,) their height, a fraction of the radius
    bump_width: np.ndarray  # (k,) their width (1 - cos of the angle)
    spicules: np.ndarray  # (k, 3) directions
    spicule_mm: np.ndarray  # (k,) lengths
    core_frac: float
    core_offset: np.ndarray
    hu: float
    core_hu: float
    wedge_axis: np.ndarray | None
    wedge_length_mm: float
    wedge_half_angle: float
    wedge_hu: float


def _look(spec: TumourSpec, placement: Placement, rng: np.random.Generator) -> _Look:
    radius = spec.diameter_mm / 2.0
    # A fine ripple of the surface (the phantom's lobes, low): every shape.
    lobes = tuple(
        (random_direction(rng), rng.uniform(0.01, 0.035), rng.uniform(0, 2 * np.pi))
        for _ in range(3)
    )
    n_bumps = int(rng.integers(4, 8)) if spec.shape == "lobulated" else int(rng.integers(2, 4))
    amp = (0.2, 0.4) if spec.shape == "lobulated" else (0.04, 0.12)
    width = (0.08, 0.25) if spec.shape == "lobulated" else (0.15, 0.4)
    n_spicules = int(rng.integers(12, 24)) if spec.shape == "spiculated" else 0
    normal = np.array(placement.normal)
    axis = None
    if spec.collapse:
        if spec.position in ("hilum", "mediastinum"):
            axis = -normal  # obstructive collapse: from the central tumour to the periphery
        else:  # a pleural-based wedge of atelectasis along the wall
            tangent = np.cross(normal, [0.0, 0.0, 1.0] if abs(normal[2]) < 0.9 else [1.0, 0, 0])
            axis = _unit(tangent * (1 if rng.random() < 0.5 else -1) - 0.3 * normal)
    return _Look(
        lobes=lobes,
        bumps=np.array([random_direction(rng) for _ in range(n_bumps)]),
        bump_amp=rng.uniform(*amp, n_bumps),
        bump_width=rng.uniform(*width, n_bumps),
        # spiculae nearer the axial plane than at random (strands a slice shows), 8-30 mm long
        spicules=np.array(
            [_unit(np.array(random_direction(rng)) * [1.0, 1.0, 0.25]) for _ in range(n_spicules)]
        ).reshape(-1, 3),
        spicule_mm=np.clip(rng.uniform(0.4, 1.0, n_spicules) * radius, 8.0, 30.0),
        core_frac=float(rng.uniform(0.4, 0.6)) if spec.shape == "necrotic" else 0.0,
        core_offset=np.array(random_direction(rng)) * rng.uniform(0.0, 0.15) * radius,
        hu=float(rng.uniform(30.0, 55.0)),
        core_hu=float(rng.uniform(0.0, 20.0)),
        wedge_axis=axis,
        wedge_length_mm=float(rng.uniform(20.0, 40.0)),
        wedge_half_angle=float(np.deg2rad(rng.uniform(12.0, 20.0))),
        wedge_hu=float(rng.uniform(20.0, 45.0)),
    )


def _tumour_occupancy(
    look: _Look, radius: float, d: np.ndarray, pixel: float
) -> tuple[np.ndarray, np.ndarray]:
    """Occupancy (0-1, one-pixel soft edge) of the tumour's body (a sphere with bulges and a
    surface ripple) and of the body with its thin spiculae (tapering, 4 mm wide at the root),
    at offsets d (..., 3) mm from its centre."""
    r = np.linalg.norm(d, axis=-1) + 1e-6
    u = d / r[..., None]
    modulation = radial_modulation(u[..., 0], u[..., 1], u[..., 2], look.lobes, ())
    if len(look.bumps):
        cos = u @ look.bumps.T
        modulation = modulation + (look.bump_amp * np.exp(-(1.0 - cos) / look.bump_width)).sum(
            axis=-1
        )
    body = np.clip((radius * (1.0 + modulation) - r) / pixel + 0.5, 0.0, 1.0)
    occ = body
    if len(look.spicules):
        cos = u @ look.spicules.T
        k = np.argmax(cos, axis=-1)
        c = np.take_along_axis(cos, k[..., None], -1)[..., 0]
        along = r * c
        across = r * np.sqrt(np.clip(1.0 - c * c, 0.0, 1.0))
        t = np.clip((along - 0.9 * radius) / (0.1 * radius + look.spicule_mm[k]), 0.0, 1.0)
        width = 2.0 * (1.0 - 0.7 * t) * (along >= 0.9 * radius) * (c > 0)
        spicule = np.clip((width - across) / pixel + 0.5, 0.0, 1.0)
        spicule *= np.clip((radius + look.spicule_mm[k] - along) / pixel + 0.5, 0.0, 1.0)
        occ = np.maximum(body, spicule)
    return body, occ


def insert(
    ct: Volume, anatomy: StudyAnatomy, placement: Placement, rng: np.random.Generator
) -> InsertedTumour:
    """Blend the tumour of `placement` into `ct.array` in place (HU, partial volume, noise);
    the caller restores `ct.array[inserted.window()]` from a copy to undo it."""
    spec = placement.spec
    look = _look(spec, placement, rng)
    # The sphere's radius such that its largest bulge and ripple keep the long axis at about
    # the diameter asked for (a bulge on one side, none opposite).
    bulge = float(look.bump_amp.max(initial=0.0)) + sum(a for _, a, _ in look.lobes)
    radius = spec.diameter_mm / (2.0 + bulge)
    centre = np.array(placement.centre_mm)
    reach = radius * (1.35 + float(look.bump_amp.sum())) + float(look.spicule_mm.max(initial=0.0))
    if look.wedge_axis is not None:
        reach = max(reach, radius + look.wedge_length_mm + 2.0)
    c_idx = ct.patient_to_index(centre)
    half = np.ceil(reach / np.array(ct.spacing)).astype(int) + 1
    lo = np.maximum(np.floor(c_idx).astype(int) - half, 0)
    hi = np.minimum(np.ceil(c_idx).astype(int) + half + 1, np.array(ct.shape))
    window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    before = np.asarray(ct.array[window], dtype=np.float32)
    allowed_lung = anatomy.filled[window] == SIDES[spec.side]
    rim = int(np.ceil(WALL_RIM_MM / ct.spacing[1]))
    allowed = ndimage.binary_dilation(
        allowed_lung, structure=np.ones((1, 3, 3)), iterations=rim
    ) & (before < MAX_REPLACED_HU)
    pixel = float(min(ct.spacing[1], ct.spacing[2]))
    rows, cols = np.meshgrid(np.arange(lo[1], hi[1]), np.arange(lo[2], hi[2]), indexing="ij")
    tumour_occ = np.zeros(shape, dtype=np.float32)
    body_occ = np.zeros(shape, dtype=np.float32)
    core_occ = np.zeros(shape, dtype=np.float32)
    wedge_occ = np.zeros(shape, dtype=np.float32)
    offsets = (np.arange(_SUBSAMPLES) + 0.5) / _SUBSAMPLES - 0.5
    # Only the points that can be inside are evaluated (the wedge widens the window a lot).
    tumour_reach = (
        radius * (1.0 + float(look.bump_amp.sum()) + sum(a for _, a, _ in look.lobes))
        + float(look.spicule_mm.max(initial=0.0))
        + pixel
    )
    for k, s in enumerate(range(lo[0], hi[0])):
        for dz in offsets:
            idx = np.stack([np.full(rows.shape, s + dz), rows, cols], -1)
            d = ct.index_to_patient(idx) - centre
            near = np.linalg.norm(d, axis=-1) <= tumour_reach
            body, occ = _tumour_occupancy(look, radius, d[near], pixel)
            body_occ[k][near] += body.astype(np.float32) / _SUBSAMPLES
            tumour_occ[k][near] += occ.astype(np.float32) / _SUBSAMPLES
            if look.core_frac:
                rc = np.linalg.norm(d[near] - look.core_offset, axis=-1)
                core = np.clip((look.core_frac * radius - rc) / pixel + 0.5, 0.0, 1.0)
                core_occ[k][near] += core.astype(np.float32) / _SUBSAMPLES
            if look.wedge_axis is not None:
                along = d @ look.wedge_axis
                ahead = (along > 0.3 * radius) & (along < radius + look.wedge_length_mm + pixel)
                a = along[ahead]
                across = np.linalg.norm(d[ahead] - a[:, None] * look.wedge_axis, axis=-1)
                inside = np.clip(
                    (a * np.tan(look.wedge_half_angle) - across) / pixel + 0.5, 0.0, 1.0
                ) * np.clip((radius + look.wedge_length_mm - a) / pixel + 0.5, 0.0, 1.0)
                wedge_occ[k][ahead] += inside.astype(np.float32) / _SUBSAMPLES
    tumour_occ *= allowed
    wedge_occ = np.minimum(wedge_occ * allowed, 1.0 - tumour_occ)
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape).astype(np.float32), 2.0)
    texture *= 8.0 / max(float(texture.std()), 1e-6)
    noise = rng.normal(0.0, anatomy.noise_sd_hu, shape).astype(np.float32)
    tumour_hu = look.hu + texture - core_occ * (look.hu - look.core_hu)
    value = (
        tumour_occ * (tumour_hu + noise)
        + wedge_occ * (look.wedge_hu + texture + noise)
        + (1.0 - tumour_occ - wedge_occ) * before
    )
    if np.issubdtype(ct.array.dtype, np.integer):
        info = np.iinfo(ct.array.dtype)
        value = np.clip(np.rint(value), info.min, info.max)
    ct.array[window] = value.astype(ct.array.dtype)
    mask = tumour_occ >= 0.5
    collapse = (wedge_occ >= 0.5) & ~mask
    origin = (int(lo[0]), int(lo[1]), int(lo[2]))
    # Measured on the body, as a reader measures a spiculated tumour (RECIST: not the spiculae)
    body = (body_occ * allowed >= 0.5) & mask
    measured = _measure(ct, None, body, origin, spec.side, "inserted", MtvThreshold())
    core = tumour_occ >= 0.95
    mean_hu = float(
        np.asarray(ct.array[window], dtype=np.float32)[core if core.any() else mask].mean()
    )
    return InsertedTumour(placement, origin, mask, collapse, measured, mean_hu)
