"""The detector's anatomy rules of issue 16 on synthetic masks (working grid, 5 mm slices and
2 mm pixels): a mass is cut from the vessels joined to it, of a vessel tree only parts thicker
than a hilar vessel are masses, a stub at a mass's edge is no finding, nothing above the
lungs' apex; a thin mass hanging in the lung is not a vessel confluence; and the
leave-one-patient-out choice of the real-CT protocol."""

from __future__ import annotations

import numpy as np

from classifier.imaging.lesions import (
    MASS_REGROW_MM,
    Candidate,
    _below_apex,
    _Blob,
    _mass_parts,
    _not_anatomy_nor_fragments,
    _without_edge_fragments,
    _without_touching_fragments,
)

SPACING = (5.0, 2.0, 2.0)
SHAPE = (30, 120, 160)


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, r, c = np.indices(SHAPE).astype(float)
    return z * SPACING[0], r * SPACING[1], c * SPACING[2]


def _ball(centre_mm: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    z, r, c = _grid()
    return (z - centre_mm[0]) ** 2 + (r - centre_mm[1]) ** 2 + (c - centre_mm[2]) ** 2 <= (
        radius_mm**2
    )


def _tube(row_mm: float, z_mm: float, c0_mm: float, c1_mm: float, radius_mm: float) -> np.ndarray:
    """A vessel along the columns from c0 to c1 (mm)."""
    z, r, c = _grid()
    return ((z - z_mm) ** 2 + (r - row_mm) ** 2 <= radius_mm**2) & (c >= c0_mm) & (c <= c1_mm)


def _blob(mask: np.ndarray) -> _Blob:
    return _Blob((slice(0, SHAPE[0]), slice(0, SHAPE[1]), slice(0, SHAPE[2])), mask)


def _columns_mm(blob: _Blob) -> tuple[float, float]:
    cols = np.flatnonzero(blob.mask.any(axis=(0, 1))) + blob.box[2].start
    return float(cols.min() * SPACING[2]), float(cols.max() * SPACING[2])


def test_a_mass_is_cut_from_the_vessel_joined_to_it() -> None:
    mass = _ball((75.0, 120.0, 100.0), 30.0)  # 60 mm across
    vessel = _tube(120.0, 75.0, 100.0, 300.0, 4.0)  # 8 mm thick, 170 mm beyond the mass
    parts = _mass_parts(_blob(mass | vessel), SPACING, 14.0)
    assert len(parts) == 1
    lo, hi = _columns_mm(parts[0])
    assert lo <= 72.0 and hi <= 130.0 + MASS_REGROW_MM + 2 * SPACING[2], (lo, hi)
    # Without the cut the component reached the image's last column.
    assert _columns_mm(_blob(mass | vessel))[1] >= 300.0


def test_of_a_vessel_tree_only_parts_thicker_than_a_hilar_vessel_are_masses() -> None:
    mass = _ball((75.0, 120.0, 70.0), 24.0)  # a 48 mm mass
    confluence = _ball((75.0, 120.0, 220.0), 11.0)  # a 22 mm vessel confluence
    branch = _tube(120.0, 75.0, 70.0, 220.0, 3.0)
    parts = _mass_parts(_blob(mass | confluence | branch), SPACING, 14.0)
    assert len(parts) == 1
    lo, hi = _columns_mm(parts[0])
    assert hi < 150.0, (lo, hi)  # the mass, not the confluence
    # Two confluences joined by a branch and no mass: no finding at all.
    other = _ball((75.0, 120.0, 70.0), 11.0)
    assert _mass_parts(_blob(other | confluence | branch), SPACING, 14.0) == []


def test_a_small_nodule_is_kept_whole() -> None:
    nodule = _ball((75.0, 120.0, 100.0), 5.0)
    blob = _blob(nodule)
    assert _mass_parts(blob, SPACING, 14.0) == [blob]


def test_a_stub_at_a_mass_edge_is_no_finding_but_a_free_nodule_is() -> None:
    mass = _blob(_ball((75.0, 120.0, 100.0), 30.0))
    stub = _blob(_tube(120.0, 75.0, 131.0, 150.0, 4.0))
    free = _blob(_ball((75.0, 40.0, 260.0), 6.0))
    kept = _without_edge_fragments([stub, mass, free])
    assert kept == [mass, free]


def _candidate(mask: np.ndarray) -> Candidate:
    """A candidate on the full grid (this file's SHAPE and SPACING), cropped to its box."""
    z, r, c = (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    crop = mask[z[0] : z[-1] + 1, r[0] : r[-1] + 1, c[0] : c[-1] + 1]
    return Candidate(
        mask=crop,
        mask_origin=(int(z[0]), int(r[0]), int(c[0])),
        key_slice_index=int(z[0]),
        box_rc=(int(r[0]), int(c[0]), int(r[-1]), int(c[-1])),
        slice_range=(int(z[0]), int(z[-1])),
        centroid_mm=(0.0, 0.0, 0.0),
        side="right",
        long_axis_mm=0.0,
        short_axis_mm=0.0,
        volume_ml=float(np.count_nonzero(mask)) * float(np.prod(SPACING)) / 1000.0,
    )


def test_a_piece_touching_a_mass_at_full_resolution_is_no_finding() -> None:
    mass = _ball((75.0, 120.0, 100.0), 30.0)
    # A wedge of collapse against the mass's edge (its own component on the working grid,
    # joined to the mass by the refinement): part of it; the same wedge 4 mm away is not.
    wedge = _ball((75.0, 120.0, 140.0), 12.0) & ~mass
    apart = _ball((75.0, 120.0, 146.0), 12.0) & ~_ball((75.0, 120.0, 100.0), 34.0)
    big, touching, away = _candidate(mass), _candidate(wedge), _candidate(apart)
    assert _without_touching_fragments([touching, big]) == [big]
    assert _without_touching_fragments([away, big]) == [away, big]
    # Two touching masses of like size are two findings.
    twin = _candidate(_ball((75.0, 120.0, 160.0), 30.0) & ~mass)
    assert _without_touching_fragments([big, twin]) == [big, twin]


def test_a_piece_touching_anatomy_is_judged_after_the_anatomy_is_dropped() -> None:
    # The larger piece is anatomy (the heart, an organ's dome): the smaller one touching it is
    # not its fragment and stays a candidate; beside a lesion it is the lesion's fragment.
    heart = _candidate(_ball((75.0, 120.0, 100.0), 30.0))
    piece = _candidate(_ball((75.0, 120.0, 140.0), 12.0) & ~_ball((75.0, 120.0, 100.0), 30.0))
    anatomy = {id(heart): "continues below the lung"}
    assert _not_anatomy_nor_fragments([piece, heart], lambda c: anatomy.get(id(c))) == [piece]
    assert _not_anatomy_nor_fragments([piece, heart], lambda c: None) == [heart]


def test_nothing_above_the_apex() -> None:
    column = np.zeros(SHAPE, dtype=bool)
    column[:, 50:60, 50:60] = True
    (cut,) = _below_apex([_blob(column)], apex=12, caudal_first=True)
    assert (cut.box[0].start, cut.box[0].stop) == (0, 13)
    (cut,) = _below_apex([_blob(column)], apex=12, caudal_first=False)
    assert (cut.box[0].start, cut.box[0].stop) == (12, SHAPE[0])
    above = np.zeros(SHAPE, dtype=bool)
    above[20:25, 50:60, 50:60] = True
    assert _below_apex([_blob(above)], apex=12, caudal_first=True) == []


def _across_rows(
    col_mm: float, z_mm: float, r0_mm: float, r1_mm: float, radius_mm: float
) -> np.ndarray:
    """A vessel along the rows from r0 to r1 (mm)."""
    z, r, c = _grid()
    return ((z - z_mm) ** 2 + (c - col_mm) ** 2 <= radius_mm**2) & (r >= r0_mm) & (r <= r1_mm)


def _hilar_tree() -> np.ndarray:
    """A vessel confluence (22 mm) with tubes going on on three sides, one of them leading to
    a 24 mm ball: both thinner than a 14 mm ball, as a thin mass on 5 mm slices."""
    confluence = _ball((75.0, 120.0, 70.0), 11.0)
    tubes = (
        _tube(120.0, 75.0, 70.0, 210.0, 3.0)
        | _across_rows(70.0, 75.0, 0.0, 240.0, 3.0)  # a vessel going on on both sides
    )
    mass = _ball((75.0, 120.0, 230.0), 12.0)
    return confluence | tubes | mass


def test_a_thin_mass_hanging_in_aerated_lung_is_kept_a_vessel_confluence_is_not() -> None:
    component = _hilar_tree()  # the only soft tissue: aerated lung all around it
    parts = _mass_parts(_blob(component), SPACING, 14.0, component)
    assert len(parts) == 1
    lo, hi = _columns_mm(parts[0])
    assert lo > 150.0, (lo, hi)  # the ball at the branch's end, not the confluence
    # Without the air around it (the stump of a vessel at the mediastinum) it is no mass.
    mediastinum = component | _ball((75.0, 120.0, 230.0), 30.0)
    assert _mass_parts(_blob(component), SPACING, 14.0, mediastinum) == []
    # Nor when soft tissue goes on beyond its ends (a vessel crossing the slices).
    _, r, c = _grid()
    column = (r - 120.0) ** 2 + (c - 230.0) ** 2 <= 8.0**2
    assert _mass_parts(_blob(component), SPACING, 14.0, component | column) == []
    # With no CT to look at (`tissue` None) the thin parts are vessels, as before.
    assert _mass_parts(_blob(component), SPACING, 14.0) == []


def _wedge(
    centre_mm: tuple[float, float, float],
    radius_mm: float,
    beyond_mm: float,
    half_angle_deg: float = 16.0,
) -> np.ndarray:
    """A cone of collapse along the columns, its apex inside a mass of `radius_mm` at
    `centre_mm`, reaching `beyond_mm` past the mass: it narrows to the tumour and widens away
    from it."""
    z, r, c = _grid()
    along = c - centre_mm[2]
    across = np.sqrt((z - centre_mm[0]) ** 2 + (r - centre_mm[1]) ** 2)
    return (
        (along > 0.3 * radius_mm)
        & (along <= radius_mm + beyond_mm)
        & (across <= along * np.tan(np.deg2rad(half_angle_deg)))
    )


def test_a_wedge_of_collapse_hanging_on_a_mass_is_not_the_mass() -> None:
    mass = _ball((75.0, 120.0, 100.0), 17.0)  # 34 mm, its far edge at column 117 mm
    component = mass | _wedge((75.0, 120.0, 100.0), 17.0, 30.0)
    # Without the CT to look at (the opening cut the wedge off, the regrowth joined it back).
    (whole,) = _mass_parts(_blob(component), SPACING, 14.0)
    assert _columns_mm(whole)[1] >= 140.0
    # In aerated lung the wedge hangs on the mass: the mass alone.
    (mass_only,) = _mass_parts(_blob(component), SPACING, 14.0, component)
    assert _columns_mm(mass_only)[1] <= 117.0 + MASS_REGROW_MM, _columns_mm(mass_only)
    # A part running into soft tissue (a vessel into the mediastinum) does not hang: it stays.
    _, _, c = _grid()
    wall = component | (c >= 124.0)
    (kept,) = _mass_parts(_blob(component), SPACING, 14.0, wall)
    assert _columns_mm(kept)[1] >= 140.0


def test_a_wedge_joined_by_a_neck_the_opening_passes_is_not_the_mass() -> None:
    mass = _ball((75.0, 120.0, 100.0), 17.0)  # 34 mm, its far edge at column 117 mm
    # A wider cone (20 degrees): the opening's balls (8.5 mm) in it reach back through its
    # neck to the mass, so the opened component stays one piece; the balls' centres (the
    # cores) in the mass and in the wedge are apart: the neck is narrower than the ball.
    component = mass | _wedge((75.0, 120.0, 100.0), 17.0, 30.0, half_angle_deg=20.0)
    (whole,) = _mass_parts(_blob(component), SPACING, 14.0)
    assert _columns_mm(whole)[1] >= 140.0
    (mass_only,) = _mass_parts(_blob(component), SPACING, 14.0, component)
    assert _columns_mm(mass_only)[1] <= 117.0 + MASS_REGROW_MM, _columns_mm(mass_only)
