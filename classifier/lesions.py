"""Lesion candidates from CT (soft tissue in the lung region) and PET (SUV hot spots), merged,
and measured: key slice, box, centroid, side, RECIST long/short axis, volume, SUV, MTV, TLG.

Detection runs on the lung mask's working grid (about 2 mm pixels); each candidate's mask is
then refined on the full CT grid inside its bounding box. Vessels are removed by an in-plane
opening and a minimum thickness. The search region is the lungs closed per slice (deeper on the
medial side), not the chest; a candidate at the lung's medial edge may continue at most
MEDIASTINAL_GROWTH_MM into adjacent non-fat mediastinal soft tissue, so a hilar or paratracheal
mass is covered beyond its rim while the heart and great vessels are not searched as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from classifier.lung_mask import IN_PLANE, LEFT, RIGHT, LungMask, lung_mask, subsample, upsample
from classifier.volume import Volume
from scp_node.config import MtvThreshold

SOFT_TISSUE_HU = -300.0
MIN_DIAMETER_MM = 6.0
MIN_VOLUME_ML = 0.1
MAX_CANDIDATES = 30
PET_MIN_SUV = 2.5
MEDIASTINAL_BAND_MM = 20.0
MEDIASTINAL_GROWTH_MM = 15.0
MIN_SEED_FRACTION = 0.3  # of a grown candidate, what must lie in the lung region
MEDIASTINAL_SOFT_HU = (-50.0, 150.0)  # not fat, not bone or calcium
_OPEN_MM = 2.5
_MTV_MARGIN_MM = 5.0


@dataclass(frozen=True)
class Candidate:
    """A measured lesion candidate in CT index space (before the CNN).

    `mask` is cropped at `mask_origin` (slice, row, column); `box_rc` is (row_min, col_min,
    row_max, col_max) on the key slice, inclusive.
    """

    mask: np.ndarray = field(repr=False, compare=False)
    mask_origin: tuple[int, int, int]
    key_slice_index: int
    box_rc: tuple[int, int, int, int]
    slice_range: tuple[int, int]
    centroid_mm: tuple[float, float, float]
    side: str
    long_axis_mm: float
    short_axis_mm: float
    volume_ml: float
    detected_by: str = "CT"
    suv_max: float | None = None
    suv_mean: float | None = None
    mtv_ml: float | None = None
    tlg: float | None = None

    @property
    def center_index(self) -> tuple[int, int, int]:
        """(key slice, box centre row, box centre column): where the CNN patch is taken."""
        r0, c0, r1, c1 = self.box_rc
        return (self.key_slice_index, (r0 + r1) // 2, (c0 + c1) // 2)


def feret_axes(mask2d: np.ndarray, spacing_rc: tuple[float, float]) -> tuple[float, float]:
    """(long, short) axis in mm of a 2-D mask: the maximum Feret diameter, and the longest
    extent perpendicular to it (RECIST). Pixel corners are used, so one pixel measures its size.
    """
    rows, cols = np.nonzero(mask2d)
    if rows.size == 0:
        return 0.0, 0.0
    dr, dc = spacing_rc
    corners = np.concatenate(
        [
            np.stack([(rows + a) * dr, (cols + b) * dc], axis=1)
            for a in (-0.5, 0.5)
            for b in (-0.5, 0.5)
        ]
    )
    try:
        hull = corners[ConvexHull(corners).vertices]
    except (QhullError, ValueError):
        hull = corners
    d = hull[:, None, :] - hull[None, :, :]
    dist = np.sqrt((d**2).sum(-1))
    i, j = np.unravel_index(np.argmax(dist), dist.shape)
    long_axis = float(dist[i, j])
    if long_axis == 0:
        return 0.0, 0.0
    u = (hull[j] - hull[i]) / long_axis
    v = np.array([-u[1], u[0]])
    # Longest chord perpendicular to the long axis: group pixel centres by position along u.
    centres = np.stack([rows * dr, cols * dc], axis=1)
    pos_u = centres @ u
    pos_v = centres @ v
    step = min(dr, dc)
    bins = np.round(pos_u / step).astype(np.int64)
    order = np.argsort(bins, kind="stable")
    bins, pos_v = bins[order], pos_v[order]
    starts = np.r_[0, np.nonzero(np.diff(bins))[0] + 1]
    extent = np.maximum.reduceat(pos_v, starts) - np.minimum.reduceat(pos_v, starts)
    pixel_width = abs(v[0]) * dr + abs(v[1]) * dc
    return long_axis, float(extent.max() + pixel_width)


def _disk(radius_px: float) -> np.ndarray:
    r = max(1, round(radius_px))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return ((x * x + y * y) <= radius_px * radius_px + 0.5)[np.newaxis]


def _side(labels_full: np.ndarray, mask: np.ndarray) -> str:
    right = np.count_nonzero(labels_full[mask] == RIGHT)
    left = np.count_nonzero(labels_full[mask] == LEFT)
    if right == left == 0:
        return "central"
    return "right" if right >= left else "left"


def _measure(
    ct: Volume,
    suv: Volume | None,
    mask: np.ndarray,
    origin: tuple[int, int, int],
    side: str,
    detected_by: str,
    mtv: MtvThreshold,
) -> Candidate:
    areas = mask.sum(axis=(1, 2))
    key_local = int(np.argmax(areas))
    key = origin[0] + key_local
    rows, cols = np.nonzero(mask[key_local])
    box = (
        origin[1] + int(rows.min()),
        origin[2] + int(cols.min()),
        origin[1] + int(rows.max()),
        origin[2] + int(cols.max()),
    )
    filled = np.nonzero(areas)[0]
    centroid_idx = np.argwhere(mask).mean(axis=0) + np.array(origin)
    long_axis, short_axis = feret_axes(mask[key_local], (ct.spacing[1], ct.spacing[2]))
    values: dict[str, float | None] = {
        "suv_max": None,
        "suv_mean": None,
        "mtv_ml": None,
        "tlg": None,
    }
    if suv is not None:
        values.update(_pet_measures(ct, suv, mask, origin, mtv))
    return Candidate(
        mask=mask,
        mask_origin=origin,
        key_slice_index=key,
        box_rc=box,
        slice_range=(origin[0] + int(filled[0]), origin[0] + int(filled[-1])),
        centroid_mm=tuple(float(v) for v in ct.index_to_patient(centroid_idx)),  # type: ignore[arg-type]
        side=side,
        long_axis_mm=round(long_axis, 2),
        short_axis_mm=round(short_axis, 2),
        volume_ml=float(np.count_nonzero(mask)) * ct.voxel_volume_ml,
        detected_by=detected_by,
        **values,  # type: ignore[arg-type]
    )


def _pet_measures(
    ct: Volume, suv: Volume, mask: np.ndarray, origin: tuple[int, int, int], mtv: MtvThreshold
) -> dict[str, float | None]:
    """SUVmax/SUVmean in the lesion; MTV (SUV >= threshold) and TLG in the dilated lesion."""
    margin = [int(np.ceil(_MTV_MARGIN_MM / s)) for s in ct.spacing]
    lo = [max(0, o - m) for o, m in zip(origin, margin)]
    hi = [min(n, o + s + m) for o, s, m, n in zip(origin, mask.shape, margin, ct.shape)]
    local = np.zeros([h - low for low, h in zip(lo, hi)], dtype=bool)
    inner = tuple(slice(o - low, o - low + s) for o, low, s in zip(origin, lo, mask.shape))
    local[inner] = mask
    values = suv.array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    inside = values[local]
    if inside.size == 0:
        return {}
    suv_max = float(inside.max())
    if suv_max <= 0:
        return {"suv_max": suv_max, "suv_mean": float(inside.mean()), "mtv_ml": 0.0, "tlg": 0.0}
    near = ndimage.distance_transform_edt(~local, sampling=ct.spacing) <= _MTV_MARGIN_MM
    metabolic = near & (values >= mtv.threshold_for(suv_max))
    mtv_ml = float(np.count_nonzero(metabolic)) * ct.voxel_volume_ml
    tlg = float(values[metabolic].mean()) * mtv_ml if mtv_ml > 0 else 0.0
    return {"suv_max": suv_max, "suv_mean": float(inside.mean()), "mtv_ml": mtv_ml, "tlg": tlg}


def _refine(
    ct: Volume, working: np.ndarray, factor: int, threshold: float
) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """A working-grid component as a full-resolution mask of soft tissue, cropped to its box."""
    found = ndimage.find_objects(working.astype(np.uint8))
    if not found or found[0] is None:
        return None
    sl = found[0]
    s0, s1 = sl[0].start, sl[0].stop
    r0, r1 = max(0, sl[1].start - 1) * factor, min(ct.shape[1], (sl[1].stop + 1) * factor)
    c0, c1 = max(0, sl[2].start - 1) * factor, min(ct.shape[2], (sl[2].stop + 1) * factor)
    region = ndimage.binary_dilation(working, structure=_disk(1.0))
    region_full = upsample(region, factor, (working.shape[0],) + ct.shape[1:])[s0:s1, r0:r1, c0:c1]
    tissue = (ct.array[s0:s1, r0:r1, c0:c1] > threshold) & region_full
    radius = 1.5 / min(ct.spacing[1], ct.spacing[2])
    if radius >= 1:
        tissue = ndimage.binary_opening(tissue, structure=_disk(radius))
    labels, count = ndimage.label(tissue)
    if count == 0:
        return None
    core = upsample(working, factor, (working.shape[0],) + ct.shape[1:])[s0:s1, r0:r1, c0:c1]
    overlap = ndimage.sum_labels(core, labels, index=np.arange(1, count + 1))
    best = int(np.argmax(overlap)) + 1
    mask = labels == best
    nz = ndimage.find_objects(mask.astype(np.uint8))[0]
    crop = mask[nz]
    return crop, (s0 + nz[0].start, r0 + nz[1].start, c0 + nz[2].start)


def _mediastinal_band(small: np.ndarray, lungs: LungMask) -> np.ndarray:
    """Non-fat soft tissue of the mediastinum next to the lungs (working grid), where a hilar
    or paratracheal mass found at the lung's medial edge may continue.
    """
    spacing = lungs.spacing
    sampling = (1e6, spacing[1], spacing[2])
    near = ndimage.distance_transform_edt(~lungs.region, sampling=sampling) <= MEDIASTINAL_BAND_MM
    tissue = (small > MEDIASTINAL_SOFT_HU[0]) & (small < MEDIASTINAL_SOFT_HU[1])
    band = near & ~lungs.region & tissue & lungs.medial
    return ndimage.binary_opening(band, structure=_disk(_OPEN_MM / min(spacing[1:])))


def _grow(component: np.ndarray, band: np.ndarray, steps: int) -> np.ndarray:
    """A component grown in-plane at most `steps` pixels through the band it touches.

    Not grown when the growth would be most of the result: a speck at the lung edge next to
    the aorta or heart is not a mass, and a lesion is not the mediastinum it abuts.
    """
    if steps <= 0 or not band.any():
        return component
    box = ndimage.find_objects(component.astype(np.uint8))[0]
    shape = component.shape
    sl = (
        box[0],
        slice(max(0, box[1].start - steps), min(shape[1], box[1].stop + steps)),
        slice(max(0, box[2].start - steps), min(shape[2], box[2].stop + steps)),
    )
    local = component[sl]
    grown = ndimage.binary_dilation(
        local, structure=IN_PLANE, iterations=steps, mask=local | band[sl]
    )
    if np.count_nonzero(local) < MIN_SEED_FRACTION * np.count_nonzero(grown):
        return component
    out = component.copy()
    out[sl] = grown
    return out


def find_candidates(
    ct: Volume,
    suv: Volume | None = None,
    mtv: MtvThreshold | None = None,
    lungs: LungMask | None = None,
) -> list[Candidate]:
    """Lesion candidates of a CT (and SUV on the CT grid), measured, largest first.

    CT: soft tissue (> -300 HU) inside the per-slice closed lungs, opened in-plane to cut
    vessels, at least MIN_DIAMETER_MM thick. PET: SUV > max(2.5, 2 x median lung SUV) in the
    same region. Overlapping CT and PET candidates become one, detected_by "CT+PET".
    """
    mtv = mtv or MtvThreshold(2.5, relative=False)
    lungs = lungs or lung_mask(ct)
    factor = lungs.factor
    small = subsample(ct.array, factor)
    spacing = lungs.spacing
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if not lungs.region.any():
        return []

    soft = (small > SOFT_TISSUE_HU) & lungs.region
    soft = ndimage.binary_opening(soft, structure=_disk(_OPEN_MM / min(spacing[1:])))
    band = _mediastinal_band(small, lungs)
    grow_steps = round(MEDIASTINAL_GROWTH_MM / min(spacing[1:]))
    labels, count = ndimage.label(soft)
    ct_components: list[np.ndarray] = []
    if count:
        thickness = ndimage.distance_transform_edt(soft, sampling=(1e6, spacing[1], spacing[2]))
        index = np.arange(1, count + 1)
        max_thick = ndimage.maximum(thickness, labels, index) * 2.0
        sizes = ndimage.sum_labels(soft, labels, index) * voxel_ml
        region_ml = np.count_nonzero(lungs.region) * voxel_ml
        keep = np.nonzero(
            (max_thick >= MIN_DIAMETER_MM) & (sizes >= MIN_VOLUME_ML) & (sizes <= 0.5 * region_ml)
        )[0]
        keep = keep[np.argsort(sizes[keep])[::-1]][:MAX_CANDIDATES]
        objects = ndimage.find_objects(labels)
        for i in keep:
            component = np.zeros_like(soft)
            component[objects[i]] = labels[objects[i]] == i + 1
            ct_components.append(_grow(component, band, grow_steps))

    pet_components: list[np.ndarray] = []
    if suv is not None:
        suv_small = subsample(suv.array, factor)
        lung_values = suv_small[lungs.lungs]
        background = float(np.median(lung_values)) if lung_values.size else 0.0
        hot = (suv_small > max(PET_MIN_SUV, 2.0 * background)) & lungs.region
        hot_labels, hot_count = ndimage.label(hot)
        if hot_count:
            sizes = ndimage.sum_labels(hot, hot_labels, np.arange(1, hot_count + 1)) * voxel_ml
            objects = ndimage.find_objects(hot_labels)
            for i in np.argsort(sizes)[::-1][:MAX_CANDIDATES]:
                if sizes[i] < MIN_VOLUME_ML:
                    break
                component = np.zeros_like(hot)
                component[objects[i]] = hot_labels[objects[i]] == i + 1
                pet_components.append(component)

    near_lung = ndimage.grey_dilation(lungs.labels, size=(1, 7, 7))

    def side_of(mask: np.ndarray, origin: tuple[int, int, int]) -> str:
        # The lung the lesion touches most (lungs dilated ~6 working pixels in-plane).
        idx = np.argwhere(mask) + np.array(origin)
        idx[:, 1:] = np.minimum(idx[:, 1:] // factor, np.array(near_lung.shape[1:]) - 1)
        return _side(near_lung[idx[:, 0], idx[:, 1], idx[:, 2]], np.ones(len(idx), dtype=bool))

    candidates: list[Candidate] = []
    used_pet = [False] * len(pet_components)
    for component in ct_components:
        refined = _refine(ct, component, factor, SOFT_TISSUE_HU)
        if refined is None:
            continue
        by = "CT"
        for j, hot in enumerate(pet_components):
            if not used_pet[j] and np.any(hot & component):
                used_pet[j] = True
                by = "CT+PET"
        mask, origin = refined
        candidates.append(_measure(ct, suv, mask, origin, side_of(mask, origin), by, mtv))
    for j, hot in enumerate(pet_components):
        if used_pet[j] or any(np.any(hot & c) for c in ct_components):
            continue
        refined = _refine(ct, hot, factor, -np.inf)
        if refined is None:
            continue
        mask, origin = refined
        candidates.append(_measure(ct, suv, mask, origin, side_of(mask, origin), "PET", mtv))
    candidates.sort(key=lambda c: c.volume_ml, reverse=True)
    return candidates
