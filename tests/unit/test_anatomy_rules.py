"""The detector's rules for the airway and for vessels (issue 16), on a phantom chest CT with a
trachea and main bronchi painted in: the central airway is found; a candidate lying along the
trachea (the aortic arch, the great veins, paratracheal tissue) is the mediastinum, not a
finding, while a mass in the lung against the mediastinum is kept; a piece cut from a vessel
(a tube that goes on beyond its widest end) is not a finding, while a round mass of the same
calibre is kept."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from classifier.datasets.phantom import generate_study
from classifier.imaging.airway import MAIN_BRONCHUS, TRACHEA
from classifier.imaging.lesions import (
    TRACHEA_CONTACT_MM,
    Candidate,
    find_candidates,
    is_anatomy,
)
from classifier.imaging.lung_mask import lung_mask
from classifier.imaging.volume import Volume, load_ct_volume

# The trachea: 16 mm wide, in the mediastinum from the top slice down to the carina, where it
# divides into two main bronchi running down and out into the lungs.
TRACHEA_RADIUS_MM = 8.0
CARINA_SLICE = 40
NECK_SLICE = 54
BRONCHUS_END_SLICE = 33


def _mm_grid(ct: Volume) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.indices(ct.shape[1:]).astype(float)
    return rows * ct.spacing[1], cols * ct.spacing[2]


@pytest.fixture(scope="module")
def chest() -> tuple[Volume, tuple[float, float]]:
    """A phantom CT (slice 0 the most caudal) with a trachea and main bronchi, and the
    trachea's centre (row, column) in mm."""
    study = generate_study(5, "A", ct_size=128, ct_slices=60)
    ct = load_ct_volume(study.ct)
    array = ct.array.copy()
    rows, cols = _mm_grid(ct)
    lungs = lung_mask(ct)
    mid = ct.shape[0] // 2
    between = np.flatnonzero(~(lungs.labels[mid] > 0).any(axis=0))
    lung_cols = np.flatnonzero((lungs.labels[mid] > 0).any(axis=0))
    gap = between[(between > lung_cols.min()) & (between < lung_cols.max())]
    centre = (
        float(np.flatnonzero((lungs.labels[mid] > 0).any(axis=1)).mean()) * ct.spacing[1],
        float(gap.mean()) * ct.spacing[2],
    )
    # The neck: the top slices hold no lung (the lungs' apex lies below them).
    body = array[NECK_SLICE:] > -500
    array[NECK_SLICE:][~body & (lungs.labels[NECK_SLICE:] > 0)] = 40
    for s in range(CARINA_SLICE, ct.shape[0]):
        lumen = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= TRACHEA_RADIUS_MM**2
        array[s][lumen] = -1000
    for s in range(BRONCHUS_END_SLICE, CARINA_SLICE):
        out = (CARINA_SLICE - s) * 4.0  # 4 mm out per 5 mm slice
        for side in (-1.0, 1.0):
            c = centre[1] + side * (TRACHEA_RADIUS_MM / 2 + out)
            lumen = (rows - centre[0]) ** 2 + (cols - c) ** 2 <= (0.7 * TRACHEA_RADIUS_MM) ** 2
            array[s][lumen] = -1000
    return ct.with_array(array), centre


def _candidate(ct: Volume, mask: np.ndarray) -> Candidate:
    """A candidate of a full-volume mask, cropped to its box (the rules read its mask, where it
    lies and its long axis)."""
    box = tuple(
        slice(
            int(np.flatnonzero(mask.any(axis=others))[0]),
            1 + int(np.flatnonzero(mask.any(axis=others))[-1]),
        )
        for others in ((1, 2), (0, 2), (0, 1))
    )
    crop = mask[box]
    return Candidate(
        mask=crop,
        mask_origin=(box[0].start, box[1].start, box[2].start),
        key_slice_index=box[0].start + int(np.argmax(crop.sum(axis=(1, 2)))),
        box_rc=(box[1].start, box[2].start, box[1].stop - 1, box[2].stop - 1),
        slice_range=(box[0].start, box[0].stop - 1),
        centroid_mm=(0.0, 0.0, 0.0),
        side="left",
        long_axis_mm=float(max(crop.shape[1], crop.shape[2]) * ct.spacing[1]),
        short_axis_mm=0.0,
        volume_ml=float(crop.sum()) * ct.voxel_volume_ml,
    )


def test_the_trachea_and_main_bronchi_are_found(chest: tuple[Volume, tuple[float, float]]) -> None:
    ct, centre = chest
    airway = lung_mask(ct).airway
    assert airway is not None
    r, c = round(centre[0] / ct.spacing[1]), round(centre[1] / ct.spacing[2])
    for s in range(CARINA_SLICE + 1, ct.shape[0]):
        assert airway[s, r, c] == TRACHEA, s
    below = airway[BRONCHUS_END_SLICE + 1 : CARINA_SLICE - 1]
    assert (below == MAIN_BRONCHUS).any(axis=(1, 2)).all()
    # Two bronchi, one either side of the trachea's centre, and nothing else.
    for plane in below:
        cols = np.flatnonzero((plane == MAIN_BRONCHUS).any(axis=0))
        assert cols.min() < c < cols.max()
    assert not airway[: BRONCHUS_END_SLICE - 1].any()


def test_a_scan_that_starts_below_the_carina_has_no_central_airway(
    chest: tuple[Volume, tuple[float, float]],
) -> None:
    # Its top slices hold large lungs and the main bronchi: no trachea to seed from, and a
    # bronchus taken for the trachea would make its neighbours (hilar masses) "mediastinum".
    ct, _ = chest
    below = replace(ct, array=ct.array[:CARINA_SLICE].copy(), slices=ct.slices[:CARINA_SLICE])
    airway = lung_mask(below).airway
    assert airway is not None and not airway.any()


