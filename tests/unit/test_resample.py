"""PET onto the CT grid: resampling through patient coordinates, and rigid registration."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pydicom.dataset import Dataset

from classifier.datasets.phantom import generate_study
from classifier.imaging.resample import RigidTransform, register_rigid, resample_to
from classifier.imaging.suv import load_pet_suv_volume
from classifier.imaging.volume import Volume, load_ct_volume

FRAME = "1.2.826.0.1.3680043.8.498.2001"
OTHER_FRAME = "1.2.826.0.1.3680043.8.498.2002"


def _volume(
    array: np.ndarray,
    origin: tuple[float, float, float],
    spacing: tuple[float, float, float],
    direction: np.ndarray | None = None,
    *,
    uid: str = "1.2.3.1",
    modality: str = "PT",
) -> Volume:
    return Volume(
        array=np.asarray(array, dtype=np.float32),
        origin=np.array(origin, dtype=np.float64),
        spacing=spacing,
        direction=np.eye(3) if direction is None else direction,
        frame_of_reference_uid=FRAME,
        series_instance_uid=uid,
        modality=modality,
        slices=(),
    )


def _rotation_z(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _linear(points: np.ndarray) -> np.ndarray:
    """A field linear in patient coordinates: trilinear interpolation reproduces it exactly."""
    return 0.5 * points[..., 0] - 0.25 * points[..., 1] + 2.0 * points[..., 2] + 7.0


def _all_points(volume: Volume) -> np.ndarray:
    index = np.stack(np.indices(volume.shape), axis=-1).astype(np.float64)
    return volume.index_to_patient(index)


def _sampled(shape: tuple[int, int, int], **geometry: object) -> Volume:
    """A volume of the given geometry holding the linear field at its voxel centres."""
    empty = _volume(np.zeros(shape), **geometry)  # type: ignore[arg-type]
    return empty.with_array(_linear(_all_points(empty)).astype(np.float32))


CT_GRID = {"origin": (-20.0, -15.0, -30.0), "spacing": (2.5, 1.0, 1.0)}


def _ct_grid() -> Volume:
    return _volume(np.zeros((16, 30, 40)), uid="1.2.3.9", modality="CT", **CT_GRID)


def test_hot_pet_voxel_lands_at_the_ct_index_of_its_patient_position() -> None:
    ct = _ct_grid()
    pet = _volume(np.zeros((10, 16, 20)), (-22.0, -17.0, -32.5), (5.0, 2.0, 2.0))
    hot_index = np.array([4, 8, 11])
    pet.array[tuple(hot_index)] = 10.0
    hot_mm = pet.index_to_patient(hot_index)  # (0, -1, -12.5): a CT voxel centre

    on_ct = resample_to(pet, ct)
    peak = np.unravel_index(int(np.argmax(on_ct.array)), on_ct.shape)
    assert np.allclose(ct.index_to_patient(np.array(peak)), hot_mm)
    assert np.allclose(ct.patient_to_index(hot_mm), peak)
    assert on_ct.array[peak] == pytest.approx(10.0)
    # Linear interpolation spreads it over PET-voxel-wide neighbourhoods only.
    assert np.count_nonzero(on_ct.array) <= 3 * 3 * 3
    assert np.allclose(ct.index_to_patient(np.argwhere(on_ct.array > 0)), hot_mm, atol=5.0)


def test_hot_blob_peak_keeps_its_patient_coordinate() -> None:
    ct = _ct_grid()
    pet = _volume(np.zeros((10, 16, 20)), (-22.0, -17.0, -32.5), (5.0, 2.0, 2.0))
    centre_mm = np.array([4.0, -3.0, -5.0])
    distance = np.linalg.norm(_all_points(pet) - centre_mm, axis=-1)
    pet = pet.with_array(np.exp(-((distance / 4.0) ** 2)).astype(np.float32))

    on_ct = resample_to(pet, ct, order=3)
    peak = np.unravel_index(int(np.argmax(on_ct.array)), on_ct.shape)
    # The CT voxel nearest the blob centre (CT voxels are 1 x 1 x 2.5 mm).
    assert np.abs(ct.index_to_patient(np.array(peak)) - centre_mm).max() <= 1.25


def test_result_takes_the_reference_grid_and_keeps_the_moving_series() -> None:
    ct = _ct_grid()
    pet = _sampled((10, 16, 20), origin=(-22.0, -17.0, -32.5), spacing=(5.0, 2.0, 2.0))
    on_ct = resample_to(pet, ct)
    assert on_ct.shape == ct.shape
    assert on_ct.array.dtype == np.float32
    assert np.array_equal(on_ct.origin, ct.origin)
    assert on_ct.spacing == ct.spacing
    assert np.array_equal(on_ct.direction, ct.direction)
    assert on_ct.frame_of_reference_uid == ct.frame_of_reference_uid
    assert (on_ct.series_instance_uid, on_ct.modality) == (pet.series_instance_uid, "PT")


@pytest.mark.parametrize(
    ("direction", "label"),
    [
        (np.eye(3), "same axes, other spacing"),
        (np.diag([-1.0, -1.0, 1.0]), "columns run right, rows anterior"),
        (_rotation_z(30.0), "oblique 30 degrees about z"),
        # Coronal: columns along x, rows towards the feet, slices anterior to posterior.
        (np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]), "coronal"),
    ],
    ids=["axial", "flipped", "oblique", "coronal"],
)
def test_other_grid_and_orientation_give_the_field_at_reference_points(
    direction: np.ndarray, label: str
) -> None:
    ct = _ct_grid()
    # A moving grid centred on the CT, large enough to cover it in every orientation.
    spacing = (3.0, 1.7, 2.2)
    shape = (30, 50, 45)
    half = direction @ (np.array([shape[2] - 1, shape[1] - 1, shape[0] - 1]) * spacing[::-1]) / 2
    centre = ct.index_to_patient((np.array(ct.shape) - 1) / 2.0)
    moving = _sampled(shape, origin=tuple(centre - half), spacing=spacing, direction=direction)

    on_ct = resample_to(moving, ct, fill=-1000.0)
    expected = _linear(_all_points(ct))
    assert np.abs(on_ct.array - expected).max() < 1e-3, label


def test_points_outside_the_moving_volume_get_the_fill_value() -> None:
    ct = _ct_grid()
    # Covers only CT slices 0..7 (z -30 .. -12.5) and columns 0..19 (x -20 .. -1).
    pet = _sampled((8, 30, 20), origin=(-20.0, -15.0, -30.0), spacing=(2.5, 1.0, 1.0))
    on_ct = resample_to(pet, ct, fill=-7.5)
    expected = _linear(_all_points(ct))
    assert np.allclose(on_ct.array[:8, :, :20], expected[:8, :, :20], atol=1e-3)
    assert np.all(on_ct.array[9:] == -7.5)
    assert np.all(on_ct.array[:, :, 21:] == -7.5)
    assert np.all(resample_to(pet, ct).array[9:] == 0.0)  # default fill


def test_transform_maps_reference_points_to_moving_points() -> None:
    ct = _ct_grid()
    pet = _sampled((30, 60, 60), origin=(-45.0, -40.0, -70.0), spacing=(4.0, 1.5, 1.5))
    rotation = _rotation_z(5.0)
    shift = np.array([10.0, -4.0, 6.0])
    on_ct = resample_to(pet, ct, transform=RigidTransform(rotation, shift))
    points = _all_points(ct)
    expected = _linear(points @ rotation.T + shift)
    assert np.abs(on_ct.array - expected).max() < 1e-3

    identity = resample_to(pet, ct, transform=RigidTransform.identity())
    assert np.array_equal(identity.array, resample_to(pet, ct).array)
    assert RigidTransform(rotation, shift).rotation_deg == pytest.approx(5.0)


# --- rigid registration on a small phantom -------------------------------------------------


@pytest.fixture(scope="module")
def phantom() -> tuple[Volume, list[Dataset]]:
    study = generate_study(3, "A", ct_size=64, ct_slices=24, slice_thickness_mm=5.0, pet_size=64)
    return load_ct_volume(study.ct), study.pet


def _moved_pet(pet: list[Dataset], shift_mm: tuple[float, float, float]) -> Volume:
    """The PET as if acquired in its own Frame of Reference, its positions off by shift_mm."""
    moved = copy.deepcopy(pet)
    for ds in moved:
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [f"{p + s:.4f}" for p, s in zip(position, shift_mm, strict=True)]
        ds.FrameOfReferenceUID = OTHER_FRAME
    return load_pet_suv_volume(moved)


def test_register_rigid_recovers_a_known_shift(phantom: tuple[Volume, list[Dataset]]) -> None:
    ct, pet_datasets = phantom
    pet = _moved_pet(pet_datasets, (10.0, 0.0, 6.0))
    assert pet.frame_of_reference_uid != ct.frame_of_reference_uid

    result = register_rigid(pet, ct)
    assert result.transform is not None, result.reason
    assert result.metric_after < result.metric_before
    assert result.reason.startswith("PET registered rigidly to CT")
    assert result.transform.rotation_deg < 2.0
    # Motion at the CT centre: the 10 mm x, 6 mm z the PET positions were moved by.
    centre = ct.index_to_patient((np.array(ct.shape) - 1) / 2.0)
    motion = result.transform.matrix @ centre + result.transform.translation - centre
    assert np.abs(motion - np.array([10.0, 0.0, 6.0])).max() < 3.0, motion


def test_register_rigid_refuses_a_pet_without_signal(
    phantom: tuple[Volume, list[Dataset]],
) -> None:
    ct, pet_datasets = phantom
    pet = _moved_pet(pet_datasets, (10.0, 0.0, 6.0))
    result = register_rigid(pet.with_array(np.zeros(pet.shape, np.float32)), ct)
    assert result.transform is None
    assert result.reason.startswith("registration failed ("), result.reason
    assert np.isnan(result.metric_before) and np.isnan(result.metric_after)


def test_register_rigid_refuses_a_pet_of_pure_noise(
    phantom: tuple[Volume, list[Dataset]],
) -> None:
    ct, pet_datasets = phantom
    pet = _moved_pet(pet_datasets, (10.0, 0.0, 6.0))
    noise = np.random.default_rng(7).random(pet.shape).astype(np.float32)
    result = register_rigid(pet.with_array(noise), ct)
    assert result.transform is None, result.reason
    assert result.reason and not result.reason.startswith("PET registered"), result.reason
