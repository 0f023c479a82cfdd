"""Lung mask from CT: air inside the body, split into the right and the left lung.

Works on an in-plane subsampled copy (about 2 mm pixels) so a 300-slice CT takes well under a
second or two. Outside air is air connected to the image border in its slice; what remains and
is large is lung (plus trachea). Lungs joined at the anterior junction or through the trachea
are split by eroding until two parts appear and growing them back (nearest seed), or failing
that by the body's sagittal midline. Left lung = patient left = +x in LPS. The trachea and
main bronchi are found from the same air inside the body (classifier.imaging.airway).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from matplotlib.path import Path as PolygonPath
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from classifier.imaging.airway import central_airway
from classifier.imaging.volume import Volume

AIR_HU = -400.0
RIGHT, LEFT = 1, 2
_WORKING_MM = 2.0
_MIN_LUNG_ML = 15.0
_CLOSING_MM = 20.0
# Wider closing on the mediastinal side only: reaches hilar/paratracheal masses that indent the
# lung's medial contour deeper than the 20 mm closing fills, without taking in the diaphragm.
_MEDIAL_CLOSING_MM = 30.0
# Chest cavity (see `_cavity`): a lung's region is extended, on each slice, to the soft tissue
# inside the rib cage lateral of that lung's mediastinal border, where the same lung lies below
# within _CAVITY_BELOW_MM: a tumour that has replaced the lung around it (no aerated lung in its
# slices) is then searched whole. Bone is > _BONE_HU on any slice within _RIB_Z_MM (ribs cut
# obliquely, gaps between them closed); the rib boundary is the first bone along each of
# _RAYS rays from the lung's centre, the smallest over _RAY_WINDOW neighbouring rays.
_BONE_HU = 200.0
_RIB_Z_MM = 10.0
_CAVITY_BELOW_MM = 60.0
_RAYS = 120
_RAY_WINDOW = 2
# The rib cage is a closed ring with gaps (costal cartilage in front, between ribs) narrower
# than a quarter of it around a lung's centre: wider arcs without bone (a field of view that
# holds no ribs there) are not closed.
_RING_GAP_RAYS = _RAYS // 4
_RAY_MAX_MM = 220.0
_BORDER_ROWS_MM = 10.0
# The lung's base (see `_interpolated_base`): the diaphragm under a lung is a smooth dome, so the
# lung's lowest slice per in-plane point (its base surface) changes slowly; a mass resting on the
# diaphragm has replaced the lung above it and raises that surface in a steep-sided notch no
# wider than the mass. A ball of _BASE_BALL_MM radius rolled under the base surface (a grey
# opening with a ball cap, _BASE_NOTCH_MM wide either side) fills such notches up to twice
# _BASE_NOTCH_MM across (the largest tumours, 90 mm) and follows the dome, which curves less.
_BASE_NOTCH_MM = 45.0
_BASE_BALL_MM = 100.0
# Only a notch at least this deep is a mass (shallower: the base's own unevenness).
_BASE_MIN_DEPTH_MM = 10.0
# The spine is looked for this far either side of the midpoint between the lungs.
_SPINE_HALF_WIDTH_MM = 15.0
IN_PLANE = np.array(
    [
        [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
        [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
    ],
    dtype=bool,
)


@dataclass(frozen=True)
class LungMask:
    """Lungs on a working grid: `labels` 0 none, 1 right, 2 left; `region` = lungs with
    their concavities closed and holes filled per slice (where lesions are looked for), with
    deeper concavities also closed on each lung's medial (mediastinal) side.
    The working grid is the CT grid subsampled by `factor` along rows and columns.
    """

    labels: np.ndarray
    region: np.ndarray
    factor: int
    spacing: tuple[float, float, float]
    medial: np.ndarray  # per slice, columns on the mediastinal side of either lung's centroid
    # The region extended to each lung's part of the chest cavity (`_cavity`): soft tissue
    # inside the ribs where lung was replaced; a candidate found in `region` may grow into it.
    cavity: np.ndarray | None = None
    # The trachea (1) and main bronchi (2), 0 elsewhere (classifier.imaging.airway).
    airway: np.ndarray | None = None

    @property
    def lungs(self) -> np.ndarray:
        return self.labels > 0

    def volume_ml(self, label: int) -> float:
        return float(np.count_nonzero(self.labels == label)) * float(np.prod(self.spacing)) / 1000.0


def working_factor(volume: Volume) -> int:
    """In-plane subsampling that gives about 2 mm pixels (1 for coarse images)."""
    return max(1, round(_WORKING_MM / min(volume.spacing[1], volume.spacing[2])))


def subsample(array: np.ndarray, factor: int) -> np.ndarray:
    """Every factor-th row and column (centre of each block)."""
    start = factor // 2
    return array[:, start::factor, start::factor]


def upsample_index(n_full: int, n_small: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """For each full-grid row (or column), the working-grid index `upsample` takes it from,
    and whether it has one (rows past the last block stay empty).
    """
    start = factor // 2
    offset = np.maximum(np.arange(n_full) - start, 0)
    return np.minimum(offset // factor, max(n_small - 1, 0)), offset < n_small * factor


def upsample(mask: np.ndarray, factor: int, shape: tuple[int, int, int]) -> np.ndarray:
    """A working-grid mask back on the full grid (nearest block)."""
    if factor == 1:
        return mask[:, : shape[1], : shape[2]]
    rows, rows_ok = upsample_index(shape[1], mask.shape[1], factor)
    cols, cols_ok = upsample_index(shape[2], mask.shape[2], factor)
    out = mask[:, rows[:, np.newaxis], cols[np.newaxis, :]]
    out[:, ~rows_ok, :] = 0
    out[:, :, ~cols_ok] = 0
    return out


def label_counts(labels: np.ndarray, count: int, slab: int = 32) -> np.ndarray:
    """Voxels per label 0..count of a label volume, as np.bincount gives them, a slab of
    slices at a time: bincount casts its input to int64, a copy twice the size of int32
    labels (234 MB on a 1,000-slice working grid) that this keeps to one slab.
    """
    out = np.zeros(count + 1, dtype=np.int64)
    for start in range(0, labels.shape[0], slab):
        out += np.bincount(labels[start : start + slab].ravel(), minlength=count + 1)
    return out


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of a mask's true voxels as slices, None when it is empty."""
    spans = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        on = np.flatnonzero(mask.any(axis=others))
        if on.size == 0:
            return None
        spans.append(slice(int(on[0]), int(on[-1]) + 1))
    return tuple(spans)


