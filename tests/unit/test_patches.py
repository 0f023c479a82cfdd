"""Patch extraction: shape, window channels, SUV/flag channels, fixed physical field, errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from classifier.model.patches import (
    CH_LUNG,
    CH_MEDIASTINAL,
    CH_PET_FLAG,
    CH_SUV,
    PATCH_SHAPE,
    extract_patch,
    extract_patches,
)


@pytest.fixture(scope="module")
def phantom() -> tuple:
    """A small phantom CT with its SUV on the CT grid and the lesion centre index."""
    from classifier.datasets.phantom import generate_study
    from classifier.imaging.resample import resample_to
    from classifier.imaging.suv import load_pet_suv_volume
    from classifier.imaging.volume import load_ct_volume

    study = generate_study(11, "B", ct_size=96, ct_slices=24)  # B: solid
    ct = load_ct_volume(study.ct)
    suv = resample_to(load_pet_suv_volume(study.pet), ct, fill=0.0)
    centre = tuple(int(round(v)) for v in np.argwhere(study.lesion_mask).mean(axis=0))
    return ct, suv, centre


def test_patch_shape_dtype_and_pet_channels(phantom: tuple) -> None:
    ct, suv, centre = phantom
    with_pet = extract_patch(ct, centre, suv)
    ct_only = extract_patch(ct, centre, None)
    assert with_pet.shape == PATCH_SHAPE and with_pet.dtype == np.float32
    assert np.all(with_pet[..., CH_PET_FLAG] == 1.0)
    assert np.all(ct_only[..., CH_PET_FLAG] == 0.0)
    assert np.all(ct_only[..., CH_SUV] == 0.0)
    assert with_pet[..., CH_SUV].max() > 0.1  # the lesion is FDG-avid in the phantom
    np.testing.assert_array_equal(with_pet[..., :6], ct_only[..., :6])
    assert with_pet.min() >= 0.0 and with_pet.max() <= 1.0


def test_lesion_centre_is_bright_in_the_mediastinal_window(phantom: tuple) -> None:
    ct, suv, centre = phantom
    patch = extract_patch(ct, centre, suv)
    middle = patch[28:36, 28:36, CH_MEDIASTINAL[1]].mean()
    assert middle > 0.3  # soft tissue (about 40 HU) maps to about 0.5
    assert middle > np.percentile(patch[..., CH_MEDIASTINAL[1]], 25) + 0.2  # lung is dark
    assert patch[28:36, 28:36, CH_LUNG[1]].mean() > 0.6  # and saturated in the lung window


def test_field_is_physical_not_voxels() -> None:
    """A 20-mm sphere looks the same on a 0.7-mm and a 2.8-mm grid."""
    from classifier.imaging.volume import Volume

    def sphere_volume(pixel: float) -> tuple[Volume, tuple[int, int, int]]:
        n = int(round(160 / pixel))
        z, r, c = np.ogrid[:9, :n, :n]
        dist = np.sqrt(
            ((z - 4) * 5.0) ** 2 + ((r - n // 2) * pixel) ** 2 + ((c - n // 2) * pixel) ** 2
        )
        array = np.where(dist < 10.0, 40.0, -850.0).astype(np.float32)
        volume = Volume(
            array=array,
            origin=np.zeros(3),
            spacing=(5.0, pixel, pixel),
            direction=np.eye(3),
            frame_of_reference_uid="1.2.3",
            series_instance_uid="1.2.3.4",
            modality="CT",
            slices=(),
        )
        return volume, (4, n // 2, n // 2)

    fine = extract_patch(*sphere_volume(0.7), None)
    coarse = extract_patch(*sphere_volume(2.8), None)
    assert np.abs(fine[..., :6] - coarse[..., :6]).mean() < 0.03


def test_errors_name_the_problem(phantom: tuple) -> None:
    ct, suv, _ = phantom
    with pytest.raises(ValueError, match="outside the CT volume"):
        extract_patch(ct, (ct.array.shape[0], 0, 0), None)
    small = replace(suv, array=suv.array[:-1])
    with pytest.raises(ValueError, match="resample the PET"):
        extract_patch(ct, (0, 0, 0), small)
    assert extract_patches(ct, [], suv).shape == (0, *PATCH_SHAPE)
