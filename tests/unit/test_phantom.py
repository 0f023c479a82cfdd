"""Tests of the synthetic PET/CT phantom: determinism, HU and SUV encoding, geometry, validity."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from classifier.datasets.phantom import PhantomStudy, generate_study, study_digest, write_study

SMALL = {"ct_size": 64, "ct_slices": 16, "pet_size": 32}


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)


def _hu_volume(study: PhantomStudy) -> np.ndarray:
    return np.stack([_hu(ds) for ds in study.ct])


def test_same_seed_gives_same_uids_and_pixels() -> None:
    a = generate_study(7, "G", **SMALL)
    b = generate_study(7, "G", **SMALL)
    c = generate_study(8, "G", **SMALL)
    assert [d.SOPInstanceUID for d in a.ct + a.pet] == [d.SOPInstanceUID for d in b.ct + b.pet]
    assert a.study_instance_uid == b.study_instance_uid
    assert study_digest(a) == study_digest(b)
    assert a.lesions == b.lesions and a.boxes == b.boxes
    assert np.array_equal(a.lesion_mask, b.lesion_mask)
    assert a.study_instance_uid != c.study_instance_uid
    assert study_digest(a) != study_digest(c)
    uids = [d.SOPInstanceUID for d in a.ct + a.pet]
    assert len(set(uids)) == len(uids)
    assert all(len(u) <= 64 and set(u) <= set("0123456789.") for u in uids)


def test_default_study_is_fast_and_shaped_as_asked() -> None:
    start = time.perf_counter()
    study = generate_study(1, "A")
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"generate_study took {elapsed:.2f} s"
    assert len(study.ct) == 40 and study.ct[0].Rows == study.ct[0].Columns == 128
    assert study.lesion_mask.shape == (40, 128, 128)
    assert study.pet and study.pet[0].Rows == 64
    assert study.patient_id == "Lung_Dx-A0001"


def test_hu_round_trips_through_a_saved_file(tmp_path: Path) -> None:
    study = generate_study(3, "B", **SMALL)
    paths = write_study(study, tmp_path)
    for ds, path in zip(study.ct, paths[: len(study.ct)], strict=True):
        back = pydicom.dcmread(path)
        assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        hu = apply_modality_lut(back.pixel_array, back)
        assert np.array_equal(hu, _hu(ds))
        assert np.array_equal(hu, np.rint(hu))
    volume = _hu_volume(study)
    assert volume.min() >= -1024
    assert abs(np.median(volume[:, :3, :3]) - (-1000)) <= 30  # air in the corner
    assert abs(np.median(volume[study.lesion_mask]) - 40) <= 15  # homogeneous solid lesion
    lung = volume[(volume > -950) & (volume < -700)]
    assert abs(np.median(lung) - (-850)) <= 30
    assert volume.max() >= 500  # the spine


def test_lossless_transfer_syntax_keeps_pixels() -> None:
    plain = generate_study(4, "E", **SMALL)
    rle = generate_study(4, "E", transfer_syntax=pydicom.uid.RLELossless, **SMALL)
    assert rle.ct[0].file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    assert rle.ct[0].SOPInstanceUID == plain.ct[0].SOPInstanceUID
    for a, b in zip(plain.ct + plain.pet, rle.ct + rle.pet, strict=True):
        assert np.array_equal(a.pixel_array, b.pixel_array)


def _seconds(dt: str) -> datetime:
    return datetime.strptime(dt[:14], "%Y%m%d%H%M%S")


def test_suv_from_the_tags_is_the_planned_suv() -> None:
    study = generate_study(5, "B", ct_size=64, ct_slices=16)
    assert study.pet_suv is not None
    lesion = study.lesions[0]
    pet_z = [float(ds.ImagePositionPatient[2]) for ds in study.pet]
    k = int(np.argmin(np.abs(np.array(pet_z) - lesion.center_mm[2])))
    ds = study.pet[k]
    drug = ds.RadiopharmaceuticalInformationSequence[0]
    assert ds.Units == "BQML" and ds.DecayCorrection == "START"
    assert drug.Radiopharmaceutical == "Fluorodeoxyglucose"
    weight_g = float(ds.PatientWeight) * 1000.0
    dose_bq = float(drug.RadionuclideTotalDose)
    half_life_s = float(drug.RadionuclideHalfLife)
    dt_s = (
        _seconds(ds.SeriesDate + ds.SeriesTime) - _seconds(drug.RadiopharmaceuticalStartDateTime)
    ).total_seconds()
    assert 50 * 60 <= dt_s <= 70 * 60
    assert drug.RadiopharmaceuticalStartTime == drug.RadiopharmaceuticalStartDateTime[8:14]
    activity = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    suv = activity * weight_g / (dose_bq * 2 ** (-dt_s / half_life_s))
    one_step = float(ds.RescaleSlope) * weight_g / (dose_bq * 2 ** (-dt_s / half_life_s))
    assert np.abs(suv - study.pet_suv[k]).max() <= one_step
    spacing = float(ds.PixelSpacing[0])
    origin = float(ds.ImagePositionPatient[0])
    col = round((lesion.center_mm[0] - origin) / spacing)
    row = round((lesion.center_mm[1] - float(ds.ImagePositionPatient[1])) / spacing)
    peak = suv[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2].max()
    assert 0.6 * lesion.suv_peak <= peak <= 1.3 * lesion.suv_peak
    lung_background = np.median(study.pet_suv[study.pet_suv > 0.3])
    assert lung_background < 1.5
    assert 8.0 <= lesion.suv_peak <= 15.0


def test_ct_and_pet_share_frame_of_reference_and_cover_the_same_range() -> None:
    study = generate_study(6, "A", **SMALL)
    frames = {ds.FrameOfReferenceUID for ds in study.ct + study.pet}
    studies = {ds.StudyInstanceUID for ds in study.ct + study.pet}
    assert len(frames) == 1 and studies == {study.study_instance_uid}
    assert {ds.SeriesInstanceUID for ds in study.ct}.isdisjoint(
        {ds.SeriesInstanceUID for ds in study.pet}
    )
    ct_z = [float(ds.ImagePositionPatient[2]) for ds in study.ct]
    pet_z = [float(ds.ImagePositionPatient[2]) for ds in study.pet]
    assert ct_z == sorted(ct_z) and pet_z == sorted(pet_z)
    assert pet_z[0] <= ct_z[0] and pet_z[-1] >= ct_z[-1]
    assert all(int(ds.NumberOfSlices) == len(study.pet) for ds in study.pet)
    assert np.allclose(np.diff(ct_z), float(study.ct[0].SpacingBetweenSlices))
    fov = float(study.ct[0].PixelSpacing[0]) * study.ct[0].Columns
    assert 330 <= fov <= 370


@pytest.mark.parametrize("histology", ["A", "B", "E", "G"])
def test_each_type_has_its_look_and_boxes_match_the_mask(histology: str) -> None:
    study = generate_study(11, histology, **SMALL)
    lesion = study.lesions[0]
    volume = _hu_volume(study)
    inside = volume[study.lesion_mask]
    assert study.lesion_mask.sum() > 0
    if histology == "A":  # ground-glass halo around a solid core
        assert np.mean((inside > -450) & (inside < -150)) > 0.2
        assert 3.0 <= lesion.suv_peak <= 6.0
    if histology == "E":
        assert 20.0 <= lesion.radius_mm <= 30.0
    else:
        assert 6.0 <= lesion.radius_mm <= 20.0
    if histology == "G":  # cavitation
        assert np.mean(inside < -900) > 0.02
    if histology in ("B", "E"):
        assert np.mean(inside > -100) > 0.9
    for box in study.boxes:
        k = next(i for i, ds in enumerate(study.ct) if ds.SOPInstanceUID == box.sop_instance_uid)
        rows, cols = np.nonzero(study.lesion_mask[k])
        assert (box.xmin, box.ymin, box.xmax, box.ymax) == (
            cols.min(),
            rows.min(),
            cols.max(),
            rows.max(),
        )
        assert box.label == histology
    assert len(study.boxes) == int(study.lesion_mask.any(axis=(1, 2)).sum())


def test_lesion_free_chest_has_no_mask_and_no_boxes() -> None:
    study = generate_study(12, "A", lesion=False, **SMALL)
    assert study.lesions == [] and study.boxes == []
    assert not study.lesion_mask.any()
    assert study.ct and study.pet


def test_bad_arguments_are_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="'Q'"):
        generate_study(1, "Q")
    with pytest.raises(ValueError, match="ct_size"):
        generate_study(1, "A", ct_size=8)
    with pytest.raises(ValueError, match="transfer_syntax"):
        generate_study(1, "A", transfer_syntax=pydicom.uid.JPEGBaseline8Bit)


def test_pet_slices_cover_the_ct_range_when_given() -> None:
    study = generate_study(14, "E", ct_size=64, ct_slices=16, pet_size=32, pet_slices=9)
    pet_z = [float(ds.ImagePositionPatient[2]) for ds in study.pet]
    ct_z = [float(ds.ImagePositionPatient[2]) for ds in study.ct]
    assert len(study.pet) == 9 and int(study.pet[0].NumberOfSlices) == 9
    assert pet_z[0] == pytest.approx(ct_z[0]) and pet_z[-1] == pytest.approx(ct_z[-1])
    assert float(study.pet[0].SliceThickness) == pytest.approx(pet_z[1] - pet_z[0], abs=1e-6)
