"""Lesion measurement geometry and candidate detection on a phantom."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from classifier.datasets.phantom import generate_study
from classifier.imaging.lesions import MIN_DIAMETER_MM, Candidate, feret_axes, find_candidates
from classifier.imaging.lung_mask import IN_PLANE, lung_mask
from classifier.imaging.resample import resample_to
from classifier.imaging.suv import load_pet_suv_volume
from classifier.imaging.volume import Volume, load_ct_volume


def test_feret_of_a_rectangle() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:20, 5:35] = True  # 10 x 30 pixels of 0.5 x 1.0 mm -> 5 x 30 mm
    long_axis, short_axis = feret_axes(mask, (0.5, 1.0))
    assert long_axis == pytest.approx(np.hypot(5.0, 30.0), rel=1e-6)
    assert 4.0 < short_axis < 6.5


def test_phantom_lesion_found_and_merged_with_pet() -> None:
    study = generate_study(5, "G", ct_size=128, ct_slices=40, pet=True)
    ct = load_ct_volume(study.ct)
    suv = resample_to(load_pet_suv_volume(study.pet), ct)
    found = find_candidates(ct, suv)
    truth = study.lesions[0]
    assert found
    best = min(found, key=lambda c: np.linalg.norm(np.subtract(c.centroid_mm, truth.center_mm)))
    assert np.linalg.norm(np.subtract(best.centroid_mm, truth.center_mm)) < truth.radius_mm
    assert best.detected_by == "CT+PET"
    assert best.long_axis_mm == pytest.approx(2 * truth.radius_mm, rel=0.5)
    assert best.suv_max is not None and best.mtv_ml is not None and best.tlg is not None
    assert best.side == ("left" if truth.center_mm[0] > 0 else "right") or best.side == "central"


def _insert_sphere(
    array: np.ndarray, spacing: tuple[float, ...], centre: tuple[int, int, int], d_mm: float
) -> None:
    """A solid sphere (40 HU) of diameter d_mm, with the partial volume of each voxel (its
    slab along z and its area in plane sampled 5 x 5 x 5), blended into the CT."""
    sz, sr, sc = spacing
    s, r, c = centre
    reach = [int(np.ceil(d_mm / 2 / step)) + 1 for step in spacing]
    sub = (np.arange(5) - 2) / 5.0
    for ds in range(-reach[0], reach[0] + 1):
        zz = (ds + sub)[:, None, None, None, None, None] * sz
        rr = (np.arange(-reach[1], reach[1] + 1)[:, None] + sub)[None, None, :, :, None, None] * sr
        cc = (np.arange(-reach[2], reach[2] + 1)[:, None] + sub)[None, None, None, None, :, :] * sc
        inside = zz**2 + rr**2 + cc**2 <= (d_mm / 2) ** 2
        occ = inside.mean(axis=(0, 1, 3, 5))
        window = (
            s + ds,
            slice(r - reach[1], r + reach[1] + 1),
            slice(c - reach[2], c + reach[2] + 1),
        )
        array[window] = occ * 40.0 + (1 - occ) * array[window]


def test_small_solid_nodules_5_to_8_mm_are_proposed_and_phantom_vessels_are_not() -> None:
    """With small_nodules, free-standing solid nodules of 5, 6, 7 and 8 mm in the lung of a
    1.25-mm phantom are proposed (the 8 mm thickness rule alone loses all of them), and the
    phantom's lung vessels are not."""
    study = generate_study(11, "A", ct_size=256, ct_slices=96, slice_thickness_mm=1.25, pet=False)
    ct = load_ct_volume(study.ct)
    array = ct.array.astype(np.float32).copy()
    mid = ct.shape[0] // 2
    # Four points deep in the lungs, away from the planted lesion and the phantom's vessels.
    lesion_centre = np.array(study.lesions[0].center_mm)
    lungs = lung_mask(ct)
    assert lungs.factor == 1  # 1.37 mm pixels: the working grid is the CT grid
    lung = lungs.labels > 0
    picks: list[tuple[int, int, int]] = []
    rng = np.random.default_rng(0)
    deep = np.argwhere(
        ndimage.binary_erosion(lung[mid - 12 : mid + 12], structure=IN_PLANE, iterations=10)[
            ::6, ::4, ::4
        ]
    )
    for s, r, c in rng.permutation(deep):
        point = (mid - 12 + int(s) * 6, int(r) * 4, int(c) * 4)
        xyz = ct.index_to_patient(np.array(point, dtype=float))
        if np.linalg.norm(xyz - lesion_centre) < 40 or any(
            np.linalg.norm(np.subtract(point, p) * np.array(ct.spacing)) < 30 for p in picks
        ):
            continue
        picks.append(point)
        if len(picks) == 4:
            break
    assert len(picks) == 4
    sizes = (5.0, 6.0, 7.0, 8.0)
    for point, d in zip(picks, sizes, strict=True):
        _insert_sphere(array, ct.spacing, point, d)
    with_nodules = ct.with_array(array)

    def near(c: Candidate, point: tuple[int, int, int]) -> bool:
        return bool(
            np.linalg.norm(
                np.subtract(c.centroid_mm, ct.index_to_patient(np.array(point, dtype=float)))
            )
            < 5.0
        )

    default = find_candidates(with_nodules)
    assert not any(near(c, p) for c in default for p in picks)
    found = find_candidates(with_nodules, small_nodules=True)
    for point, d in zip(picks, sizes, strict=True):
        hits = [c for c in found if near(c, point)]
        assert len(hits) == 1, f"{d} mm nodule at {point}: {len(hits)} candidates"
        assert hits[0].long_axis_mm == pytest.approx(d, abs=2.5)
    others = [
        c
        for c in found
        if not any(near(c, p) for p in picks)
        and np.linalg.norm(np.subtract(c.centroid_mm, lesion_centre)) > study.lesions[0].radius_mm
    ]
    assert not [c for c in others if c.long_axis_mm < MIN_DIAMETER_MM], others