def test_a_candidate_along_the_trachea_is_the_mediastinum(
    chest: tuple[Volume, tuple[float, float]],
) -> None:
    ct, centre = chest
    rows, cols = _mm_grid(ct)
    # Tissue wrapped around the trachea's left side, on its wall, 15 mm thick, over 50
    # mm of its length (as the aortic arch lies against it).
    distance = np.hypot(rows - centre[0], cols - centre[1])
    shell = (distance > TRACHEA_RADIUS_MM + 1.0) & (distance < TRACHEA_RADIUS_MM + 16.0)
    shell &= cols > centre[1]
    mask = np.zeros(ct.shape, dtype=bool)
    first = CARINA_SLICE + 2
    last = first + int(np.ceil(50.0 / ct.spacing[0]))
    mask[first:last] = shell
    lungs = lung_mask(ct)
    why = is_anatomy(ct, _candidate(ct, mask), lungs)
    assert why is not None and why.startswith("runs along the trachea"), why
    # The same tissue kept 10 mm from the trachea does not run along it.
    apart = (distance > TRACHEA_RADIUS_MM + 10.0) & (distance < TRACHEA_RADIUS_MM + 25.0)
    mask[first:last] = apart & (cols > centre[1])
    why = is_anatomy(ct, _candidate(ct, mask), lungs)
    assert why is None or not why.startswith("runs along the trachea"), why
    assert TRACHEA_CONTACT_MM <= 50.0


def _ball(ct: Volume, centre_mm: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    z, r, c = np.indices(ct.shape).astype(float)
    z, r, c = z * ct.spacing[0], r * ct.spacing[1], c * ct.spacing[2]
    return (z - centre_mm[0]) ** 2 + (r - centre_mm[1]) ** 2 + (
        c - centre_mm[2]
    ) ** 2 <= radius_mm**2


def test_a_mass_against_the_mediastinum_is_kept(chest: tuple[Volume, tuple[float, float]]) -> None:
    ct, centre = chest
    lungs = lung_mask(ct)
    s = 28  # below the bronchi
    left = lungs.labels[s] == 2
    row = int(round(np.flatnonzero(left.any(axis=1)).mean()))
    on_row = np.flatnonzero(left[row])
    towards_middle = -1.0 if on_row.mean() > centre[1] / ct.spacing[2] else 1.0
    medial = on_row.min() if towards_middle < 0 else on_row.max()
    radius = 15.0
    # A 30 mm mass in the left lung whose medial side lies on the mediastinum (2 mm into it).
    c_mm = medial * ct.spacing[2] - towards_middle * (radius - 2.0)
    mass = _ball(ct, (s * ct.spacing[0], row * ct.spacing[1], c_mm), radius)
    assert lungs.region[mass].mean() > 0.8
    array = ct.array.copy()
    array[mass] = 40
    with_mass = ct.with_array(array)
    found = find_candidates(with_mass)
    on_it = [
        c
        for c in found
        if mass[
            c.mask_origin[0] : c.mask_origin[0] + c.mask.shape[0],
            c.mask_origin[1] : c.mask_origin[1] + c.mask.shape[1],
            c.mask_origin[2] : c.mask_origin[2] + c.mask.shape[2],
        ][c.mask].mean()
        > 0.5
    ]
    assert len(on_it) == 1, found
    # It is the whole mass (it may reach MEDIASTINAL_GROWTH_MM into the mediastinum beside it).
    kept = on_it[0]
    box = tuple(slice(o, o + n) for o, n in zip(kept.mask_origin, kept.mask.shape, strict=True))
    assert np.count_nonzero(mass[box] & kept.mask) >= 0.8 * np.count_nonzero(mass)


def test_a_piece_of_a_vessel_is_not_a_finding_but_a_round_mass_of_its_calibre_is(
    chest: tuple[Volume, tuple[float, float]],
) -> None:
    ct, centre = chest
    lungs = lung_mask(ct)
    rows, cols = _mm_grid(ct)
    s_mid = 20
    lung_cols = np.flatnonzero((lungs.labels[s_mid] == 1).any(axis=0))
    c0 = float(lung_cols.mean()) * ct.spacing[2]
    radius = 6.0  # a 12 mm vessel and a 12 mm mass
    array = ct.array.copy()
    vessel = np.zeros(ct.shape, dtype=bool)
    # The vessel runs obliquely through the lung over 60 mm, one pixel in-plane per slice.
    for s in range(s_mid - 6, s_mid + 7):
        vessel[s] = (rows - centre[0]) ** 2 + (
            cols - (c0 + (s - s_mid) * ct.spacing[2])
        ) ** 2 <= radius**2
    array[vessel] = 40
    mass_centre = (s_mid * ct.spacing[0], centre[0] + 45.0, c0)
    mass = _ball(ct, mass_centre, radius)
    array[mass] = 40
    painted = ct.with_array(array)
    # The detector cut a piece of it (its slices 18-21): it goes on beyond either end.
    piece = vessel.copy()
    piece[: s_mid - 2] = False
    piece[s_mid + 2 :] = False
    why = is_anatomy(painted, _candidate(painted, piece), lungs)
    assert why is not None and why.startswith("a piece of a tube"), why
    # The ball's cross-section grows then shrinks: a mass.
    assert is_anatomy(painted, _candidate(painted, mass), lungs) is None
