"""SUVbw on the two real PET slices, against arithmetic written out by hand."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from classifier.imaging.suv import SUVError, suv_factor

PetSlice = Callable[[str], pydicom.Dataset]


@pytest.fixture
def pet_slice(shared_data: Path) -> PetSlice:
    """Reads one of the real PET slices in shared_data/pet (the test skips without shared data;
    a slice missing from present shared data fails)."""

    def read(name: str) -> pydicom.Dataset:
        path = shared_data / "pet" / name
        assert path.is_file(), f"shared data is present but the PET slice {path} is not"
        return pydicom.dcmread(path)

    return read


def test_suv_slice_1_start_decay_from_series_time(pet_slice: PetSlice) -> None:
    ds = pet_slice("acrin-flt-breast-1.dcm")
    # Series 15:23:16.921, injection 14:17:00.000 -> 1 h 6 min 16.921 s = 3976.921 s.
    decay_s = 3600 + 6 * 60 + 16.921
    decayed_dose = 178340011.59668 * 2 ** (-decay_s / 6586.2)
    factor = 69.7344 * 1000 / decayed_dose
    got = suv_factor([ds])
    assert got.decay_seconds == pytest.approx(decay_s, abs=1e-3)
    assert got.factor == pytest.approx(factor, rel=1e-9)
    pixels = ds.pixel_array.astype(np.float64) * 9.12329 + 0.0
    suv = pixels * got.factor
    peak = np.unravel_index(np.argmax(pixels), pixels.shape)
    assert suv[peak] == pytest.approx(pixels[peak] * factor, rel=1e-9)
    assert 0.0 < float(suv.max()) < 100.0  # plausible SUVbw range


def test_suv_slice_2_series_time_before_acquisition(pet_slice: PetSlice) -> None:
    ds = pet_slice("acrin-flt-breast-2.dcm")
    # Series 11:19:59.109 is before acquisition 11:35:59.109, so the series time is used:
    # 0.109 s after the injection at 11:19:59.000.
    decayed_dose = 173529998.7793 * 2 ** (-0.109 / 6586.2)
    factor = 82.174 * 1000 / decayed_dose
    assert suv_factor([ds]).factor == pytest.approx(factor, rel=1e-9)


def test_admin_has_no_decay_and_missing_weight_is_named(pet_slice: PetSlice) -> None:
    ds = pet_slice("acrin-flt-breast-1.dcm")
    ds.DecayCorrection = "ADMIN"
    assert suv_factor([ds]).factor == pytest.approx(69.7344 * 1000 / 178340011.59668, rel=1e-9)
    del ds.PatientWeight
    with pytest.raises(SUVError, match="PatientWeight"):
        suv_factor([ds])


def test_bad_units_and_injection_after_scan(pet_slice: PetSlice) -> None:
    ds = pet_slice("acrin-flt-breast-1.dcm")
    ds.Units = "CNTS"
    with pytest.raises(SUVError, match="Units"):
        suv_factor([ds])
    ds.Units = "BQML"
    ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime = "160000"
    with pytest.raises(SUVError, match="after the scan"):
        suv_factor([ds])
