"""Tumour insertion for the stress test (classifier.datasets.insertion) on a drawn chest whose
walls are known: size, shape, position against each wall, never into bone or outside the body,
HU, partial volume, the collapse wedge, the keep-out margin, and seeding."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.datasets import insertion
from classifier.datasets.insertion import InsertedTumour, TumourSpec, insert, place, study_anatomy
from classifier.imaging.volume import Volume

SPACING = (5.0, 1.75, 1.75)
SHAPE = (48, 200, 200)
LUNG_CENTRE = {"right": -75.0, "left": 75.0}  # patient x; LPS: the right lung at -x
LUNG_SEMI = (55.0, 80.0, 95.0)  # x, y, z semi-axes (mm)
SPINE = (0.0, 80.0, 17.0)  # x, y, radius (mm)


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = (np.arange(SHAPE[0]) - SHAPE[0] / 2 + 0.5) * SPACING[0]
    y = (np.arange(SHAPE[1]) - SHAPE[1] / 2 + 0.5) * SPACING[1]
    x = (np.arange(SHAPE[2]) - SHAPE[2] / 2 + 0.5) * SPACING[2]
    return np.meshgrid(z, y, x, indexing="ij")


def _in_lung(side: str, point: np.ndarray) -> bool:
    x, y, z = point
    semi_x, semi_y, semi_z = LUNG_SEMI
    return bool(
        ((x - LUNG_CENTRE[side]) / semi_x) ** 2 + (y / semi_y) ** 2 + (z / semi_z) ** 2 <= 1.0
    )


def _chest() -> tuple[Volume, dict[str, np.ndarray]]:
    """A chest: body (soft tissue), two ellipsoid lungs that end inside the scan (apex and
    base), a spine of bone behind them; and its tissue masks."""
    z, y, x = _grid()
    body = (x / 150.0) ** 2 + ((y - 5.0) / 110.0) ** 2 <= 1.0
    lungs = {
        side: ((x - cx) / LUNG_SEMI[0]) ** 2 + (y / LUNG_SEMI[1]) ** 2 + (z / LUNG_SEMI[2]) ** 2
        <= 1.0
        for side, cx in LUNG_CENTRE.items()
    }
    bone = (x - SPINE[0]) ** 2 + (y - SPINE[1]) ** 2 <= SPINE[2] ** 2
    rng = np.random.default_rng(3)
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, SHAPE)
    lung = lungs["right"] | lungs["left"]
    hu[lung] = -850.0 + rng.normal(0, 30, int(lung.sum()))
    hu[bone] = 700.0
    origin = np.array([-SHAPE[2] / 2 + 0.5, -SHAPE[1] / 2 + 0.5, 0.0]) * SPACING[2]
    origin[2] = (-SHAPE[0] / 2 + 0.5) * SPACING[0]
    volume = Volume(
        array=np.rint(hu).astype(np.int16),
        origin=origin,
        spacing=SPACING,
        direction=np.eye(3),
        frame_of_reference_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        modality="CT",
        slices=(),
    )
    return volume, {"body": body, "bone": bone, "lung": lung, **lungs}


@pytest.fixture(scope="module")
def chest() -> tuple[Volume, dict[str, np.ndarray], insertion.StudyAnatomy]:
    ct, masks = _chest()
    return ct, masks, study_anatomy(ct)


def _inserted(
    chest: tuple[Volume, dict[str, np.ndarray], insertion.StudyAnatomy],
    spec: TumourSpec,
    seed: int = 0,
) -> tuple[Volume, InsertedTumour, np.ndarray]:
    """A copy of the chest with the tumour in it, the tumour, and its mask on the full grid."""
    ct, _, anatomy = chest
    copy = ct.with_array(ct.array.copy())
    rng = np.random.default_rng(seed)
    placement = place(copy, anatomy, spec, rng)
    assert placement is not None, spec
    tumour = insert(copy, anatomy, placement, rng)
    full = np.zeros(ct.shape, dtype=bool)
    full[tumour.window()] = tumour.mask
    return copy, tumour, full


@pytest.mark.parametrize("position", insertion.POSITIONS)
def test_a_tumour_lies_against_its_wall_replacing_lung_only(
    chest: tuple[Volume, dict[str, np.ndarray], insertion.StudyAnatomy], position: str
) -> None:
    ct, masks, _ = chest
    spec = TumourSpec(position, "right", 40.0, "lobulated", collapse=False)
    modified, tumour, full = _inserted(chest, spec)
    # Size: the drawn 40 mm sphere with bulges, cut where it meets the wall.
    assert 0.6 * 40.0 <= tumour.long_axis_mm <= 1.7 * 40.0, tumour.long_axis_mm
    assert 5.0 <= tumour.measured.volume_ml <= 80.0, tumour.measured.volume_ml
    # Replaces lung, never bone or anything outside the body; the right lung only.
    assert not (full & masks["bone"]).any()
    assert not (full & ~masks["body"]).any()
    assert not (full & masks["left"]).any()
    assert np.count_nonzero(full & masks["right"]) >= 0.8 * np.count_nonzero(full)
    # Against its wall: the tumour reaches the wall point, which lies on the lung's edge
    # (lung 6 mm inside it, none 6 mm outside) on the side its position class names.
    z, y, x = _grid()
    wall = np.array(tumour.placement.wall_mm)
    normal = np.array(tumour.placement.normal)
    gap = np.sqrt((x - wall[0]) ** 2 + (y - wall[1]) ** 2 + (z - wall[2]) ** 2)[full].min()
    assert gap <= 6.0, gap
    assert _in_lung("right", wall - 6.0 * normal) and not _in_lung("right", wall + 6.0 * normal)
    lung = masks["right"]
    expected = {
        "posterior": (0, 1, 0),
        "lateral": (-1, 0, 0),
        "mediastinum": (1, 0, 0),
        "hilum": (1, 0, 0),
        "apex": (0, 0, 1),
        "diaphragm": (0, 0, -1),
    }[position]
    assert normal @ np.array(expected) >= 0.9, normal
    if position == "posterior":  # beside the spine: in the lung's medial third
        assert wall[0] >= x[lung].max() - LUNG_SEMI[0] * 0.7
    elif position == "apex":
        assert wall[2] >= z[lung].max()
    elif position == "diaphragm":  # the base (its lateral half), not the heart's border
        assert wall[2] <= z[lung].min() + 0.25 * np.ptp(z[lung])
    elif position == "mediastinum":  # above the hilum
        assert wall[2] > 0.0
    # Soft-tissue HU inside, lung HU around it (partial volume in between).
    core = ct.array.copy()
    assert 15.0 <= tumour.mean_hu <= 75.0, tumour.mean_hu
    changed = modified.array != core
    assert changed[full].mean() >= 0.95  # (a wall voxel may keep its value by chance)
    assert np.count_nonzero(changed & ~full) > 0  # the blended rim


def test_necrotic_centre_spiculae_and_collapse(
    chest: tuple[Volume, dict[str, np.ndarray], insertion.StudyAnatomy],
) -> None:
    spec = TumourSpec("lateral", "left", 90.0, "necrotic", collapse=True)
    modified, tumour, full = _inserted(chest, spec)
    z, y, x = _grid()
    centre = np.array(tumour.placement.centre_mm)
    dist = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    inner = modified.array[full & (dist <= 8.0)].mean()
    rim = modified.array[full & (dist >= 33.0) & (dist <= 38.0)].mean()  # radius about 42
    assert inner <= rim - 10.0, (inner, rim)
    # The collapse wedge: dense, beside the tumour, not in it.
    assert tumour.collapse.any()
    assert not (tumour.collapse & tumour.mask).any()
    wedge = np.zeros(modified.shape, dtype=bool)
    wedge[tumour.window()] = tumour.collapse
    assert modified.array[wedge].mean() > -100.0
    grown = np.zeros_like(full)
    grown[:, 1:, :] |= full[:, :-1, :]
    grown[:, :-1, :] |= full[:, 1:, :]
    grown[:, :, 1:] |= full[:, :, :-1]
    grown[:, :, :-1] |= full[:, :, 1:]
    assert (grown & wedge).any()

    spiculated = TumourSpec("lateral", "left", 40.0, "spiculated", collapse=False)
    _, spiky, _ = _inserted(chest, spiculated)
    # The spiculae reach beyond the body the long axis is measured on.
    assert np.count_nonzero(spiky.mask) > np.count_nonzero(spiky.measured.mask)


def test_placement_is_seeded_and_keeps_away_from_the_own_tumour(
    chest: tuple[Volume, dict[str, np.ndarray], insertion.StudyAnatomy],
) -> None:
    spec = TumourSpec("lateral", "right", 30.0, "spiculated", collapse=True)
    first, a, _ = _inserted(chest, spec, seed=7)
    second, b, _ = _inserted(chest, spec, seed=7)
    assert a.placement == b.placement
    assert np.array_equal(first.array, second.array)
    third, c, _ = _inserted(chest, spec, seed=8)
    assert c.placement != a.placement or not np.array_equal(third.array, first.array)

    ct, _, _ = chest
    # The right lung's whole lateral half as the study's own tumour: no lateral place is left.
    box = ((-140.0, -90.0, -120.0), (-75.0, 90.0, 120.0))
    anatomy = study_anatomy(ct, [box])
    assert place(ct, anatomy, spec, np.random.default_rng(0)) is None
    left = TumourSpec("lateral", "left", 30.0, "spiculated", collapse=True)
    placement = place(ct, anatomy, left, np.random.default_rng(0))
    assert placement is not None and placement.centre_mm[0] > 0


def test_a_tumour_spec_outside_the_range_is_refused() -> None:
    for bad in (
        {"diameter_mm": 10.0},
        {"diameter_mm": 95.0},
        {"position": "heart"},
        {"side": "middle"},
        {"shape": "round"},
    ):
        values = {
            "position": "apex",
            "side": "left",
            "diameter_mm": 30.0,
            "shape": "lobulated",
            "collapse": False,
            **bad,
        }
        with pytest.raises(ValueError, match=str(next(iter(bad.values())))):
            TumourSpec(**values)  # type: ignore[arg-type]