def _candidate_of(mask: np.ndarray) -> Candidate:
    """A Candidate holding only a mask (the dome rule reads nothing else)."""
    return Candidate(
        mask=mask,
        mask_origin=(0, 0, 0),
        key_slice_index=0,
        box_rc=(0, 0, 0, 0),
        slice_range=(0, mask.shape[0] - 1),
        centroid_mm=(0.0, 0.0, 0.0),
        side="right",
        long_axis_mm=0.0,
        short_axis_mm=0.0,
        volume_ml=0.0,
    )


def test_a_convex_mass_on_the_diaphragm_is_not_an_organ_dome() -> None:
    # A ball narrows to its base and its top: a mass resting on the dome, kept. A dome (a
    # half ball standing on its flat face, as the liver rises into the lung's region) widens
    # downwards, and a column widening upwards from a narrow base (the heart's border under
    # the lung) is widest at its top: both stay "continues below the lung". A ball cut flat
    # at its base (a mass against the dome) still grows from its base and narrows to its top.
    from classifier.imaging.lesions import _narrows_to_base

    z, r, c = np.ogrid[-10:11, -10:11, -10:11]
    ball = z**2 + r**2 + c**2 <= 100
    dome = ball[10:]
    flat_base = ball[5:]  # its lowest slice holds 75 % of its widest
    for caudal_first in (True, False):  # mask index 0 its lowest slice, or its highest

        def kept(mask: np.ndarray, first: bool = caudal_first) -> bool:
            return _narrows_to_base(_candidate_of(mask if first else mask[::-1]), first)

        assert kept(ball)
        assert kept(flat_base)
        assert not kept(dome)  # widest on its lowest slice
        assert not kept(dome[::-1])  # narrow base, widest on its top
        assert not kept(flat_base[::-1])  # cut flat at its top: widest there


