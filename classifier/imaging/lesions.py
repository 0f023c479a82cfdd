"""Lesion candidates from CT (soft tissue in the lung region) and PET (SUV hot spots), merged,
and measured: key slice, box, centroid, side, RECIST long/short axis, volume, SUV, MTV, TLG.

Detection runs on the lung mask's working grid (about 2 mm pixels); each candidate's mask is
then refined on the full CT grid inside its bounding box. Vessels are removed by an in-plane
opening and a minimum thickness. The search region is the lungs closed per slice (deeper on the
medial side), not the chest; a candidate at the lung's medial edge may continue at most
MEDIASTINAL_GROWTH_MM into adjacent non-fat mediastinal soft tissue, so a hilar or paratracheal
mass is covered beyond its rim while the heart and great vessels are not searched as such.
Candidates that are normal anatomy by their 3-D shape are dropped (`is_anatomy`): those rising
from below the lung (liver, spleen, stomach, the heart under the lung), those lying along the
trachea (the aortic arch, the great veins, the oesophagus: the mediastinum; the trachea and main
bronchi from classifier.imaging.airway), pieces of a tube (a vessel the detector's cuts cut
across: widest at one end, where it goes on) and those elongated along the body axis (vessel
and airway trees, the mediastinum).

A grown candidate is then cut to its masses (`_mass_parts`): opened with a ball, a tumour keeps
its body and loses the vessels, airway walls and mediastinal strands joined to it; of a vessel
tree only parts thicker than a hilar vessel stay, and thinner ones that hang in the lung (a dead
end on the tree, in aerated lung, its cross-section stopping: a mass, where a vessel confluence
goes on as tube or into the mediastinum). What lies beyond a neck narrower than the opening's
ball (the opening cuts it off, or its balls' centres lie apart from the mass's) and hangs in the
lung (a wedge of collapse narrowing to the tumour) is not the mass, even where the opening or
the regrowth would join it back. A stub touching a much larger mass is part of its edge, not a
finding; nothing above the lungs' apex is a finding.

A candidate found in the lung region grows in 3-D into the soft tissue of its lung's chest
cavity outside the region (`LungMask.cavity`: inside the ribs, lateral of the mediastinal
border, above that lung or above its base interpolated under a mass on the dome), so a tumour
that replaced the lung around it is one candidate, cut at the mediastinum; candidates that then
overlap are merged. With `small_nodules`, solid nodules thinner than MIN_DIAMETER_MM are
proposed as well when they are compact and stand free of vessels (`_small_nodules` on the
working grid, `_stands_free` on the CT grid).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from classifier.imaging.airway import TRACHEA
from classifier.imaging.lung_mask import (
    IN_PLANE,
    LEFT,
    RIGHT,
    LungMask,
    bounding_box,
    dilate_in_plane,
    label_counts,
    lung_mask,
    subsample,
    upsample_index,
)
from classifier.imaging.volume import Volume
from classifier.settings import MtvThreshold

SOFT_TISSUE_HU = -300.0
# In-plane thickness (largest inscribed disk) a CT candidate needs. Vessels that survive the
# opening outside the hilum are mostly thinner; on the real studies (5-8 mm slices) at 6 mm
# about ten lung vessels per study were candidates. Costs solid nodules under ~8 mm.
MIN_DIAMETER_MM = 8.0
MIN_VOLUME_ML = 0.1
# Small solid nodules (thinner than MIN_DIAMETER_MM, which the opening and the thickness rule
# remove with the vessels) are looked for as their own components of soft tissue in the lung
# region before the opening: NODULE_MIN_MM to NODULE_MAX_MM across, compact in 3-D (principal
# axes, voxel size included, within NODULE_MAX_ELONGATION), ending on the slices beyond its
# ends (at most NODULE_MAX_CONTINUATION of its end footprints is soft tissue there: a vessel
# cut across by the slices continues) and standing free (at most NODULE_MAX_SHELL of a ring
# NODULE_SHELL_MM around it on its slices is soft tissue: a vessel segment has branches and
# neighbours). A nodule against a vessel or the pleura fails the last test: a known limit.
NODULE_MIN_MM = 4.0
NODULE_MAX_MM = 15.0
NODULE_MAX_ELONGATION = 2.0
NODULE_MAX_CONTINUATION = 0.15
NODULE_MAX_SHELL = 0.15
NODULE_SHELL_MM = (2.0, 5.0)
NODULE_FREE_FRACTION = 0.05  # the same tests on the full CT grid (`_stands_free`)
MAX_CANDIDATES = 30
PET_MIN_SUV = 2.5
MEDIASTINAL_BAND_MM = 20.0
MEDIASTINAL_GROWTH_MM = 15.0
MIN_SEED_FRACTION = 0.3  # of a grown candidate, what must lie in the lung region
MEDIASTINAL_SOFT_HU = (-50.0, 150.0)  # not fat, not bone or calcium
# A candidate whose lowest slice continues, on the slice below, as soft tissue outside the lung
# region for at least this fraction of its footprint rises from below the lung: the liver or
# spleen dome, the stomach, the heart's border under the lung. Not a lung lesion.
MAX_CAUDAL_CONTINUATION = 0.6
# ...unless its highest slice holds less than this fraction of its largest slice's area and its
# widest slice lies above its lowest: an organ dome widens downwards into what lies below the
# lung (widest on its lowest slice), a mass resting on the diaphragm is a convex body whose
# cross-section grows from its base (cut flat where it meets the dome) and narrows to its top.
DOME_BASE_FRACTION = 0.5
# A candidate longer along the body axis than ELONGATION x its in-plane long axis, and at least
# ELONGATED_MIN_Z_MM long, is a vessel or airway tree or the mediastinum, not a mass.
ELONGATION = 1.5
ELONGATED_MIN_Z_MM = 40.0
# A candidate one of whose ends is (nearly: TUBE_END_FRACTION of its largest area) its widest
# slice, where on the slice beyond at least TUBE_CONTINUATION ("most") of that end's footprint
# is still soft tissue, is a piece of a tube: a vessel, cut across by the detector's rules,
# goes on with the same calibre; a mass's cross-section grows, then shrinks (its widest slice
# lies between its ends) or stops. Only candidates no wider than a hilar vessel (short axis
# at most TUBE_MAX_CALIBRE_MM: a pulmonary artery is at most about 25 mm wide) are vessels: a
# mass cut short at the diaphragm, the apex or another structure is wider.
TUBE_END_FRACTION = 0.9
TUBE_CONTINUATION = 0.5
TUBE_MAX_CALIBRE_MM = 25.0
_OPEN_MM = 2.5
# A candidate grown mostly into the chest cavity keeps of its seed only what lies this close
# to the cavity part (in-plane, on the same slice; in 3-D where the seed is as massive as
# cavity tissue, CAVITY_MIN_THICK_MM).
CAVITY_SEED_MM = 10.0
# Chest-cavity tissue a candidate may grow into must be at least this thick in plane (a mass).
CAVITY_MIN_THICK_MM = 15.0
_MTV_MARGIN_MM = 5.0
# A grown candidate is cut to its masses (`_mass_parts`): opened with a ball of MASS_NECK x
# the radius of its largest inscribed ball (at least MASS_CORE_MIN_MM), parts grown back
# in-plane by MASS_REGROW_MM; of a component that falls into several parts (a vessel tree),
# only parts holding a ball of MASS_MIN_RADIUS_MM are masses. MASS_MIN_RADIUS_MM is chosen
# leave one patient out on the real studies (classifier.model.real_ct_protocol).
MASS_NECK = 0.5
MASS_CORE_MIN_MM = 6.0
MASS_REGROW_MM = 4.0
MASS_MIN_RADIUS_MM = 10.0
# A part thinner than MASS_MIN_RADIUS_MM is still a mass when it hangs in the lung
# (`_hangs_in_lung`): at most one branch leaves it (`_exits`: a piece of the component beyond
# EXIT_GAP_MM of the part reaching EXIT_LENGTH_MM from it), at least DEAD_END_MIN_AIR ("most")
# of what touches it outside the component is aerated lung (a vessel's stump at the hilum lies
# in the mediastinum), and its cross-section stops beyond both ends (TUBE_CONTINUATION).
DEAD_END_MIN_AIR = 0.5
EXIT_GAP_MM = 3.0
EXIT_LENGTH_MM = 10.0
# A component touching one at least this many times its volume is a stub at that one's edge.
EDGE_FRAGMENT_RATIO = 4.0
# The trachea (classifier.imaging.airway) lies in the mediastinum: the aortic arch, the great
# veins, the oesophagus and the paratracheal nodes lie against it, the lung only along a thin
# stripe of its right wall. A candidate within AIRWAY_CONTACT_MM of its lumen (its wall
# between) on slices covering at least TRACHEA_CONTACT_MM of the body axis runs along it: the
# mediastinum, not a lung lesion.
AIRWAY_CONTACT_MM = 3.0
TRACHEA_CONTACT_MM = 30.0
# The lungs' apex: the most cranial slice on which the aerated lungs cover at least
# APEX_MIN_CM2 (a few pixels of air in the neck are not lung).
APEX_MIN_CM2 = 2.0


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
    # RECIST on the key slice's largest in-plane part: a piece the 3-D mask reaches only
    # through other slices (a strand, a vessel stub) does not stretch the long axis.
    key_plane = mask[key_local]
    parts, n_parts = ndimage.label(key_plane)
    if n_parts > 1:
        sizes = np.bincount(parts.ravel())[1:]
        key_plane = parts == int(np.argmax(sizes)) + 1
    long_axis, short_axis = feret_axes(key_plane, (ct.spacing[1], ct.spacing[2]))
    values: dict[str, float | None] = {
        "suv_max": None,
        "suv_mean": None,
        "mtv_ml": None,
        "tlg": None,
    }
    if suv is not None:
        values.update(_pet_measures(ct, suv, mask, origin, mtv))
    x_mm, y_mm, z_mm = ct.index_to_patient(centroid_idx)
    return Candidate(
        mask=mask,
        mask_origin=origin,
        key_slice_index=key,
        box_rc=box,
        slice_range=(origin[0] + int(filled[0]), origin[0] + int(filled[-1])),
        centroid_mm=(float(x_mm), float(y_mm), float(z_mm)),
        side=side,
        long_axis_mm=round(long_axis, 2),
        short_axis_mm=round(short_axis, 2),
        volume_ml=float(np.count_nonzero(mask)) * ct.voxel_volume_ml,
        detected_by=detected_by,
        suv_max=values["suv_max"],
        suv_mean=values["suv_mean"],
        mtv_ml=values["mtv_ml"],
        tlg=values["tlg"],
    )


def _pet_measures(
    ct: Volume, suv: Volume, mask: np.ndarray, origin: tuple[int, int, int], mtv: MtvThreshold
) -> dict[str, float | None]:
    """SUVmax/SUVmean in the lesion; MTV (SUV >= threshold) and TLG in the dilated lesion."""
    margin = [int(np.ceil(_MTV_MARGIN_MM / s)) for s in ct.spacing]
    lo = [max(0, o - m) for o, m in zip(origin, margin, strict=True)]
    hi = [
        min(n, o + s + m) for o, s, m, n in zip(origin, mask.shape, margin, ct.shape, strict=True)
    ]
    local = np.zeros([h - low for low, h in zip(lo, hi, strict=True)], dtype=bool)
    inner = tuple(
        slice(o - low, o - low + s) for o, low, s in zip(origin, lo, mask.shape, strict=True)
    )
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


@dataclass(frozen=True)
class _Blob:
    """A connected mask on the working grid, kept as its bounding box (absolute working-grid
    slices) and the mask inside it, so no candidate costs a full-size array.
    """

    box: tuple[slice, slice, slice]
    mask: np.ndarray

    def overlaps(self, other: _Blob) -> bool:
        starts = [max(a.start, b.start) for a, b in zip(self.box, other.box, strict=True)]
        stops = [min(a.stop, b.stop) for a, b in zip(self.box, other.box, strict=True)]
        if any(lo >= hi for lo, hi in zip(starts, stops, strict=True)):
            return False
        mine = tuple(
            slice(lo - a.start, hi - a.start)
            for lo, hi, a in zip(starts, stops, self.box, strict=True)
        )
        theirs = tuple(
            slice(lo - b.start, hi - b.start)
            for lo, hi, b in zip(starts, stops, other.box, strict=True)
        )
        return bool(np.any(self.mask[mine] & other.mask[theirs]))


def _shift(box: tuple[slice, ...], origin: tuple[int, ...]) -> tuple[slice, slice, slice]:
    # A box and an origin are 3-D (slice, row, column); zip(strict=True) checks it.
    return tuple(slice(b.start + o, b.stop + o) for b, o in zip(box, origin, strict=True))  # type: ignore[return-value]  # length 3 is not expressible in a tuple comprehension


def _refine(
    ct: Volume, blob: _Blob, factor: int, working_shape: tuple[int, int, int], threshold: float
) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """A working-grid component as a full-resolution mask of soft tissue, cropped to its box."""
    sl = blob.box
    s0, s1 = sl[0].start, sl[0].stop
    r0, r1 = max(0, sl[1].start - 1) * factor, min(ct.shape[1], (sl[1].stop + 1) * factor)
    c0, c1 = max(0, sl[2].start - 1) * factor, min(ct.shape[2], (sl[2].stop + 1) * factor)
    # The component on a working-grid window three pixels wider than its box (the full-grid
    # box maps inside it), dilated there as on the whole grid.
    wr0, wc0 = max(0, sl[1].start - 3), max(0, sl[2].start - 3)
    wr1 = min(working_shape[1], sl[1].stop + 3)
    wc1 = min(working_shape[2], sl[2].stop + 3)
    core_small = np.zeros((s1 - s0, wr1 - wr0, wc1 - wc0), dtype=bool)
    core_small[
        :,
        sl[1].start - wr0 : sl[1].stop - wr0,
        sl[2].start - wc0 : sl[2].stop - wc0,
    ] = blob.mask
    region_small = ndimage.binary_dilation(core_small, structure=_disk(1.0))
    rows, rows_ok = upsample_index(ct.shape[1], working_shape[1], factor)
    cols, cols_ok = upsample_index(ct.shape[2], working_shape[2], factor)
    rows, rows_ok = rows[r0:r1] - wr0, rows_ok[r0:r1]
    cols, cols_ok = cols[c0:c1] - wc0, cols_ok[c0:c1]
    valid = rows_ok[np.newaxis, :, np.newaxis] & cols_ok[np.newaxis, np.newaxis, :]
    pick = (slice(None), rows[:, np.newaxis], cols[np.newaxis, :])
    region_full = region_small[pick] & valid
    tissue = (ct.array[s0:s1, r0:r1, c0:c1] > threshold) & region_full
    radius = 1.5 / min(ct.spacing[1], ct.spacing[2])
    if radius >= 1:
        tissue = ndimage.binary_opening(tissue, structure=_disk(radius))
    labels, count = ndimage.label(tissue)
    if count == 0:
        return None
    core = core_small[pick] & valid
    overlap = ndimage.sum_labels(core, labels, index=np.arange(1, count + 1))
    best = int(np.argmax(overlap)) + 1
    mask = labels == best
    nz = ndimage.find_objects(mask.view(np.uint8))[0]
    crop = mask[nz]
    return crop, (s0 + nz[0].start, r0 + nz[1].start, c0 + nz[2].start)


def _mediastinal_band(
    small: np.ndarray, region: np.ndarray, medial: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """Non-fat soft tissue of the mediastinum next to the lungs (working grid), where a hilar
    or paratracheal mass found at the lung's medial edge may continue.
    """
    near = dilate_in_plane(region, MEDIASTINAL_BAND_MM, (spacing[1], spacing[2]))
    tissue = (small > MEDIASTINAL_SOFT_HU[0]) & (small < MEDIASTINAL_SOFT_HU[1])
    band = near & ~region & tissue & medial
    return ndimage.binary_opening(band, structure=_disk(_OPEN_MM / min(spacing[1:])))


def _grow(blob: _Blob, band: np.ndarray, steps: int) -> _Blob:
    """A component grown in-plane at most `steps` pixels through the band it touches.

    Not grown when the growth would be most of the result: a speck at the lung edge next to
    the aorta or heart is not a mass, and a lesion is not the mediastinum it abuts.
    `band` and the blob's box share one grid.
    """
    if steps <= 0 or not band.any():
        return blob
    box = blob.box
    shape = band.shape
    sl = (
        box[0],
        slice(max(0, box[1].start - steps), min(shape[1], box[1].stop + steps)),
        slice(max(0, box[2].start - steps), min(shape[2], box[2].stop + steps)),
    )
    local = np.zeros([s.stop - s.start for s in sl], dtype=bool)
    inner = tuple(slice(b.start - s.start, b.stop - s.start) for b, s in zip(box, sl, strict=True))
    local[inner] = blob.mask
    grown = ndimage.binary_dilation(
        local, structure=IN_PLANE, iterations=steps, mask=local | band[sl]
    )
    if np.count_nonzero(local) < MIN_SEED_FRACTION * np.count_nonzero(grown):
        return blob
    tight = bounding_box(grown)
    assert tight is not None  # the seed is in it
    return _Blob(_shift(tight, tuple(s.start for s in sl)), grown[tight])


def _grow_in_cavity(
    blob: _Blob,
    labels: np.ndarray,
    objects: list[tuple[slice, ...] | None],
    spacing: tuple[float, float, float],
) -> _Blob:
    """A component joined (in 3-D) by the components of the chest cavity's soft tissue outside
    the lung region that it touches (`labels`, their boxes `objects`, on the blob's grid): a
    tumour that replaced the lung around it, found by its rim in the lung region, whole."""
    box = blob.box
    near = tuple(
        slice(max(0, b.start - 1), min(n, b.stop + 1))
        for b, n in zip(box, labels.shape, strict=True)
    )
    seed = np.zeros([b.stop - b.start for b in near], dtype=bool)
    seed[
        tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, near, strict=True))
    ] = blob.mask
    ring = ndimage.binary_dilation(seed) & ~seed
    hit = np.unique(labels[near][ring])
    hit = hit[hit > 0]
    if hit.size == 0:
        return blob
    spans = [box] + [objects[h - 1] for h in hit]
    union = tuple(
        slice(min(sp[a].start for sp in spans if sp), max(sp[a].stop for sp in spans if sp))
        for a in range(3)
    )
    added = np.isin(labels[union], hit)
    local = np.zeros(added.shape, dtype=bool)
    local[
        tuple(slice(b.start - u.start, b.stop - u.start) for b, u in zip(box, union, strict=True))
    ] = blob.mask
    if np.count_nonzero(added) > np.count_nonzero(local):
        # Mostly cavity: a mass that replaced the lung, found by a rim or a vessel at its edge.
        # The seed stays only where it lies beside the mass on the mass's own slices (the
        # hilar vessels it may continue into above or below are not the mass), or where it is
        # as massive as cavity tissue must be (CAVITY_MIN_THICK_MM in plane) within
        # CAVITY_SEED_MM of the mass in 3-D: the mass's own slices in the lung region above
        # and below its part in the cavity.
        beside = dilate_in_plane(added, CAVITY_SEED_MM, (spacing[1], spacing[2]))
        massive = ndimage.binary_opening(
            local, structure=_disk(CAVITY_MIN_THICK_MM / 2.0 / min(spacing[1:]))
        )
        near = ndimage.distance_transform_edt(~added, sampling=spacing) <= CAVITY_SEED_MM
        beside |= massive & near
        local = added | (local & beside)
    else:
        local |= added
    tight = bounding_box(local)
    assert tight is not None
    return _Blob(_shift(tight, tuple(u.start for u in union)), local[tight])


def _mass_parts(
    blob: _Blob,
    spacing: tuple[float, ...],
    mass_radius_mm: float,
    tissue: np.ndarray | None = None,
) -> list[_Blob]:
    """A grown component cut to its masses. It is opened with a ball of radius r (MASS_NECK x
    the radius of its largest inscribed ball, at least MASS_CORE_MIN_MM): what is thinner than
    2r (vessels, airway walls, mediastinal strands) falls off; each remaining part is grown
    back in-plane by MASS_REGROW_MM within the component. When that leaves one part, it is the
    component's body and is kept. When it leaves several, the component was a tree (hilar
    vessels joined to each other and maybe to a mass): only parts holding a ball of radius
    `mass_radius_mm` (thicker than a hilar vessel) are masses; the rest are vessels, unless
    they hang in the lung (`_hangs_in_lung`, on the soft `tissue` of the blob's grid when
    given): a vessel confluence goes on as tube on several sides or into the mediastinum, a
    mass is a dead end on the tree, in aerated lung, whose cross-section stops. Before the
    regrowth, a part that hangs in the lung on a thicker mass is taken off it
    (`_hanging_appendages` on the shares of the opening's cores, `_core_shares`: a wedge of
    collapse). A component with no ball of
    MASS_CORE_MIN_MM inside (a small nodule) is kept whole."""
    padded = np.pad(blob.mask, 1)
    inside = ndimage.distance_transform_edt(padded, sampling=spacing)
    largest = float(inside.max())
    if largest < MASS_CORE_MIN_MM:
        return [blob]
    radius = max(MASS_CORE_MIN_MM, MASS_NECK * largest)
    core = inside >= radius
    opened = (ndimage.distance_transform_edt(~core, sampling=spacing) <= radius) & padded
    steps = max(1, round(MASS_REGROW_MM / min(spacing[1:])))
    if tissue is not None:
        hanging = _hanging_appendages(
            _core_shares(core, opened, spacing),
            padded,
            inside,
            steps,
            mass_radius_mm,
            blob,
            tissue,
            spacing,
        )
        opened &= ~hanging
    opened = ndimage.binary_dilation(opened, structure=IN_PLANE, iterations=steps, mask=padded)
    labels, count = ndimage.label(opened)
    origin = tuple(b.start - 1 for b in blob.box)
    out = []
    for n, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        part = labels[box] == n
        if (
            count > 1
            and float(inside[box][part].max()) < mass_radius_mm
            and not (
                tissue is not None and _hangs_in_lung(labels == n, padded, blob, tissue, spacing)
            )
        ):
            continue
        out.append(_Blob(_shift(box, origin), part))
    return out


def _core_shares(core: np.ndarray, opened: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """The opened component's voxels labelled by the nearest of the core's pieces (the
    opening ball's centres, `core`). The opening joins two pieces of core when their balls
    overlap, though the neck between them is narrower than the ball: a wedge of collapse
    widening away from its tumour gets a core of its own, whose balls reach back through the
    neck. Each piece's share is a part of its own, as a part the opening cut off."""
    labels, count = ndimage.label(core)
    if count < 2:
        return labels * opened
    nearest = ndimage.distance_transform_edt(
        labels == 0, sampling=spacing, return_distances=False, return_indices=True
    )
    return np.where(opened, labels[tuple(nearest)], 0)


def _hanging_appendages(
    shares: np.ndarray,
    component: np.ndarray,
    inside: np.ndarray,
    steps: int,
    mass_radius_mm: float,
    blob: _Blob,
    tissue: np.ndarray,
    spacing: tuple[float, ...],
) -> np.ndarray:
    """The parts of an opened component (`shares`: its voxels labelled by part, padded frame,
    as `_mass_parts` makes it) that hang on a mass through a neck: parts the opening or the
    regrowth joins to a part holding a larger ball, one of `mass_radius_mm` at least, and that
    hang in the lung themselves (`_hangs_in_lung`). A tumour is a convex body; what lies
    beyond a neck narrower than the opening's ball is thinner than it and hangs in aerated
    lung: a wedge of collapse narrowing to the tumour, not the tumour. Empty when there is
    none."""
    labels, count = shares, int(shares.max())
    opened = shares > 0
    none = np.zeros(opened.shape, dtype=bool)
    if count < 2:
        return none
    index = np.arange(1, count + 1)
    balls = np.asarray(ndimage.maximum(inside, labels, index=index))
    if not np.any(balls >= mass_radius_mm):
        return none
    regrown = ndimage.binary_dilation(opened, structure=IN_PLANE, iterations=steps, mask=component)
    groups, _ = ndimage.label(regrown)
    group_of = np.asarray(ndimage.maximum(groups, labels, index=index)).astype(int)
    thickest = np.asarray(ndimage.maximum(balls, group_of, index=group_of))
    drop = [
        k + 1
        for k in range(count)
        if balls[k] < thickest[k]
        and thickest[k] >= mass_radius_mm
        and _hangs_in_lung(labels == k + 1, component, blob, tissue, spacing)
    ]
    return np.isin(labels, drop) if drop else none


def _hangs_in_lung(
    part: np.ndarray,
    component: np.ndarray,
    blob: _Blob,
    tissue: np.ndarray,
    spacing: tuple[float, ...],
) -> bool:
    """Whether a part of a component (padded frame, as `_mass_parts` makes it) is a mass
    hanging in the lung: a dead end (`_exits` at most 1), most of whose surroundings
    (DEAD_END_MIN_AIR of the voxels touching it outside the component) are aerated lung (not
    `tissue`), and whose cross-section stops at both ends."""
    if _exits(part, component, spacing) > 1:
        return False
    ring = ndimage.binary_dilation(part, structure=np.ones((3, 3, 3), bool)) & ~component
    box = [slice(b.start - 1, b.stop + 1) for b in blob.box]
    inner = tuple(
        slice(max(0, -b.start), (b.stop - b.start) - max(0, b.stop - n))
        for b, n in zip(box, tissue.shape, strict=True)
    )
    outer = tuple(
        slice(max(0, b.start), min(n, b.stop)) for b, n in zip(box, tissue.shape, strict=True)
    )
    ring = ring[inner]
    if not ring.any() or np.mean(~tissue[outer][ring]) < DEAD_END_MIN_AIR:
        return False
    # Its cross-section stops: on the slice beyond each end, less than TUBE_CONTINUATION of
    # the end's footprint is soft tissue (as `_tube_piece`: a vessel crossing the slices goes
    # on).
    own = part[inner]
    filled = np.flatnonzero(own.any(axis=(1, 2)))
    for end, beyond in ((filled[0], filled[0] - 1), (filled[-1], filled[-1] + 1)):
        at = outer[0].start + beyond
        if not 0 <= at < tissue.shape[0]:
            continue
        if np.mean(tissue[at, outer[1], outer[2]][own[end]]) >= TUBE_CONTINUATION:
            return False
    return True


def _exits(part: np.ndarray, component: np.ndarray, spacing: tuple[float, ...]) -> int:
    """How many branches leave a part of a component: pieces of the component farther than
    EXIT_GAP_MM from the part that reach at least EXIT_LENGTH_MM from it (a tube going on, not
    a bump at its edge). A vessel confluence has a tube on several sides; a mass is a dead end
    joined to its neighbour by one stalk."""
    away = ndimage.distance_transform_edt(~part, sampling=spacing)
    rest = component & (away > EXIT_GAP_MM)
    pieces, count = ndimage.label(rest, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return 0
    reach = ndimage.maximum(away, pieces, index=np.arange(1, count + 1))
    return int(np.count_nonzero(np.asarray(reach) >= EXIT_LENGTH_MM))


def _without_edge_fragments(blobs: list[_Blob]) -> list[_Blob]:
    """The components without those that touch one at least EDGE_FRAGMENT_RATIO times their
    volume: a vessel or bronchus stub at a mass's edge is not a second finding."""
    order = sorted(blobs, key=lambda b: -np.count_nonzero(b.mask))
    kept: list[_Blob] = []
    for blob in order:
        size = np.count_nonzero(blob.mask)
        grown = _grown_by_one(blob)
        if any(
            np.count_nonzero(big.mask) >= EDGE_FRAGMENT_RATIO * size and big.overlaps(grown)
            for big in kept
        ):
            continue
        kept.append(blob)
    return [b for b in blobs if any(b is k for k in kept)]


def _candidates_touch(a: Candidate, b: Candidate) -> bool:
    """Whether two candidates' full-resolution masks overlap or touch (26-neighbourhood)."""
    a_lo, b_lo = np.array(a.mask_origin), np.array(b.mask_origin)
    a_hi, b_hi = a_lo + a.mask.shape, b_lo + b.mask.shape
    lo, hi = np.maximum(a_lo - 1, b_lo), np.minimum(a_hi + 1, b_hi)
    if np.any(lo >= hi):
        return False
    grown = ndimage.binary_dilation(np.pad(a.mask, 1), structure=np.ones((3, 3, 3), bool))
    mine = tuple(slice(int(s), int(e)) for s, e in zip(lo - a_lo + 1, hi - a_lo + 1, strict=True))
    theirs = tuple(slice(int(s), int(e)) for s, e in zip(lo - b_lo, hi - b_lo, strict=True))
    return bool(np.any(grown[mine] & b.mask[theirs]))


def _without_touching_fragments(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates without those whose full-resolution mask touches a candidate of at least
    EDGE_FRAGMENT_RATIO times their volume: the working-grid rule (`_without_edge_fragments`)
    sees two parts of one mass as apart when the refinement joins them (a spicule or a wedge of
    collapse at a mass's edge is not a second finding)."""
    order = sorted(candidates, key=lambda c: -c.volume_ml)
    kept: list[Candidate] = []
    for candidate in order:
        if any(
            big.volume_ml >= EDGE_FRAGMENT_RATIO * candidate.volume_ml
            and _candidates_touch(candidate, big)
            for big in kept
        ):
            continue
        kept.append(candidate)
    return [c for c in candidates if any(c is k for k in kept)]


def _not_anatomy_nor_fragments(
    candidates: list[Candidate], anatomy: Callable[[Candidate], str | None]
) -> list[Candidate]:
    """The candidates that are not anatomy (`anatomy` says why one is) nor a fragment of a kept
    one (`_without_touching_fragments`), largest first. Anatomy goes first: a tumour's piece
    touching the heart or an organ's dome is not that structure's fragment, only a lesion's
    spicule or wedge is (judged the other way round, the piece went with the structure)."""
    kept = _without_touching_fragments([c for c in candidates if anatomy(c) is None])
    return sorted(kept, key=lambda c: c.volume_ml, reverse=True)


def _grown_by_one(blob: _Blob) -> _Blob:
    """A component dilated by one voxel (26-neighbourhood), in its grown box."""
    padded = ndimage.binary_dilation(np.pad(blob.mask, 1), structure=np.ones((3, 3, 3), bool))
    box = tuple(slice(b.start - 1, b.stop + 1) for b in blob.box)
    return _Blob(box, padded)  # type: ignore[arg-type]  # three slices


def _caudal_first(ct: Volume) -> bool:
    """Whether slice index 0 is the volume's most caudal slice (patient z grows with it)."""
    ends = ct.index_to_patient(np.array([[0.0, 0.0, 0.0], [ct.shape[0] - 1.0, 0.0, 0.0]]))
    return bool(ends[0, 2] <= ends[1, 2])


def _apex_slice(lungs: LungMask, caudal_first: bool) -> int:
    """The working-grid slice of the lungs' apex (see APEX_MIN_CM2); the volume's most cranial
    slice when no slice has that much lung."""
    area_cm2 = np.count_nonzero(lungs.labels, axis=(1, 2)) * lungs.spacing[1] * lungs.spacing[2]
    on = np.flatnonzero(area_cm2 / 100.0 >= APEX_MIN_CM2)
    if on.size == 0:
        return lungs.labels.shape[0] - 1 if caudal_first else 0
    return int(on.max()) if caudal_first else int(on.min())


def _below_apex(blobs: list[_Blob], apex: int, caudal_first: bool) -> list[_Blob]:
    """Each component without its slices cranial of the lungs' apex (working-grid slice
    `apex`): nothing above the lungs (thyroid, oesophagus, neck vessels) is a lung finding."""
    out = []
    for blob in blobs:
        s0, s1 = blob.box[0].start, blob.box[0].stop
        keep = np.arange(s0, s1) <= apex if caudal_first else np.arange(s0, s1) >= apex
        if keep.all():
            out.append(blob)
            continue
        mask = blob.mask & keep[:, np.newaxis, np.newaxis]
        tight = bounding_box(mask)
        if tight is None:
            continue
        base = tuple(b.start for b in blob.box)
        out.append(_Blob(_shift(tight, base), mask[tight]))
    return out


def _merge_overlapping(blobs: list[_Blob], shape: tuple[int, ...]) -> list[_Blob]:
    """Overlapping components as one (grown candidates on one tumour), in the given order."""
    out: list[_Blob] = []
    for blob in blobs:
        for n, kept in enumerate(out):
            if kept.overlaps(blob):
                joined = np.zeros(shape, dtype=bool)
                joined[kept.box] = kept.mask
                joined[blob.box] |= blob.mask
                tight = bounding_box(joined)
                assert tight is not None
                out[n] = _Blob(tight, joined[tight])  # type: ignore[arg-type]
                break
        else:
            out.append(blob)
    return out


def _thick_enough(
    soft: np.ndarray, blob: _Blob, spacing_rc: tuple[float, float], diameter_mm: float
) -> bool:
    """Whether some pixel of the component lies at least diameter/2 (in-plane) from any pixel
    outside `soft`: its maximal inscribed disk is at least `diameter_mm` wide. An erosion of
    the component's neighbourhood by the open disk of that radius, in the distance
    transform's arithmetic (pixels outside the grid do not count).
    """
    radius = diameter_mm / 2.0
    m_r, m_c = (int(np.ceil(radius / s)) for s in spacing_rc)
    dr = np.arange(-m_r, m_r + 1, dtype=np.float64)[:, np.newaxis] * spacing_rc[0]
    dc = np.arange(-m_c, m_c + 1, dtype=np.float64)[np.newaxis, :] * spacing_rc[1]
    disk = np.sqrt(dr * dr + dc * dc) < radius
    box = blob.box
    window = (
        box[0],
        slice(max(0, box[1].start - m_r), min(soft.shape[1], box[1].stop + m_r)),
        slice(max(0, box[2].start - m_c), min(soft.shape[2], box[2].stop + m_c)),
    )
    core = ndimage.binary_erosion(soft[window], structure=disk[np.newaxis], border_value=1)
    inner = tuple(
        slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, window, strict=True)
    )
    return bool(np.any(core[inner] & blob.mask))


def _elongation(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Ratio of the longest to the shortest principal axis of a 3-D mask in mm, each voxel's
    own extent counted (a one-slice blob is as thick as its slice)."""
    step = np.asarray(spacing, dtype=np.float64)
    points = np.argwhere(mask) * step
    cov = np.cov(points.T) if len(points) > 1 else np.zeros((3, 3))
    eig = np.linalg.eigvalsh(cov + np.diag(step**2 / 12.0))
    return float(np.sqrt(eig[-1] / max(eig[0], 1e-12)))


def _small_nodules(
    tissue: np.ndarray, region: np.ndarray, taken: np.ndarray, spacing: tuple[float, ...]
) -> list[_Blob]:
    """Small solid nodules on the working grid (see NODULE_MIN_MM): components of soft tissue
    in the lung region, before any opening, that no larger candidate holds."""
    candidate = tissue & region & ~taken
    labels, count = ndimage.label(candidate)
    if count == 0:
        return []
    voxel_mm3 = float(np.prod(spacing))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:] * voxel_mm3
    smallest = (np.pi / 6.0) * NODULE_MIN_MM**3 * 0.5
    largest = (np.pi / 6.0) * NODULE_MAX_MM**3
    objects = ndimage.find_objects(labels)
    pixel = min(spacing[1], spacing[2])
    r_in, r_out = NODULE_SHELL_MM
    pad = int(np.ceil(r_out / pixel)) + 1
    out: list[_Blob] = []
    for i in np.flatnonzero((sizes >= smallest) & (sizes <= largest)):
        box = objects[i]
        mask = labels[box] == i + 1
        rows_mm = (box[1].stop - box[1].start) * spacing[1]
        cols_mm = (box[2].stop - box[2].start) * spacing[2]
        if max(rows_mm, cols_mm) > NODULE_MAX_MM + 2 * pixel:
            continue
        widest = mask.sum(axis=(1, 2)).max() * spacing[1] * spacing[2]
        if 2.0 * np.sqrt(widest / np.pi) < NODULE_MIN_MM:
            continue
        if _elongation(mask, spacing) > NODULE_MAX_ELONGATION:
            continue
        window = (
            box[0],
            slice(max(0, box[1].start - pad), min(tissue.shape[1], box[1].stop + pad)),
            slice(max(0, box[2].start - pad), min(tissue.shape[2], box[2].stop + pad)),
        )
        local = labels[window] == i + 1
        # On the slice beyond each end, the end's footprint grown by NODULE_SHELL_MM[0]
        # (a vessel crossing the slices obliquely continues beside it, not under it).
        ends_continue = False
        for end, beyond in ((0, box[0].start - 1), (-1, box[0].stop)):
            if 0 <= beyond < tissue.shape[0]:
                footprint = local[end]
                near = ndimage.distance_transform_edt(~footprint, sampling=spacing[1:]) <= r_in
                under = tissue[beyond, window[1], window[2]][near]
                ends_continue |= bool(np.mean(under) > NODULE_MAX_CONTINUATION)
        if ends_continue:
            continue
        shell = np.zeros(local.shape, dtype=bool)
        for k in range(local.shape[0]):
            if local[k].any():
                near = ndimage.distance_transform_edt(~local[k], sampling=spacing[1:])
                shell[k] = (near > r_in) & (near <= r_out)
        if not shell.any() or np.mean(tissue[window][shell]) > NODULE_MAX_SHELL:
            continue
        out.append(_Blob(box, mask))
    return out


def _stands_free(ct: Volume, mask: np.ndarray, origin: tuple[int, int, int]) -> bool:
    """A small nodule's check on the full CT grid (the working grid loses the thin vessels
    that join a vessel's cross-section to its tree): compact (NODULE_MAX_ELONGATION), at most
    NODULE_FREE_FRACTION of the ring NODULE_SHELL_MM around it on its slices soft tissue, and
    as little beside its end footprints (grown by the ring's inner radius) on the slices
    beyond its ends."""
    if not mask.any() or _elongation(mask, ct.spacing) > NODULE_MAX_ELONGATION:
        return False
    r_in, r_out = NODULE_SHELL_MM
    spacing_rc = (ct.spacing[1], ct.spacing[2])
    pad = int(np.ceil(r_out / min(spacing_rc))) + 1
    s0, r0, c0 = origin
    rows = slice(max(0, r0 - pad), min(ct.shape[1], r0 + mask.shape[1] + pad))
    cols = slice(max(0, c0 - pad), min(ct.shape[2], c0 + mask.shape[2] + pad))
    tissue_fraction = []
    for k in range(-1, mask.shape[0] + 1):
        s = s0 + k
        if not 0 <= s < ct.shape[0]:
            continue
        inner_k = min(max(k, 0), mask.shape[0] - 1)
        local = np.zeros((rows.stop - rows.start, cols.stop - cols.start), dtype=bool)
        local[
            r0 - rows.start : r0 - rows.start + mask.shape[1],
            c0 - cols.start : c0 - cols.start + mask.shape[2],
        ] = mask[inner_k]
        if not local.any():
            continue
        near = ndimage.distance_transform_edt(~local, sampling=spacing_rc)
        # On its own slices the ring; beyond its ends the grown footprint.
        where = (near > r_in) & (near <= r_out) if 0 <= k < mask.shape[0] else near <= r_in
        values = ct.array[s, rows, cols][where]
        if values.size:
            tissue_fraction.append(float(np.mean(values > SOFT_TISSUE_HU)))
    return bool(tissue_fraction) and max(tissue_fraction) <= NODULE_FREE_FRACTION


def _rises_from_below(ct: Volume, candidate: Candidate, lungs: LungMask) -> float:
    """Fraction of the candidate's lowest slice whose voxels on the slice below are soft tissue
    outside the lung region (0 on the volume's most caudal slice). "Lowest" and "below" are the
    patient's: slice index 0 is the most cranial slice where the normal of the image points
    to the feet (as feet-first scans are often stored).
    """
    s0, r0, c0 = candidate.mask_origin
    if _caudal_first(ct):
        footprint, under = candidate.mask[0], s0 - 1
    else:
        footprint, under = candidate.mask[-1], s0 + candidate.mask.shape[0]
    if not 0 <= under < ct.shape[0]:
        return 0.0
    rows_n, cols_n = footprint.shape
    rows, rows_ok = upsample_index(ct.shape[1], lungs.region.shape[1], lungs.factor)
    cols, cols_ok = upsample_index(ct.shape[2], lungs.region.shape[2], lungs.factor)
    rows, rows_ok = rows[r0 : r0 + rows_n], rows_ok[r0 : r0 + rows_n]
    cols, cols_ok = cols[c0 : c0 + cols_n], cols_ok[c0 : c0 + cols_n]
    region = lungs.region[under][rows[:, np.newaxis], cols[np.newaxis, :]]
    region &= rows_ok[:, np.newaxis] & cols_ok[np.newaxis, :]
    below = ct.array[under, r0 : r0 + rows_n, c0 : c0 + cols_n]
    return float(np.mean(((below > SOFT_TISSUE_HU) & ~region)[footprint]))


def _airway_around(
    ct: Volume, candidate: Candidate, lungs: LungMask, pad_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """The candidate's mask and the central airway's labels (`LungMask.airway`) on the CT
    grid, in the candidate's box grown in-plane by pad_mm (all 0 where there is none)."""
    s0, r0, c0 = candidate.mask_origin
    n, rows_n, cols_n = candidate.mask.shape
    pad = int(np.ceil(pad_mm / min(ct.spacing[1], ct.spacing[2])))
    lo_r, lo_c = max(0, r0 - pad), max(0, c0 - pad)
    hi_r, hi_c = min(ct.shape[1], r0 + rows_n + pad), min(ct.shape[2], c0 + cols_n + pad)
    mask = np.zeros((n, hi_r - lo_r, hi_c - lo_c), dtype=bool)
    mask[:, r0 - lo_r : r0 - lo_r + rows_n, c0 - lo_c : c0 - lo_c + cols_n] = candidate.mask
    airway = np.zeros(mask.shape, dtype=np.uint8)
    if lungs.airway is not None:
        rows, rows_ok = upsample_index(ct.shape[1], lungs.airway.shape[1], lungs.factor)
        cols, cols_ok = upsample_index(ct.shape[2], lungs.airway.shape[2], lungs.factor)
        rows, rows_ok = rows[lo_r:hi_r], rows_ok[lo_r:hi_r]
        cols, cols_ok = cols[lo_c:hi_c], cols_ok[lo_c:hi_c]
        airway = lungs.airway[s0 : s0 + n][:, rows[:, np.newaxis], cols[np.newaxis, :]]
        airway *= (rows_ok[:, np.newaxis] & cols_ok[np.newaxis, :])[np.newaxis]
    return mask, airway


def _along_trachea(ct: Volume, candidate: Candidate, lungs: LungMask) -> float:
    """Along how much of the body axis (mm) the candidate lies against the trachea: within
    AIRWAY_CONTACT_MM of its lumen (the wall between) on a slice."""
    mask, airway = _airway_around(ct, candidate, lungs, AIRWAY_CONTACT_MM + 2.0)
    spacing_rc = (ct.spacing[1], ct.spacing[2])
    touching = 0
    for k in np.flatnonzero((airway == TRACHEA).any(axis=(1, 2)) & mask.any(axis=(1, 2))):
        near = ndimage.distance_transform_edt(~mask[k], sampling=spacing_rc)
        touching += bool(np.any((airway[k] == TRACHEA) & (near <= AIRWAY_CONTACT_MM)))
    return touching * ct.spacing[0]


def _narrows_to_base(candidate: Candidate, caudal_first: bool) -> bool:
    """Whether the candidate's highest slice holds less than DOME_BASE_FRACTION of its largest
    slice's area and its lowest slice less than the largest (`caudal_first`: mask index 0 is
    its lowest): a convex mass resting on the diaphragm, growing from its base and narrowing to
    its top, not an organ dome widening below the lung."""
    areas = np.count_nonzero(candidate.mask, axis=(1, 2))
    lowest, highest = (areas[0], areas[-1]) if caudal_first else (areas[-1], areas[0])
    return bool(highest < DOME_BASE_FRACTION * areas.max() and lowest < areas.max())


def _tube_piece(ct: Volume, candidate: Candidate) -> float:
    """How much of the footprint of the candidate's widest end goes on as soft tissue on the
    slice beyond that end (0 when neither end is nearly its widest slice, or when it is wider
    than a vessel, TUBE_MAX_CALIBRE_MM): a piece cut from a tube (a vessel, constant in
    calibre, which the detector's cuts cut across) goes on beyond its widest end, while a
    mass's cross-section grows then shrinks, or stops."""
    if candidate.short_axis_mm > TUBE_MAX_CALIBRE_MM:
        return 0.0
    areas = np.count_nonzero(candidate.mask, axis=(1, 2))
    s0, r0, c0 = candidate.mask_origin
    rows = slice(r0, r0 + candidate.mask.shape[1])
    cols = slice(c0, c0 + candidate.mask.shape[2])
    going_on = 0.0
    for end, beyond in ((0, s0 - 1), (len(areas) - 1, s0 + len(areas))):
        if areas[end] < TUBE_END_FRACTION * areas.max() or not 0 <= beyond < ct.shape[0]:
            continue
        tissue = ct.array[beyond, rows, cols][candidate.mask[end]] > SOFT_TISSUE_HU
        going_on = max(going_on, float(np.mean(tissue)))
    return going_on


def is_anatomy(ct: Volume, candidate: Candidate, lungs: LungMask) -> str | None:
    """Why a candidate is normal anatomy rather than a lesion, or None: it rises from below the
    lung (an abdominal organ's or the heart's dome; not a convex mass resting on it), it runs
    along the trachea (the mediastinum), it is a piece of a tube (a vessel), or it is elongated
    along the body axis (a vessel, an airway, the mediastinum).
    """
    below = _rises_from_below(ct, candidate, lungs)
    if below >= MAX_CAUDAL_CONTINUATION and not _narrows_to_base(candidate, _caudal_first(ct)):
        return f"continues below the lung ({below:.0%} of its lowest slice)"
    along = _along_trachea(ct, candidate, lungs)
    if along >= TRACHEA_CONTACT_MM:
        return f"runs along the trachea ({along:.0f} mm)"
    tube = _tube_piece(ct, candidate)
    if tube >= TUBE_CONTINUATION:
        return f"a piece of a tube ({tube:.0%} of its widest end goes on beyond it)"
    z_mm = (candidate.slice_range[1] - candidate.slice_range[0] + 1) * ct.spacing[0]
    if z_mm >= ELONGATED_MIN_Z_MM and z_mm > ELONGATION * candidate.long_axis_mm:
        return f"elongated along the body axis ({z_mm:.0f} mm vs {candidate.long_axis_mm:.0f} mm)"
    return None


def find_candidates(
    ct: Volume,
    suv: Volume | None = None,
    mtv: MtvThreshold | None = None,
    lungs: LungMask | None = None,
    *,
    small_nodules: bool = False,
    mass_radius_mm: float | None = None,
) -> list[Candidate]:
    """Lesion candidates of a CT (and SUV on the CT grid), measured, largest first.

    CT: soft tissue (> -300 HU) inside the per-slice closed lungs, opened in-plane to cut
    vessels, at least MIN_DIAMETER_MM thick, grown into the chest cavity, then cut to its
    masses (`_mass_parts`, `mass_radius_mm`: None for MASS_MIN_RADIUS_MM), without stubs at a
    mass's edge and without anything above the lungs' apex. PET: SUV > max(2.5, 2 x median
    lung SUV) in the same region. Overlapping CT and PET candidates become one, detected_by
    "CT+PET".
    """
    mtv = mtv or MtvThreshold()
    lungs = lungs or lung_mask(ct)
    factor = lungs.factor
    spacing = lungs.spacing
    voxel_ml = float(np.prod(spacing)) / 1000.0
    region_box = bounding_box(lungs.region)
    if region_box is None:
        return []
    # Everything below happens within the lung region's box grown by the mediastinal band and
    # a margin: nothing outside it can join a candidate.
    margin = int(np.ceil(MEDIASTINAL_BAND_MM / min(spacing[1:]))) + 4
    working_shape = lungs.labels.shape
    crop = (
        region_box[0],
        slice(
            max(0, region_box[1].start - margin), min(working_shape[1], region_box[1].stop + margin)
        ),
        slice(
            max(0, region_box[2].start - margin), min(working_shape[2], region_box[2].stop + margin)
        ),
    )
    origin = tuple(s.start for s in crop)
    small = subsample(ct.array, factor)[crop]
    region = lungs.region[crop]
    labels_lung = lungs.labels[crop]

    tissue = small > SOFT_TISSUE_HU
    soft = tissue & region
    soft = ndimage.binary_opening(soft, structure=_disk(_OPEN_MM / min(spacing[1:])))
    band = _mediastinal_band(small, region, lungs.medial[crop], spacing)
    grow_steps = round(MEDIASTINAL_GROWTH_MM / min(spacing[1:]))
    labels, count = ndimage.label(soft)
    ct_components: list[_Blob] = []
    if count:
        # Voxel counts (as sum_labels gives them, float64) by bincount: memory.
        sizes = label_counts(labels, count)[1:].astype(np.float64) * voxel_ml
        region_ml = np.count_nonzero(lungs.region) * voxel_ml
        objects = ndimage.find_objects(labels)
        blobs = {}
        thick = np.zeros(count, dtype=bool)
        for i in np.flatnonzero((sizes >= MIN_VOLUME_ML) & (sizes <= 0.5 * region_ml)):
            blobs[i] = _Blob(objects[i], labels[objects[i]] == i + 1)
            thick[i] = _thick_enough(soft, blobs[i], spacing[1:], MIN_DIAMETER_MM)
        keep = np.nonzero(thick)[0]
        keep = keep[np.argsort(sizes[keep])[::-1]][:MAX_CANDIDATES]
        cavity_labels, cavity_count = np.zeros((1, 1, 1), dtype=np.int32), 0
        if lungs.cavity is not None and keep.size:
            extra = (lungs.cavity[crop] & ~region) & tissue
            if extra.any():
                # Only massive cavity tissue (an opening with a CAVITY_MIN_THICK_MM disk): the
                # thin strips of chest wall, pleura and heart border inside the ribs would
                # join a juxtapleural tumour to its neighbours along the chest wall.
                radius = CAVITY_MIN_THICK_MM / 2.0 / min(spacing[1:])
                extra = ndimage.binary_opening(extra, structure=_disk(radius))
                cavity_labels, cavity_count = ndimage.label(extra)
        cavity_objects = ndimage.find_objects(cavity_labels) if cavity_count else []
        for i in keep:
            grown = _grow(blobs[i], band, grow_steps)
            if cavity_count:
                grown = _grow_in_cavity(grown, cavity_labels, cavity_objects, spacing)
            ct_components.append(grown)
        del cavity_labels, cavity_objects  # memory: done with (int32 on the crop)
        ct_components = _merge_overlapping(ct_components, soft.shape)
        ct_components = [
            part
            for blob in ct_components
            for part in _mass_parts(blob, spacing, mass_radius_mm or MASS_MIN_RADIUS_MM, tissue)
        ]
        ct_components = _without_edge_fragments(ct_components)
    caudal_first = _caudal_first(ct)
    apex = _apex_slice(lungs, caudal_first)
    ct_components = _below_apex(ct_components, apex - origin[0], caudal_first)
    n_thick = len(ct_components)
    if small_nodules:
        taken = np.zeros(soft.shape, dtype=bool)
        for blob in ct_components:
            taken[blob.box] |= blob.mask
        # Thick candidates (and the rims the opening took off them) are not looked at again.
        taken = ndimage.binary_dilation(taken, structure=IN_PLANE, iterations=2)
        room = MAX_CANDIDATES - len(ct_components)
        ct_components += _small_nodules(tissue, region, taken, spacing)[: max(0, room)]
    del labels, soft, band  # memory: done with

    pet_components: list[_Blob] = []
    if suv is not None:
        # Only the crop's points of the working grid: a lazy SUV computes no more than those
        # (not the whole working grid, 117 MB of float32 on a 1,000-slice CT).
        first = factor // 2
        suv_small = suv.array[
            crop[0],
            slice(first + crop[1].start * factor, first + (crop[1].stop - 1) * factor + 1, factor),
            slice(first + crop[2].start * factor, first + (crop[2].stop - 1) * factor + 1, factor),
        ]
        lung_values = suv_small[labels_lung > 0]
        background = float(np.median(lung_values)) if lung_values.size else 0.0
        hot = (suv_small > max(PET_MIN_SUV, 2.0 * background)) & region
        hot_labels, hot_count = ndimage.label(hot)
        if hot_count:
            counts = label_counts(hot_labels, hot_count)[1:]
            sizes = counts.astype(np.float64) * voxel_ml  # as sum_labels, by one bincount
            objects = ndimage.find_objects(hot_labels)
            for i in np.argsort(sizes)[::-1][:MAX_CANDIDATES]:
                if sizes[i] < MIN_VOLUME_ML:
                    break
                pet_components.append(_Blob(objects[i], hot_labels[objects[i]] == i + 1))
        del suv_small, lung_values, hot, hot_labels  # memory: done with

    near_lung = ndimage.grey_dilation(labels_lung, size=(1, 7, 7))

    def side_of(mask: np.ndarray, at: tuple[int, int, int]) -> str:
        # The lung the lesion touches most (lungs dilated ~6 working pixels in-plane); the
        # crop holds every lung pixel with a margin, so what lies outside it touches none.
        idx = np.argwhere(mask) + np.array(at)
        idx[:, 1:] = np.minimum(idx[:, 1:] // factor, np.array(working_shape[1:]) - 1)
        idx -= np.array(origin)
        inside = np.all((idx >= 0) & (idx < np.array(near_lung.shape)), axis=1)
        values = np.zeros(len(idx), dtype=near_lung.dtype)
        values[inside] = near_lung[idx[inside, 0], idx[inside, 1], idx[inside, 2]]
        return _side(values, np.ones(len(idx), dtype=bool))

    def refine(blob: _Blob, threshold: float) -> tuple[np.ndarray, tuple[int, int, int]] | None:
        absolute = _Blob(_shift(blob.box, origin), blob.mask)
        return _refine(ct, absolute, factor, working_shape, threshold)

    candidates: list[Candidate] = []
    used_pet = [False] * len(pet_components)
    for number, component in enumerate(ct_components):
        refined = refine(component, SOFT_TISSUE_HU)
        if refined is None:
            continue
        if number >= n_thick and not _stands_free(ct, *refined):
            continue
        by = "CT"
        for j, hot_blob in enumerate(pet_components):
            if not used_pet[j] and hot_blob.overlaps(component):
                used_pet[j] = True
                by = "CT+PET"
        mask, at = refined
        candidates.append(_measure(ct, suv, mask, at, side_of(mask, at), by, mtv))
    for j, hot_blob in enumerate(pet_components):
        if used_pet[j] or any(hot_blob.overlaps(c) for c in ct_components):
            continue
        refined = refine(hot_blob, -np.inf)
        if refined is None:
            continue
        mask, at = refined
        candidates.append(_measure(ct, suv, mask, at, side_of(mask, at), "PET", mtv))
    return _not_anatomy_nor_fragments(candidates, lambda c: is_anatomy(ct, c, lungs))
