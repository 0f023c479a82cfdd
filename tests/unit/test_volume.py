"""Volumes from phantom CT slices: geometry, ordering, compression, Enhanced CT, and reasons."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEGLSLossless, RLELossless

from classifier.datasets.phantom import generate_study
from classifier.imaging.volume import ENHANCED_CT_STORAGE, VolumeError, load_ct_volume


@pytest.fixture(scope="module")
def ct() -> list[Dataset]:
    return generate_study(1, "A", ct_size=48, ct_slices=10, pet=False).ct


def test_order_geometry_and_hu(ct: list[Dataset]) -> None:
    shuffled = [ct[i] for i in np.random.default_rng(0).permutation(len(ct))]
    for i, ds in enumerate(shuffled):
        ds.InstanceNumber = len(ct) - i  # must not matter
    volume = load_ct_volume(shuffled)
    z = [float(ds.ImagePositionPatient[2]) for ds in ct]
    assert volume.shape == (10, 48, 48)
    assert np.allclose(volume.origin, ct[int(np.argmin(z))].ImagePositionPatient)
    first = ct[int(np.argmin(z))]
    expected = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
    assert np.allclose(volume.array[0], expected)
    assert volume.spacing[0] == pytest.approx(abs(z[1] - z[0]))
    idx = np.array([[3.0, 5.0, 7.0]])
    assert np.allclose(volume.patient_to_index(volume.index_to_patient(idx)), idx)
    point = volume.index_to_patient(np.array([0.0, 2.0, 1.0]))
    ps = [float(v) for v in first.PixelSpacing]
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    assert np.allclose(point, volume.origin + iop[:3] * ps[1] * 1 + iop[3:] * ps[0] * 2)
    assert volume.slices[0].sop_instance_uid == first.SOPInstanceUID


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_compressed_round_trip(ct: list[Dataset], syntax: str) -> None:
    compressed = []
    for ds in ct:
        copy_ds = copy.deepcopy(ds)
        copy_ds.compress(syntax)
        raw = pydicom.filebase.DicomBytesIO()
        copy_ds.save_as(raw, enforce_file_format=True)
        compressed.append(pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw.getvalue())))
    assert compressed[0].file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(load_ct_volume(compressed).array, load_ct_volume(ct).array)


def _enhanced(ct: list[Dataset]) -> Dataset:
    first = ct[0]
    ds = Dataset()
    ds.file_meta = copy.deepcopy(first.file_meta)
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT_STORAGE
    for keyword in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
        "Modality",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
    ):
        setattr(ds, keyword, first.get(keyword))
    ds.SOPClassUID = ENHANCED_CT_STORAGE
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    order = list(reversed(range(len(ct))))  # frames stored in reverse on purpose
    ds.NumberOfFrames = len(ct)
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for i in order:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = ct[i].ImagePositionPatient
        transform = Dataset()
        transform.RescaleSlope = ct[i].RescaleSlope
        transform.RescaleIntercept = ct[i].RescaleIntercept
        transform.RescaleType = "HU"
        item.PlanePositionSequence = Sequence([position])
        item.PixelValueTransformationSequence = Sequence([transform])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack([ct[i].pixel_array for i in order]).tobytes()
    return ds


def test_enhanced_ct_matches_single_frame(ct: list[Dataset]) -> None:
    enhanced = load_ct_volume([_enhanced(ct)])
    classic = load_ct_volume(ct)
    assert np.array_equal(enhanced.array, classic.array)
    assert np.allclose(enhanced.origin, classic.origin)
    assert enhanced.spacing == pytest.approx(classic.spacing)


def _expect(datasets: list[Dataset], words: str) -> None:
    with pytest.raises(VolumeError, match=words):
        load_ct_volume(datasets)


def test_reasons(ct: list[Dataset]) -> None:
    _expect(ct[:1], "single slice")
    dup = [copy.deepcopy(d) for d in ct]
    dup[3].ImagePositionPatient = dup[4].ImagePositionPatient
    _expect(dup, "share a position")
    _expect(ct[:4] + ct[5:], "not uniform")
    mixed = [copy.deepcopy(d) for d in ct]
    mixed[2].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    _expect(mixed, "orientations")
    scout = [copy.deepcopy(d) for d in ct]
    scout[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    _expect(scout, "localizer")
    derived = [copy.deepcopy(d) for d in ct]
    derived[1].ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    _expect(derived, "derived")
    missing = [copy.deepcopy(d) for d in ct]
    del missing[0].ImagePositionPatient
    _expect(missing, "ImagePositionPatient is missing")
