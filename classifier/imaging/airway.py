"""The central airway on CT: the trachea and the main bronchi, an air tube inside the body
tracked slice by slice from above the lungs' apex down through the carina until each main
bronchus divides or opens into its lung (its lumen joins the lung's air on the slice).

Works on the lung mask's working grid (about 2 mm pixels), each pixel the mean of its block of
CT pixels (a lumen is air, about -1000 HU; aerated lung about -850 HU around it). A
candidate that runs along the trachea is the mediastinum, not a lung lesion (see
classifier.imaging.lesions.TRACHEA_CONTACT_MM).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# A lumen's pixels: the mean of each working-grid block below this (lung parenchyma is denser).
AIRWAY_HU = -900.0
# The trachea's cross-section where it is seeded: a lumen at least 8 mm wide (0.5 cm2; less
# is an oesophagus' air or lung), and an adult trachea is at most about 25 mm wide (about
# 5 cm2): a component of air larger than AIRWAY_MAX_CM2 is lung.
AIRWAY_MIN_CM2 = 0.5
AIRWAY_MAX_CM2 = 8.0
# Once found, a lumen is followed down to this size (narrowed by partial volume on thick
# slices, or a main bronchus seen obliquely).
TRACK_MIN_CM2 = 0.2
# The trachea above the carina lies in the body's midline: its seed within this of the middle
# of the body's extent across the slice.
SEED_MAX_OFFSET_MM = 30.0
# Where the seed is looked for: the slices above the lungs' apex and this far below it, where
# the lungs' cross-section is still at most SEED_MAX_LUNG_FRACTION of their largest (a scan
# that starts below the carina has no trachea to find, and a main bronchus is no seed).
SEED_BELOW_APEX_MM = 30.0
SEED_MAX_LUNG_FRACTION = 0.5
# From one slice to the next a lumen's cross-section overlaps the previous one grown by this
# (a bronchus running obliquely moves in-plane, its lumen at least 8 mm wide).
TRACK_MM = 4.0
# ...and at least this fraction of the lumen's cross-section lies under the last one's.
OVERLAP = 0.5
TRACHEA, MAIN_BRONCHUS = 1, 2  # labels of the airway mask (generation + 1)
# The trachea is generation 0, the main bronchi 1: where a main bronchus divides (the lobar
# bronchi, inside the lung's hilum) the central airway ends.
MAX_GENERATION = 1
# Cross-sections together more than this many times the previous ones have opened into a lung.
MAX_GROWTH = 2.5


def _body_middle(outside: np.ndarray) -> float | None:
    """The column halfway across the body on one slice (what is not outside air), or None."""
    cols = np.flatnonzero((~outside).any(axis=0))
    if cols.size == 0:
        return None
    return (cols[0] + cols[-1]) / 2.0


def block_mean(plane: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """One CT slice on the working grid of `shape`, each pixel the mean of its factor x
    factor block (blocks past the slice's edge from what of them there is)."""
    if factor == 1:
        return plane[: shape[0], : shape[1]].astype(np.float32)
    rows, cols = shape[0] * factor, shape[1] * factor
    padded = np.full((rows, cols), np.nan, dtype=np.float32)
    r, c = min(rows, plane.shape[0]), min(cols, plane.shape[1])
    padded[:r, :c] = plane[:r, :c]
    blocks = padded.reshape(shape[0], factor, shape[1], factor)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(np.nanmean(blocks, axis=(1, 3)), nan=0.0)


def central_airway(
    ct: np.ndarray,
    factor: int,
    outside: np.ndarray,
    lungs: np.ndarray,
    spacing: tuple[float, float, float],
    caudal_first: bool,
) -> np.ndarray:
    """The trachea (TRACHEA) and main bronchi (MAIN_BRONCHUS) as labels on the working grid
    (0 elsewhere, all 0 when no tube is found): `ct` the CT's HU array, `factor` the working
    grid's subsampling, `outside` the air around the body per slice and `lungs` the two lungs
    (any label) on the working grid; `caudal_first` whether slice 0 is the most caudal."""
    out = np.zeros(outside.shape, dtype=np.uint8)
    n = outside.shape[0]
    if n == 0:
        return out
    pixel_cm2 = spacing[1] * spacing[2] / 100.0
    smallest = AIRWAY_MIN_CM2 / pixel_cm2
    largest = AIRWAY_MAX_CM2 / pixel_cm2
    narrowest = TRACK_MIN_CM2 / pixel_cm2
    cranial_to_caudal = list(range(n - 1, -1, -1) if caudal_first else range(n))
    lung_area = np.count_nonzero(lungs, axis=(1, 2)) * pixel_cm2
    on = [k for k, s in enumerate(cranial_to_caudal) if lung_area[s] >= 2.0]
    apex = on[0] if on else 0
    last_seed = min(n - 1, apex + int(np.ceil(SEED_BELOW_APEX_MM / max(spacing[0], 1e-3))))
    reach = max(1, round(TRACK_MM / min(spacing[1:])))
    disk = _disk(reach)
    # The lumens on the last slice, labelled 1..n, and each one's generation: the trachea 0,
    # a main bronchus 1 (the carina splits the trachea in two), a lobar bronchus 2.
    current: np.ndarray | None = None
    generation = np.zeros(1, dtype=np.int64)
    for k, s in enumerate(cranial_to_caudal):
        if current is None and k > last_seed:
            break
        air = (block_mean(ct[s], factor, outside.shape[1:]) < AIRWAY_HU) & ~outside[s]
        labels, count = ndimage.label(air)
        if count == 0:
            if current is not None:
                break
            continue
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        if current is None:
            if lung_area[s] > SEED_MAX_LUNG_FRACTION * lung_area.max():
                continue
            seed = _seed(labels, areas, outside[s], smallest, largest, spacing[2])
            if seed is None:
                continue
            current = (labels == seed).astype(np.int32)
            generation = np.zeros(2, dtype=np.int64)
        else:
            # Each pixel near a lumen of the last slice (within TRACK_MM) carries its label.
            grown = ndimage.grey_dilation(current, footprint=disk)
            previous = np.count_nonzero(current)
            # A lumen that goes on lies mostly under the last one; air of the lung beside it
            # only touches that at its edge.
            under = np.bincount(labels[grown > 0], minlength=count + 1)
            keep = [
                int(t)
                for t in np.flatnonzero(under)
                if t > 0 and narrowest <= areas[t] <= largest and under[t] >= OVERLAP * areas[t]
            ]
            if not keep or areas[keep].sum() > MAX_GROWTH * max(float(previous), smallest):
                break
            parent = {
                t: int(np.argmax(np.bincount(grown[labels == t], minlength=generation.size)[1:]))
                + 1
                for t in keep
            }
            children = np.bincount(list(parent.values()), minlength=generation.size)
            born = {t: int(generation[parent[t]] + (children[parent[t]] > 1)) for t in keep}
            keep = [t for t in keep if born[t] <= MAX_GENERATION]
            if not keep:
                break
            current = np.zeros(labels.shape, dtype=np.int32)
            for n, t in enumerate(keep, start=1):
                current[labels == t] = n
            generation = np.array([0] + [born[t] for t in keep], dtype=np.int64)
        out[s] = np.where(current > 0, generation[current] + 1, 0)
    return out


def _seed(
    labels: np.ndarray,
    areas: np.ndarray,
    outside: np.ndarray,
    smallest: float,
    largest: float,
    column_mm: float,
) -> int | None:
    """The label of the trachea on a slice above the carina: the largest component of inside
    air of a tube's cross-section whose centre lies near the body's middle, or None."""
    middle = _body_middle(outside)
    if middle is None:
        return None
    best, best_area = None, 0.0
    for label in np.flatnonzero((areas >= smallest) & (areas <= largest)):
        if label == 0:
            continue
        cols = np.nonzero(labels == label)[1]
        if abs(cols.mean() - middle) * column_mm > SEED_MAX_OFFSET_MM:
            continue
        if areas[label] > best_area:
            best, best_area = int(label), float(areas[label])
    return best


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y) <= radius * radius