def _plane_box(plane: np.ndarray) -> tuple[int, int, int, int]:
    """(row start, row stop, column start, column stop) of a non-empty 2-D mask."""
    rows = np.flatnonzero(plane.any(axis=1))
    cols = np.flatnonzero(plane.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _window(
    box: tuple[int, int, int, int], pad: int, shape: tuple[int, ...]
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """For a 2-D box grown by `pad` on every side: the part of it inside an image of `shape`,
    and where that part lies in the grown box's own coordinates.
    """
    r0, r1, c0, c1 = box
    image = (
        slice(max(0, r0 - pad), min(shape[0], r1 + pad)),
        slice(max(0, c0 - pad), min(shape[1], c1 + pad)),
    )
    local = (
        slice(image[0].start - (r0 - pad), image[0].stop - (r0 - pad)),
        slice(image[1].start - (c0 - pad), image[1].stop - (c0 - pad)),
    )
    return image, local


def dilate_in_plane(
    mask: np.ndarray, radius_mm: float, spacing_rc: tuple[float, float]
) -> np.ndarray:
    """Per slice, the pixels within radius_mm of the mask (a dilation with a disk), by a 2-D
    distance transform inside each slice's box of the mask grown by the radius.
    """
    out = np.zeros(mask.shape, dtype=bool)
    pad = int(np.ceil(radius_mm / min(spacing_rc))) + 1
    for s in np.flatnonzero(mask.any(axis=(1, 2))):
        box = _plane_box(mask[s])
        padded = np.pad(mask[s, box[0] : box[1], box[2] : box[3]], pad)
        near = ndimage.distance_transform_edt(~padded, sampling=spacing_rc) <= radius_mm
        image, local = _window(box, pad, mask.shape[1:])
        out[s][image] = near[local]
    return out


def close_in_plane_radii(
    mask: np.ndarray, radii_mm: tuple[float, ...], spacing_rc: tuple[float, float]
) -> list[np.ndarray]:
    """Per-slice binary closings of one mask with disks of several radii, by 2-D distance
    transforms inside each slice's box of the mask grown by the radius (one dilation
    transform per slice shared by all radii). Outside the grown box all is farther than the
    radius from the mask, so the result is that of the whole plane.
    """
    out = [mask.copy() for _ in radii_mm]
    pads = [int(np.ceil(radius / min(spacing_rc))) + 1 for radius in radii_mm]
    pad = max(pads)
    for s in np.flatnonzero(mask.any(axis=(1, 2))):
        box = _plane_box(mask[s])
        padded = np.pad(mask[s, box[0] : box[1], box[2] : box[3]], pad)
        to_mask = ndimage.distance_transform_edt(~padded, sampling=spacing_rc)
        for closed_volume, radius, own in zip(out, radii_mm, pads, strict=True):
            # A smaller radius needs only its own margin of the shared transform.
            trim = pad - own
            inner = to_mask[trim : to_mask.shape[0] - trim, trim : to_mask.shape[1] - trim]
            closed = ndimage.distance_transform_edt(inner <= radius, sampling=spacing_rc)
            image, local = _window(box, own, mask.shape[1:])
            closed_volume[s][image] |= closed[local] > radius
    return out


def close_in_plane(
    mask: np.ndarray, radius_mm: float, spacing_rc: tuple[float, float]
) -> np.ndarray:
    """Per-slice binary closing with a disk, by distance transforms (fast for big disks)."""
    return close_in_plane_radii(mask, (radius_mm,), spacing_rc)[0]


def fill_in_plane(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (a hole is background not connected to the slice border)."""
    box = bounding_box(mask)
    if box is None:
        return mask.copy()
    # Outside the mask's box all is background reaching the border: work in the box plus a
    # one-pixel background ring, which stands for the image border.
    padded = np.pad(mask[box], ((0, 0), (1, 1), (1, 1)))
    labels, _ = ndimage.label(~padded, structure=IN_PLANE)
    border = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, :, 0].ravel()]))
    filled = ~np.isin(labels[:, 1:-1, 1:-1], border[border > 0])
    out = mask.copy()
    out[box] = filled
    return out


def hull_in_plane(mask: np.ndarray) -> np.ndarray:
    """Per-slice convex hull of a mask (pixel centres inside or on the hull polygon)."""
    out = mask.copy()
    for s in np.nonzero(mask.any(axis=(1, 2)))[0]:
        rows, cols = np.nonzero(mask[s])
        if rows.size < 3:
            continue
        points = np.stack([rows, cols], axis=1).astype(np.float64)
        try:
            hull = ConvexHull(points)
        except QhullError:
            continue
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        rr, cc = np.mgrid[r0:r1, c0:c1]
        grid = np.stack([rr.ravel(), cc.ravel()], axis=1)
        inside = PolygonPath(points[hull.vertices]).contains_points(grid, radius=1e-6)
        out[s, r0:r1, c0:c1] |= inside.reshape(rr.shape)
    return out


def _rib_radii(
    bone: np.ndarray,
    outside: np.ndarray,
    centre: tuple[float, float],
    spacing_rc: tuple[float, float],
) -> np.ndarray:
    """Per ray from `centre` (one 2-D slice, pixel units), the distance in pixels to the first
    bone pixel, NaN where the ray leaves the body or the image first; then, per ray, the
    smallest over the _RAY_WINDOW rays either side (closes gaps between ribs); a ray still
    without bone (costal cartilage, a wider gap) gets the radius interpolated around the ring
    from the nearest rays either side with one: the rib cage is a closed ring (across gaps of
    at most _RING_GAP_RAYS)."""
    step = 0.5
    n_steps = int(_RAY_MAX_MM / min(spacing_rc) / step)
    theta = np.linspace(0.0, 2.0 * np.pi, _RAYS, endpoint=False)
    radius = np.arange(1, n_steps + 1) * step
    rr = np.rint(centre[0] + np.sin(theta)[:, None] * radius[None, :]).astype(np.int64)
    cc = np.rint(centre[1] + np.cos(theta)[:, None] * radius[None, :]).astype(np.int64)
    inside = (rr >= 0) & (rr < bone.shape[0]) & (cc >= 0) & (cc < bone.shape[1])
    rr_c, cc_c = np.clip(rr, 0, bone.shape[0] - 1), np.clip(cc, 0, bone.shape[1] - 1)
    hit_bone = bone[rr_c, cc_c] & inside
    stop = outside[rr_c, cc_c] | ~inside
    first_bone = np.where(hit_bone.any(axis=1), hit_bone.argmax(axis=1), n_steps)
    first_stop = np.where(stop.any(axis=1), stop.argmax(axis=1), n_steps)
    found = first_bone < np.minimum(first_stop, n_steps)
    radii = np.where(found, radius[np.minimum(first_bone, n_steps - 1)], np.nan)
    window = np.stack([np.roll(radii, k) for k in range(-_RAY_WINDOW, _RAY_WINDOW + 1)])
    with np.errstate(invalid="ignore"):
        smallest = np.nanmin(np.where(np.isnan(window), np.inf, window), axis=0)
    return _closed_ring(np.where(np.isfinite(smallest), smallest, np.nan))


def _closed_ring(radii: np.ndarray) -> np.ndarray:
    """Per-ray radii (NaN where unknown) with each unknown ray interpolated, around the ring,
    between the nearest known rays either side, where those lie at most _RING_GAP_RAYS apart
    (a wider arc without bone stays unknown); all NaN if no ray is known."""
    known = np.flatnonzero(~np.isnan(radii))
    if known.size == 0 or known.size == radii.size:
        return radii
    n = radii.size
    positions = np.concatenate([known - n, known, known + n])
    values = np.tile(radii[known], 3)
    rays = np.arange(n)
    after = np.searchsorted(positions, rays)  # the first known ray at or after each ray
    gap = positions[after] - positions[after - 1]  # the known rays either side, apart
    closable = np.isnan(radii) & (gap <= _RING_GAP_RAYS + 1)
    return np.where(closable, np.interp(rays, positions, values), radii)


def _cavity(
    small: np.ndarray,
    bone_mask: np.ndarray,
    outside: np.ndarray,
    own: np.ndarray,
    medial: np.ndarray,
    spacing: tuple[float, float, float],
    caudal_first: bool,
    spine_front: np.ndarray,
) -> np.ndarray:
    """One lung's region extended to its part of the chest cavity (see _BONE_HU above): soft
    tissue pixels of a slice where that lung is, inside the rib cage seen from the lung's
    centre, lateral of the lung's mediastinal border (per row the most medial pixel of the
    lung's region, the nearest row's where a row has none) and with the lung's region on some
    slice at most _CAVITY_BELOW_MM below (the heart, the liver and the diaphragm have none), or
    above the lung's base interpolated under a mass on the dome (`_interpolated_base`).
    """
    out = own.copy()
    n = own.shape[0]
    steps = int(np.ceil(_CAVITY_BELOW_MM / max(spacing[0], 1e-3)))
    present: np.ndarray = np.asarray(own.any(axis=(1, 2)))
    medial_cols = np.flatnonzero(medial.any(axis=(0, 1)))
    lung_cols = np.flatnonzero(own.any(axis=(0, 1)))
    if medial_cols.size == 0 or lung_cols.size == 0:
        return out
    towards_high = bool(medial_cols.mean() > lung_cols.mean())
    bone_steps = int(round(_RIB_Z_MM / max(spacing[0], 1e-3)))
    rows_n, cols_n = own.shape[1:]
    columns = np.arange(cols_n)
    # The mediastinal border per row: on a row without lung on this slice (a mass has replaced
    # it) the most medial border of that row on the slices below within _CAVITY_BELOW_MM (the
    # lung there met the mediastinum).
    history = np.full((n, rows_n), np.nan)
    order = list(range(n) if caudal_first else range(n - 1, -1, -1))
    # Per pixel, the last position (in caudal-to-cranial order) where the lung's region held it.
    last_seen = np.full(own.shape[1:], -(10**6), dtype=np.int64)
    base = _interpolated_base(own, order, spacing, towards_high)
    for position, s in enumerate(order):
        if not present[s]:
            continue
        last_seen[own[s]] = position
        on = own[s]
        has = on.any(axis=1)
        if towards_high:
            history[position] = np.where(has, np.where(on, columns, -1).max(axis=1), np.nan)
        else:
            history[position] = np.where(has, np.where(on, columns, cols_n).min(axis=1), np.nan)
        past = history[max(0, position - steps) : position + 1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # rows never with lung: NaN
            extreme = np.nanmax(past, axis=0) if towards_high else np.nanmin(past, axis=0)
        border = np.where(has, history[position], extreme)
        border = _across_gaps(border, history[position], towards_high)
        if np.isfinite(spine_front[s]):
            # Behind the front of the spine the right pleural space reaches the spine (the
            # paravertebral gutter): a mass filling it leaves lung only lateral of it on its
            # own rows, so the border there is the most medial of this slice's and those below.
            behind = (np.arange(rows_n) >= spine_front[s]) & has & ~np.isnan(extreme)
            pick = np.fmax if towards_high else np.fmin
            border = np.where(behind, pick(border, extreme), border)
        # Above the lung's interpolated base and below its lowest slice: a mass on the dome.
        on_base = (position >= base) & (last_seen < 0)
        under = (position - last_seen <= steps) | on_base
        candidates = under & ~on & (small[s] > -300.0) & (small[s] < _BONE_HU)
        # The most medial border within _BORDER_ROWS_MM of each row: a border with notches
        # (a vessel or a fissure at the lung's medial edge) does not cut the mass in bands.
        reach = max(1, round(_BORDER_ROWS_MM / spacing[1]))
        if towards_high:
            border = ndimage.maximum_filter1d(np.nan_to_num(border, nan=-np.inf), 2 * reach + 1)
        else:
            border = ndimage.minimum_filter1d(np.nan_to_num(border, nan=np.inf), 2 * reach + 1)
        border = np.where(np.isfinite(border), border, np.nan)
        known = np.flatnonzero(~np.isnan(border))
        if not candidates.any() or known.size == 0:
            continue
        rr, cc = np.nonzero(candidates)
        line = np.interp(rr, known, border[known])
        lateral = cc < line if towards_high else cc > line
        rr, cc = rr[lateral], cc[lateral]
        if rr.size == 0:
            continue
        lo, hi = max(0, s - bone_steps), min(n, s + bone_steps + 1)
        bone = bone_mask[lo:hi].any(axis=0) & ~on
        pr, pc = np.nonzero(on)
        centre = (float(pr.mean()), float(pc.mean()))
        radii = _rib_radii(bone, outside[s], centre, spacing[1:])
        dr, dc = rr - centre[0], cc - centre[1]
        ray = np.rint(np.arctan2(dr, dc) % (2 * np.pi) / (2 * np.pi) * _RAYS).astype(np.int64)
        limit = radii[ray % _RAYS]
        with np.errstate(invalid="ignore"):
            keep = np.hypot(dr, dc) < limit - 1.0
        out[s, rr[keep], cc[keep]] = True
    return out


def _across_gaps(border: np.ndarray, own: np.ndarray, towards_high: bool) -> np.ndarray:
    """Per row, the mediastinal border (`border`), where a row has no lung on this slice
    (`own` NaN) between rows that have, the more medial of it and the line between those
    rows' own borders: a mass replaced the lung there, and the slices below may hold on that
    row only the lung's lateral recess around the dome, whose medial edge is not the
    mediastinum's."""
    with_lung = np.flatnonzero(~np.isnan(own))
    if with_lung.size < 2:
        return border
    rows = np.arange(border.size)
    gap = np.isnan(own) & (rows > with_lung[0]) & (rows < with_lung[-1])
    across = np.interp(rows, with_lung, own[with_lung])
    pick = np.fmax if towards_high else np.fmin
    return np.where(gap, pick(border, across), border)


def _interpolated_base(
    own: np.ndarray, order: list[int], spacing: tuple[float, float, float], towards_high: bool
) -> np.ndarray:
    """Per in-plane pixel, the position (in `order`, caudal to cranial) of the lung's base
    under it with notches filled (see _BASE_NOTCH_MM); +inf where the lung never is and where
    the base is the lung's own lowest slice (nothing to add). Only under the lateral half of
    the lung's footprint: under its medial half lie the heart and the mediastinum, whose
    notches in the lung base are not masses."""
    rows_n, cols_n = own.shape[1:]
    lowest = np.full((rows_n, cols_n), np.inf)
    for position, s in enumerate(order):
        new = own[s] & ~np.isfinite(lowest)
        lowest[new] = position
    footprint = np.isfinite(lowest)
    if not footprint.any():
        return lowest
    columns = np.arange(cols_n)
    centre = float(np.mean(np.nonzero(footprint)[1]))
    medial = (columns > centre) if towards_high else (columns < centre)
    # Where a mass has replaced the lung over its whole height the footprint has a gap against
    # the chest wall (convex, the ribs'): the lung's base there is unknown (above its top), to
    # be interpolated from around it.
    hull = hull_in_plane(footprint[np.newaxis])[0] & ~medial[np.newaxis, :]
    lowest[hull & ~footprint] = float(len(order))
    footprint = footprint | hull
    reach = [max(1, int(_BASE_NOTCH_MM / d)) for d in spacing[1:]]
    dy, dx = np.ogrid[-reach[0] : reach[0] + 1, -reach[1] : reach[1] + 1]
    distance = np.hypot(dy * spacing[1], dx * spacing[2])
    disk = distance <= _BASE_NOTCH_MM
    ball = np.where(
        disk, (np.sqrt(np.maximum(_BASE_BALL_MM**2 - distance**2, 0.0)) - _BASE_BALL_MM), 0.0
    ) / max(spacing[0], 1e-3)
    big = float(len(order)) * 10.0
    # On the footprint's box grown by the ball's reach: beyond it all is outside the footprint.
    r0, r1, c0, c1 = _plane_box(footprint)
    box = (
        slice(max(0, r0 - reach[0]), r1 + reach[0]),
        slice(max(0, c0 - reach[1]), c1 + reach[1]),
    )
    inside, low = footprint[box], lowest[box]
    eroded = ndimage.grey_erosion(
        np.where(inside, low, big), footprint=disk, structure=ball, mode="nearest"
    )
    opened = ndimage.grey_dilation(
        np.where(inside, eroded, -big), footprint=disk, structure=ball, mode="nearest"
    )
    deep = inside & ((low - opened) * spacing[0] >= _BASE_MIN_DEPTH_MM) & ~medial[box[1]]
    out = np.full(lowest.shape, np.inf)
    out[box] = np.where(deep, opened, np.inf)
    return out


def _spine_front(bone: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Per slice, the row of the front of the spine (NaN where not found): the most anterior
    bone within _SPINE_HALF_WIDTH_MM of the midpoint between the lungs' centroid columns,
    behind the lungs' centroid row (the sternum is in front)."""
    out = np.full(labels.shape[0], np.nan)
    half = max(1, round(_SPINE_HALF_WIDTH_MM / spacing[2]))
    for s in np.flatnonzero((labels == RIGHT).any(axis=(1, 2)) & (labels == LEFT).any(axis=(1, 2))):
        centres = [np.argwhere(labels[s] == label).mean(axis=0) for label in (RIGHT, LEFT)]
        mid_col = round((centres[0][1] + centres[1][1]) / 2.0)
        mid_row = int((centres[0][0] + centres[1][0]) / 2.0)
        band = bone[s, mid_row:, max(0, mid_col - half) : mid_col + half + 1]
        rows = np.flatnonzero(band.any(axis=1))
        if rows.size:
            out[s] = mid_row + rows[0]
    return out


def _body_mid_x(ct_small: np.ndarray, volume: Volume, factor: int) -> float:
    body = ct_small > AIR_HU
    cols = np.nonzero(body.any(axis=(0, 1)))[0]
    if cols.size == 0:
        return float(volume.index_to_patient(np.array(volume.shape) / 2.0)[0])
    mid_col = (cols[0] + cols[-1]) / 2.0 * factor + factor // 2
    mid = np.array([volume.shape[0] / 2.0, volume.shape[1] / 2.0, mid_col])
    return float(volume.index_to_patient(mid)[0])


def _split(component: np.ndarray) -> np.ndarray | None:
    """Seeds (labels 1, 2) of two lungs found by eroding a joined mask; None if it stays one."""
    eroded = component
    total = np.count_nonzero(component)
    for _ in range(6):
        eroded = ndimage.binary_erosion(eroded)
        labels, count = ndimage.label(eroded)
        if count < 2:
            if count == 0:
                return None
            continue
        sizes = ndimage.sum_labels(eroded, labels, index=np.arange(1, count + 1))
        order = np.argsort(sizes)[::-1]
        if sizes[order[1]] >= 0.1 * total * (np.count_nonzero(eroded) / total):
            seeds = np.zeros(component.shape, dtype=np.uint8)
            seeds[labels == order[0] + 1] = 1
            seeds[labels == order[1] + 1] = 2
            return seeds
    return None


def _medial_columns(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per lung, the columns of each slice on the mediastinal side of that lung's centroid
    (towards the other lung's centroid on that slice, or the pair's mean centroid elsewhere).
    """
    shape = labels.shape
    cols = np.arange(shape[2], dtype=np.float64)
    centroids = []
    for label in (RIGHT, LEFT):
        weights = (labels == label).sum(axis=1).astype(np.float64)  # (slices, columns)
        area = weights.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            centroids.append(np.where(area > 0, weights @ cols / area, np.nan))
    right, left = centroids
    both = ~np.isnan(right) & ~np.isnan(left)
    out = []
    for own, other in ((right, left), (left, right)):
        if both.any():
            default_dir = float(np.sign(np.nanmean(other[both] - own[both])))
        else:
            default_dir = 0.0
        direction = np.where(both, np.sign(np.nan_to_num(other - own)), default_dir)
        offset = (cols[np.newaxis, :] - np.nan_to_num(own)[:, np.newaxis]) * direction[:, None]
        keep = (offset > 0) & ~np.isnan(own)[:, np.newaxis]
        out.append(np.broadcast_to(keep[:, np.newaxis, :], shape))
    return out[0], out[1]


def _between_lungs(labels: np.ndarray) -> np.ndarray:
    """Per slice, the columns between the right lung's and the left lung's centroids."""
    right, left = _medial_columns(labels)
    return right & left


def lung_mask(ct: Volume) -> LungMask:
    """Right and left lung of a CT volume on the working grid (see `LungMask`)."""
    factor = working_factor(ct)
    small = subsample(ct.array, factor)
    spacing = (ct.spacing[0], ct.spacing[1] * factor, ct.spacing[2] * factor)
    voxel_ml = float(np.prod(spacing)) / 1000.0

    air = small < AIR_HU
    per_slice, _ = ndimage.label(air, structure=IN_PLANE)
    border = np.unique(
        np.concatenate(
            [
                per_slice[:, 0, :].ravel(),
                per_slice[:, -1, :].ravel(),
                per_slice[:, :, 0].ravel(),
                per_slice[:, :, -1].ravel(),
            ]
        )
    )
    touches_border = np.zeros(int(per_slice.max()) + 1, dtype=bool)
    touches_border[border[border > 0]] = True
    outside = air & touches_border[per_slice]
    inside = air & ~touches_border[per_slice]
    del air, per_slice  # memory: done with (a full working-grid int32 array)
    inside = ndimage.binary_opening(inside, structure=IN_PLANE)

    labels, count = ndimage.label(inside)
    result = np.zeros(small.shape, dtype=np.uint8)
    if count:
        # Voxel counts per component (as sum_labels gives them, float64), by one bincount.
        counts = label_counts(labels, count)[1:]
        sizes = counts.astype(np.float64) * voxel_ml
        order = [i for i in np.argsort(sizes)[::-1][:2] if sizes[i] >= _MIN_LUNG_ML]
        keep = [i for i in order if sizes[i] >= 0.1 * sizes[order[0]]] if order else []
        if len(keep) == 2:
            result[labels == keep[0] + 1] = 1
            result[labels == keep[1] + 1] = 2
        elif len(keep) == 1:
            component = labels == keep[0] + 1
            seeds = _split(component)
            if seeds is not None:
                _, nearest = ndimage.distance_transform_edt(
                    seeds == 0, sampling=spacing, return_indices=True
                )
                grown = seeds[tuple(nearest)]
                result[component] = grown[component]
            else:
                mid_x = _body_mid_x(small, ct, factor)
                cols = np.arange(small.shape[2]) * factor + factor // 2
                points = np.stack(
                    [np.zeros(cols.size), np.full(cols.size, ct.shape[1] / 2), cols], -1
                )
                left_cols = ct.index_to_patient(points)[:, 0] > mid_x
                result[component & left_cols[np.newaxis, np.newaxis, :]] = 2
                result[component & ~left_cols[np.newaxis, np.newaxis, :]] = 1
        # Label 1/2 so far mean "first/second"; assign right/left by patient x of the centroids.
        if result.any():
            xs: list[float | None] = []
            for label in (1, 2):
                # The mean voxel index (np.argwhere(...).mean(axis=0), exact sums of whole
                # numbers over the count) from per-axis projections: no (voxels, 3) int64 copy.
                member = result == label
                n_voxels = np.count_nonzero(member)
                if n_voxels == 0:
                    xs.append(None)
                    continue
                mean_index = np.array(
                    [
                        float(np.dot(np.arange(member.shape[a]), member.sum(axis=others)))
                        / n_voxels
                        for a, others in ((0, (1, 2)), (1, (0, 2)), (2, (0, 1)))
                    ]
                )
                del member
                centre = mean_index * np.array([1.0, factor, factor]) + np.array(
                    [0, factor // 2, factor // 2]
                )
                xs.append(float(ct.index_to_patient(centre)[0]))
            if xs[0] is not None and xs[1] is not None and xs[0] > xs[1]:
                result = np.where(result == 1, 2, np.where(result == 2, 1, 0)).astype(np.uint8)
            elif xs[0] is not None and xs[1] is None and xs[0] > _body_mid_x(small, ct, factor):
                # One lung only, lying left of the body midline: it is the left lung.
                result[result == 1] = 2

    z_first, z_last = ct.index_to_patient(np.array([[0.0, 0.0, 0.0], [ct.shape[0] - 1.0, 0, 0]]))[
        :, 2
    ]
    caudal_first = bool(z_first <= z_last)
    airway = central_airway(ct.array, factor, outside, result > 0, spacing, caudal_first)
    del labels, inside  # memory: done with
    region = np.zeros_like(result, dtype=bool)
    cavity = np.zeros_like(result, dtype=bool)
    medial_cols = _medial_columns(result)
    # Bone on a 3 x 3 mean: a noisy or contrast-filled vessel pixel is not a rib. Kept as a
    # mask, made a slab at a time (the filter is per slice): no full int16 filtered copy.
    bone = np.zeros(small.shape, dtype=bool)
    for start in range(0, small.shape[0], 32):
        chunk = ndimage.uniform_filter(small[start : start + 32], size=(1, 3, 3))
        bone[start : start + 32] = chunk > _BONE_HU
    spine_front = _spine_front(bone, result, spacing)
    for label in (RIGHT, LEFT):
        lung = result == label
        if lung.any():
            closed, wide = close_in_plane_radii(
                lung, (_CLOSING_MM, _MEDIAL_CLOSING_MM), spacing[1:]
            )
            own = fill_in_plane(closed) | (fill_in_plane(wide) & medial_cols[label - 1])
            region |= own
            # Beside the spine on the left lies the descending aorta, not pleural space: the
            # gutter rule (see _cavity) is for the right lung only.
            gutter = spine_front if label == RIGHT else np.full_like(spine_front, np.nan)
            cavity |= _cavity(
                small,
                bone,
                outside,
                own,
                medial_cols[label - 1],
                spacing,
                caudal_first,
                gutter,
            )
    medial = (medial_cols[0] | medial_cols[1]) & _between_lungs(result)
    return LungMask(
        labels=result,
        region=region,
        factor=factor,
        spacing=spacing,
        medial=medial,
        cavity=cavity,
        airway=airway,
    )