def _feet_first(ct: Volume) -> Volume:
    """The same CT stored cranial slice first, its normal towards the feet (as feet-first
    scans often are)."""
    last = ct.index_to_patient(np.array([[ct.shape[0] - 1.0, 0.0, 0.0]]))[0]
    direction = ct.direction.copy()
    direction[:, 2] = -direction[:, 2]
    return replace(
        ct,
        array=ct.array[::-1].copy(),
        origin=np.asarray(last),
        direction=direction,
        slices=tuple(reversed(ct.slices)),
    )


def test_below_the_lung_is_the_patients_below_whatever_the_slice_order() -> None:
    # A block with soft tissue under it and air over it (in the patient): "rises from below"
    # must read the tissue under it, also where slice 0 is the most cranial slice.
    from classifier.imaging.lesions import _rises_from_below

    study = generate_study(5, "A", ct_size=128, ct_slices=60)
    ct = load_ct_volume(study.ct)
    assert ct.index_to_patient(np.array([[1.0, 0, 0]]))[0, 2] > ct.origin[2]  # caudal first
    s0, r, c = 20, 60, 60  # the mediastinum, outside the lung region
    ct.array[s0 - 1, r : r + 6, c : c + 6] = 40  # soft tissue under the block
    ct.array[s0 + 4, r : r + 6, c : c + 6] = -1000  # air over it
    block = np.ones((4, 6, 6), dtype=bool)
    lungs = lung_mask(ct)
    assert not lungs.region[s0 - 1, r // lungs.factor, c // lungs.factor]
    caudal = _rises_from_below(ct, replace(_candidate_of(block), mask_origin=(s0, r, c)), lungs)
    assert caudal == 1.0

    flipped = _feet_first(ct)
    mirrored = replace(_candidate_of(block), mask_origin=(ct.shape[0] - s0 - 4, r, c))
    assert _rises_from_below(flipped, mirrored, lung_mask(flipped)) == 1.0


def test_the_lung_base_is_interpolated_under_a_mass_on_the_dome_not_under_the_heart() -> None:
    # A lung whose base is a smooth dome (the diaphragm), raised 50 mm over a 40 mm disc in its
    # lateral half (a mass resting on the dome replaced the lung above it) and over one in its
    # medial half (the heart under the lung's edge): only the mass's notch is filled, to the
    # dome's height, and the dome itself is left as it is.
    from classifier.imaging.lung_mask import _interpolated_base

    spacing = (5.0, 2.0, 2.0)
    rows, cols = np.ogrid[0:120, 0:120]
    footprint = np.hypot(rows - 60, cols - 60) <= 50
    dome_mm = 40.0 * (1.0 - np.hypot((rows - 60) * 2.0, (cols - 60) * 2.0) ** 2 / 100.0**2)
    lowest_mm = dome_mm.copy()
    mass = np.hypot(rows - 60, cols - 30) <= 10
    heart = np.hypot(rows - 60, cols - 90) <= 10
    lowest_mm[mass | heart] += 50.0
    lowest = np.rint(lowest_mm / spacing[0])
    order = list(range(40))
    own = np.stack([footprint & (lowest <= s) for s in order])
    # The medial side is towards higher columns (towards_high).
    base = _interpolated_base(own, order, spacing, True)
    filled = np.isfinite(base)
    assert filled[mass].mean() > 0.5
    assert not filled[heart].any()
    assert not filled[~mass].any()
    dome = np.rint(dome_mm / spacing[0])
    assert np.all(np.abs(base[filled] - dome[filled]) <= 2.0)  # within 10 mm of the dome


def test_the_rib_cage_is_a_closed_ring_across_a_gap_without_bone() -> None:
    # A ring of bone 40 pixels from the lung's centre with a 40-degree gap (costal cartilage)
    # inside a body of radius 60: the rays through the gap meet no bone before leaving the
    # body, and get the ring's radius from the rays either side instead of none (which left
    # the gap's whole sector out of the chest cavity).
    from classifier.imaging.lung_mask import _RAYS, _rib_radii

    rows, cols = np.ogrid[0:160, 0:160]
    distance = np.hypot(rows - 80, cols - 80)
    angle = np.degrees(np.arctan2(rows - 80, cols - 80)) % 360
    bone = (np.abs(distance - 40) <= 1.5) & ~((angle > 70) & (angle < 110))
    outside = distance > 60
    radii = _rib_radii(bone, outside, (80.0, 80.0), (1.0, 1.0))
    gap = np.arange(_RAYS) * 360.0 / _RAYS
    through = (gap > 75) & (gap < 105)
    assert np.all(np.isfinite(radii))
    assert np.all(np.abs(radii[through] - 39.0) <= 2.0)
    assert np.all(np.abs(radii - 39.0) <= 2.0)
    # No bone at all: nothing known, no radius anywhere.
    assert np.all(np.isnan(_rib_radii(np.zeros_like(bone), outside, (80.0, 80.0), (1.0, 1.0))))
    # An arc without bone wider than a quarter of the ring (a field of view, or a drawn chest,
    # with no ribs there) is not a gap of the cage: it stays without a radius.
    open_arc = (np.abs(distance - 40) <= 1.5) & ~((angle > 30) & (angle < 150))
    radii = _rib_radii(open_arc, outside, (80.0, 80.0), (1.0, 1.0))
    assert np.all(np.isnan(radii[(gap > 40) & (gap < 140)]))
    assert np.all(np.abs(radii[(gap < 20) | (gap > 160)] - 39.0) <= 2.0)


def test_a_row_without_lung_between_rows_with_lung_takes_the_border_between_them() -> None:
    # A left lung (medial towards lower columns) whose rows 10-19 hold no lung on this slice (a
    # mass replaced it) between rows whose medial border is at columns 40 and 44; the slices
    # below hold on those rows only the lateral recess (border 70): the border there runs
    # between 40 and 44. A row above the lung's first row keeps what the slices below say.
    from classifier.imaging.lung_mask import _across_gaps

    own = np.full(30, np.nan)
    own[2:10] = 40.0
    own[20:28] = 44.0
    below = np.where(np.isnan(own), 70.0, own)
    border = _across_gaps(below, own, towards_high=False)
    assert np.allclose(border[10:20], np.interp(np.arange(10, 20), [9, 20], [40.0, 44.0]))
    assert border[0] == 70.0 and border[29] == 70.0
    assert np.array_equal(border[2:10], own[2:10])
    # A border from below that is more medial than the line stays.
    assert _across_gaps(np.where(np.isnan(own), 30.0, own), own, False)[15] == 30.0


def test_a_mass_grown_into_the_cavity_keeps_its_massive_slices_in_the_lung_not_vessels() -> None:
    # A mass on 8 mm slices: its middle (slices 4-6) is cavity tissue outside the lung region,
    # its top and bottom slices (3 and 7) lie in the lung region (the seed, 24 mm across), a
    # vessel goes on from its top for four slices and a thin strand leaves its bottom slice
    # over the cavity part. The candidate is mostly cavity: of the seed it keeps the mass's
    # own slices (massive, one slice from the cavity part), not the vessel or the strand.
    from classifier.imaging.lesions import _Blob, _grow_in_cavity

    rows, cols = np.ogrid[0:40, 0:40]
    disc = np.hypot(rows - 20, cols - 20)
    cavity = np.zeros((12, 40, 40), dtype=np.int32)
    cavity[4:7][:, disc <= 10] = 1
    seed = np.zeros((12, 40, 40), dtype=bool)
    seed[[3, 7]] = disc <= 6
    seed[8:12] = disc <= 2
    seed[3, 20:22, 26:30] = True
    box = ndimage.find_objects(seed.astype(np.int32))[0]
    grown = _grow_in_cavity(
        _Blob(box, seed[box]), cavity, ndimage.find_objects(cavity), (8.0, 2.0, 2.0)
    )
    mask = np.zeros(seed.shape, dtype=bool)
    mask[grown.box] = grown.mask
    assert mask[4:7][:, disc <= 10].all()
    assert mask[[3, 7]][:, disc <= 5].all()
    assert not mask[8:].any()
    assert not mask[3, 20:22, 28:30].any()
