"""Several acquisitions under one Series Instance UID, and bolus-tracking series.

Fixtures from the phantom generator: a GE-style multi-phase CT series (non-contrast and
portal-venous phase at the same positions, Acquisition Number 1 and 2) and a bolus-tracking
series (20 images at one table position), in variants real scanners send (no Acquisition Number,
the same number on every image, numbers as text, Enhanced CT with both phases as frames).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from classifier.analyze import analyze_study
from classifier.datasets.phantom import PhantomStudy, generate_study, write_study
from classifier.datasets.study_folder import scan_folder
from classifier.imaging.acquisitions import monitoring_reason, split_acquisitions
from classifier.imaging.dicom_io import read_headers
from classifier.imaging.series_selection import SeriesCandidate, select_series
from classifier.imaging.volume import ENHANCED_CT_STORAGE, VolumeError, load_ct_volume
from classifier.model.inference import LesionClassifier
from classifier.settings import AnalysisSettings
from classifier.types import ModelInfo
from storage.study_files import InstanceFile, SeriesFiles

SLICES = 16


@pytest.fixture(scope="module")
def study() -> PhantomStudy:
    return generate_study(
        5, "A", ct_size=48, ct_slices=SLICES, pet=False, ct_phases=2, bolus_tracking_images=20
    )


@pytest.fixture
def ct(study: PhantomStudy) -> list[Dataset]:
    """Both phases, shuffled (files arrive in any order), copies a test may change."""
    order = np.random.default_rng(1).permutation(len(study.ct))
    return [copy.deepcopy(study.ct[i]) for i in order]


def _phase(study: PhantomStudy, number: int) -> list[Dataset]:
    return [ds for ds in study.ct if int(ds.AcquisitionNumber) == number]


def _uids(datasets: list[Dataset]) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in datasets}


def _candidate(headers: list[Dataset]) -> SeriesCandidate:
    """Headers with a stand-in file per instance, so the split can be followed to the files."""
    uid = str(headers[0].SeriesInstanceUID)
    files = tuple(
        InstanceFile(Path(f"{ds.SOPInstanceUID}.dcm"), str(ds.SOPInstanceUID), ds.SOPClassUID)
        for ds in headers
    )
    return SeriesCandidate(SeriesFiles(uid, "CT", files), tuple(headers))


def _split_uids(headers: list[Dataset]) -> list[tuple[str, set[str]]]:
    return [
        (a.label, {str(headers[i].SOPInstanceUID) for i in a.headers})
        for a in split_acquisitions(headers)
    ]


# -- the phantom fixtures --------------------------------------------------------------------


def test_multiphase_phantom_is_one_series_with_repeated_positions(study: PhantomStudy) -> None:
    assert len(study.ct) == 2 * SLICES
    assert len({ds.SeriesInstanceUID for ds in study.ct}) == 1
    first, second = _phase(study, 1), _phase(study, 2)
    assert [ds.ImagePositionPatient for ds in first] == [ds.ImagePositionPatient for ds in second]
    assert second[0].AcquisitionTime > first[0].AcquisitionTime
    assert sorted(int(ds.InstanceNumber) for ds in study.ct) == list(range(1, 2 * SLICES + 1))
    assert "ContrastBolusAgent" not in first[0] and "ContrastBolusAgent" in second[0]
    # The blood enhances in the portal-venous phase; the lungs do not change.
    hu1 = np.stack([ds.pixel_array for ds in first]).astype(np.int32)
    hu2 = np.stack([ds.pixel_array for ds in second]).astype(np.int32)
    assert (hu2 - hu1).max() == 140 and (hu2 - hu1).min() == 0
    # Boxes on both phases; one phase alone is a valid volume, both together are not.
    assert _uids(first) & {b.sop_instance_uid for b in study.boxes}
    assert _uids(second) & {b.sop_instance_uid for b in study.boxes}
    assert load_ct_volume(second).shape == (SLICES, 48, 48)
    with pytest.raises(VolumeError, match="share a position"):
        load_ct_volume(study.ct)


def test_single_phase_phantom_is_unchanged_by_the_new_options() -> None:
    plain = generate_study(5, "A", ct_size=48, ct_slices=SLICES, pet=False)
    with_bolus = generate_study(
        5, "A", ct_size=48, ct_slices=SLICES, pet=False, bolus_tracking_images=4
    )
    assert [ds.SOPInstanceUID for ds in plain.ct] == [ds.SOPInstanceUID for ds in with_bolus.ct]
    assert plain.bolus_tracking == [] and len(with_bolus.bolus_tracking) == 4
    assert all(int(ds.AcquisitionNumber) == 1 for ds in plain.ct)
    with pytest.raises(ValueError, match="ct_phases"):
        generate_study(5, "A", ct_phases=4)
    with pytest.raises(ValueError, match="bolus_tracking_images"):
        generate_study(5, "A", bolus_tracking_images=1)


def test_bolus_phantom_is_images_at_one_position_over_time(study: PhantomStudy) -> None:
    bolus = study.bolus_tracking
    assert len(bolus) == 20
    assert len({tuple(ds.ImagePositionPatient) for ds in bolus}) == 1
    assert len({ds.AcquisitionTime for ds in bolus}) == 20
    assert bolus[0].SeriesInstanceUID != study.ct[0].SeriesInstanceUID
    assert bolus[0].FrameOfReferenceUID == study.ct[0].FrameOfReferenceUID
    rise = bolus[-1].pixel_array.astype(np.int32) - bolus[0].pixel_array
    assert rise.max() == 250 and rise.min() == 0  # the aorta fills with contrast


# -- splitting -------------------------------------------------------------------------------


def test_split_by_acquisition_number(study: PhantomStudy, ct: list[Dataset]) -> None:
    assert _split_uids(ct) == [
        ("acquisition 1", _uids(_phase(study, 1))),
        ("acquisition 2", _uids(_phase(study, 2))),
    ]


@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(lambda n: str(n), id="string"),
        pytest.param(lambda n: f" {n} ", id="padded"),
        pytest.param(lambda n: f"{n}.0", id="decimal"),
    ],
)
def test_acquisition_number_read_leniently(
    study: PhantomStudy, ct: list[Dataset], spell: object
) -> None:
    for ds in ct:
        number = int(ds.AcquisitionNumber)
        del ds.AcquisitionNumber
        # As a non-conformant scanner writes it: raw text in an IS element.
        ds.add_new("AcquisitionNumber", "LO", spell(number))  # type: ignore[operator]
    assert [uids for _, uids in _split_uids(ct)] == [
        _uids(_phase(study, 1)),
        _uids(_phase(study, 2)),
    ]


@pytest.mark.parametrize("variant", ["missing", "same for all"])
def test_split_by_repeated_positions_in_time_order(
    study: PhantomStudy, ct: list[Dataset], variant: str
) -> None:
    for ds in ct:
        if variant == "missing":
            del ds.AcquisitionNumber
        else:
            ds.AcquisitionNumber = 7
        ds.InstanceNumber = 1  # useless, as some exports make it
    assert _split_uids(ct) == [
        ("repeat 1 of the positions", _uids(_phase(study, 1))),
        ("repeat 2 of the positions", _uids(_phase(study, 2))),
    ]


def test_without_times_instance_number_orders_the_repeats(
    study: PhantomStudy, ct: list[Dataset]
) -> None:
    for ds in ct:
        for keyword in ("AcquisitionNumber", "AcquisitionTime", "ContentTime"):
            del ds[keyword]
    assert [uids for _, uids in _split_uids(ct)] == [
        _uids(_phase(study, 1)),
        _uids(_phase(study, 2)),
    ]


def test_split_by_temporal_position_identifier(study: PhantomStudy, ct: list[Dataset]) -> None:
    for ds in ct:
        ds.TemporalPositionIdentifier = ds.AcquisitionNumber
        ds.AcquisitionNumber = 1
    labels = [label for label, _ in _split_uids(ct)]
    assert labels == ["temporal position 1", "temporal position 2"]


def test_series_without_repeated_positions_is_not_split(study: PhantomStudy) -> None:
    # GE axial scans number every rotation: distinct numbers alone never split a series.
    one = [copy.deepcopy(ds) for ds in _phase(study, 1)]
    for k, ds in enumerate(one):
        ds.AcquisitionNumber = k // 4 + 1
    (only,) = split_acquisitions(one)
    assert only.label == "" and len(only.frames) == SLICES
    assert select_series([_candidate(one)], AnalysisSettings()).ct[0].acquisition is None


def test_duplicated_or_tilted_slices_are_not_acquisitions(study: PhantomStudy) -> None:
    # One slice placed on its neighbour's position is a fault, not a second acquisition: the
    # series stays whole and the volume loader refuses it with its reason, as before.
    dup = [copy.deepcopy(ds) for ds in _phase(study, 1)]
    dup[3].ImagePositionPatient = list(dup[2].ImagePositionPatient)
    assert [a.label for a in split_acquisitions(dup)] == [""]
    assert monitoring_reason(dup) is None
    with pytest.raises(VolumeError, match="share a position"):
        load_ct_volume(dup)
    # Coronal images among axial ones at the same positions: neither split nor bolus tracking.
    mixed = [copy.deepcopy(ds) for ds in _phase(study, 1)[:10]]
    for ds in mixed[::2]:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    assert [a.label for a in split_acquisitions(mixed)] == [""]
    assert monitoring_reason(mixed) is None


def _enhanced(phases: list[list[Dataset]], frame_numbers: bool) -> Dataset:
    """One Enhanced CT instance holding every phase as frames (phases interleaved)."""
    first = phases[0][0]
    ds = Dataset()
    ds.file_meta = copy.deepcopy(first.file_meta)
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT_STORAGE
    for keyword in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesDescription",
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
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    transform = Dataset()
    transform.RescaleSlope = first.RescaleSlope
    transform.RescaleIntercept = first.RescaleIntercept
    transform.RescaleType = "HU"
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames, pixels = [], []
    for k in range(len(phases[0])):
        for phase in phases:
            image = phase[k]
            item = Dataset()
            position = Dataset()
            position.ImagePositionPatient = image.ImagePositionPatient
            content = Dataset()
            if frame_numbers:
                content.FrameAcquisitionNumber = int(image.AcquisitionNumber)
            content.FrameAcquisitionDateTime = str(image.AcquisitionDate) + str(
                image.AcquisitionTime
            )
            item.PlanePositionSequence = Sequence([position])
            item.FrameContentSequence = Sequence([content])
            frames.append(item)
            pixels.append(image.pixel_array)
    ds.NumberOfFrames = len(frames)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack(pixels).tobytes()
    return ds


@pytest.mark.parametrize("frame_numbers", [True, False], ids=["frame-numbers", "frame-times"])
def test_enhanced_ct_frames_split_and_load_per_acquisition(
    study: PhantomStudy, frame_numbers: bool
) -> None:
    enhanced = _enhanced([_phase(study, 1), _phase(study, 2)], frame_numbers)
    parts = split_acquisitions([enhanced])
    assert [len(a.frames) for a in parts] == [SLICES, SLICES]
    assert parts[0].frames_of(0) == tuple(range(0, 2 * SLICES, 2))  # interleaved
    assert parts[1].label == ("acquisition 2" if frame_numbers else "repeat 2 of the positions")

    selection = select_series([_candidate([enhanced])], AnalysisSettings())
    assert [c.slice_count for c in selection.ct] == [SLICES, SLICES]
    chosen = selection.ct[0]
    assert chosen.acquisition is not None and chosen.acquisition.order == 1  # the later phase
    assert chosen.frames is not None
    volume = load_ct_volume([enhanced], chosen.frames)
    assert np.array_equal(volume.array, load_ct_volume(_phase(study, 2)).array)
    with pytest.raises(VolumeError, match="share a position"):
        load_ct_volume([enhanced])


# -- the series rules between acquisitions ---------------------------------------------------


def test_rules_choose_the_later_phase_of_equal_coverage(
    study: PhantomStudy, ct: list[Dataset]
) -> None:
    selection = select_series([_candidate(ct)], AnalysisSettings())
    assert selection.rejected == ()
    assert [c.describe() for c in selection.ct] == [
        f"series 2 {ct[0].SeriesInstanceUID} acquisition {n} (CT chest multiphase phantom)"
        for n in (2, 1)
    ]
    chosen = selection.ct[0]
    # The volume is read from the chosen acquisition's files only.
    assert {i.sop_instance_uid for i in chosen.series.instances} == _uids(_phase(study, 2))
    assert _uids(list(chosen.headers)) == _uids(_phase(study, 2))


def test_rules_prefer_coverage_and_name_the_rejected_acquisition(
    study: PhantomStudy,
) -> None:
    full = _phase(study, 1)
    short = _phase(study, 2)[:10]  # the later phase only over part of the chest
    tiny = [copy.deepcopy(ds) for ds in _phase(study, 2)[:5]]
    for ds in tiny:
        ds.AcquisitionNumber = 3
    selection = select_series([_candidate(full + short + tiny)], AnalysisSettings())
    assert [c.acquisition.label for c in selection.ct if c.acquisition] == [
        "acquisition 1",
        "acquisition 2",
    ]
    (reason,) = selection.rejected
    uid = full[0].SeriesInstanceUID
    assert reason.startswith(f"CT series 2 {uid} acquisition 3 "), reason
    assert "5 slice(s), fewer than ct_min_slices = 8" in reason


def test_acquisitions_of_a_thinner_series_come_first_together(study: PhantomStudy) -> None:
    thick = [copy.deepcopy(ds) for ds in _phase(study, 1)]
    for ds in thick:
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.77"
        ds.SliceThickness = "8"
        ds.AcquisitionNumber = 1
    selection = select_series([_candidate(thick), _candidate(study.ct)], AnalysisSettings())
    multi = str(study.ct[0].SeriesInstanceUID)
    assert [
        (c.series.series_instance_uid, c.acquisition.label if c.acquisition else None)
        for c in selection.ct
    ] == [
        (multi, "acquisition 2"),
        (multi, "acquisition 1"),
        ("1.2.826.0.1.3680043.8.498.77", None),
    ]


# -- bolus tracking --------------------------------------------------------------------------


def test_bolus_series_is_rejected_by_its_geometry(study: PhantomStudy) -> None:
    selection = select_series(
        [_candidate(study.bolus_tracking), _candidate(study.ct)], AnalysisSettings()
    )
    assert len(selection.ct) == 2
    (reason,) = selection.rejected
    uid = study.bolus_tracking[0].SeriesInstanceUID
    assert reason.startswith(f"CT series 1 {uid} (Bolus tracking): bolus-tracking"), reason
    assert "20 image(s) at 1 table position(s) over 19 s" in reason
    assert "to time the contrast injection, not a diagnostic volume" in reason


def test_bolus_recognised_by_image_type_and_by_a_short_repeated_stack(
    study: PhantomStudy,
) -> None:
    marked = [copy.deepcopy(ds) for ds in _phase(study, 1)]
    for ds in marked:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "BOLUS"]
    assert "Image Type ORIGINAL\\PRIMARY\\AXIAL\\BOLUS" in (monitoring_reason(marked) or "")

    # Four positions 5 mm apart (15 mm) imaged five times: monitoring, not a volume.
    short = [copy.deepcopy(ds) for ds in _phase(study, 1)[:4] for _ in range(5)]
    for k, ds in enumerate(short):
        ds.AcquisitionNumber = k % 5 + 1
    assert "4 table position(s)" in (monitoring_reason(short) or "")

    # Neither a volume nor a multi-phase series is.
    assert monitoring_reason(_phase(study, 1)) is None
    assert monitoring_reason(study.ct) is None


# -- analysis end to end ---------------------------------------------------------------------


class _AlwaysLesion(LesionClassifier):
    """A stand-in CNN: every candidate is a lesion (the selection is under test, not the CNN);
    uncalibrated, so a finding's certainty is its score."""

    def __init__(self) -> None:
        self.info = ModelInfo("stub", "0", "0" * 64, "nothing")
        self.calibration = None

    def predict(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(patches)
        return np.full(n, 0.99, dtype=np.float32), np.full((n, 4), 0.25, dtype=np.float32)


def test_multiphase_study_with_bolus_series_is_analysed_on_the_chosen_phase(
    tmp_path: Path,
) -> None:
    study = generate_study(
        6, "A", ct_size=96, ct_slices=24, pet=False, ct_phases=2, bolus_tracking_images=20
    )
    write_study(study, tmp_path)
    studies, _ = scan_folder(tmp_path)
    (files,) = studies
    assert len(files.series) == 2
    analysis = analyze_study(files, AnalysisSettings(), _AlwaysLesion())
    result = analysis.result
    assert result.analysed, result.skipped
    portal = _phase(study, 2)
    assert result.ct_series_uid == study.ct[0].SeriesInstanceUID
    assert result.ct_shape == (24, 96, 96)
    # The evidence is the chosen (portal-venous) acquisition's slices, in z order.
    assert [r.sop_instance_uid for r in result.evidence] == [ds.SOPInstanceUID for ds in portal]
    assert [str(h.SOPInstanceUID) for h in analysis.sources] == [ds.SOPInstanceUID for ds in portal]
    assert all(lesion.key_slice.sop_instance_uid in _uids(portal) for lesion in result.lesions)
    # The bolus-tracking series is skipped with its reason; nothing else is.
    (reason,) = result.skipped
    assert "(Bolus tracking): bolus-tracking (monitoring) series" in reason


# -- real data: the splitting must not change what was chosen before ------------------------

_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6655.2359."
# The CT order select_series gave before acquisitions were split (first = analysed).
REAL_CT_ORDER = {
    "Lung_Dx-A0002": [
        _PREFIX + "207154000096236603057216610983",
        _PREFIX + "241981550240354690198744362919",
    ],
    "Lung_Dx-E0002": [
        _PREFIX + "249087154603190304734491897697",
        _PREFIX + "281019097360243672501896101721",
    ],
    "Lung_Dx-E0003": [_PREFIX + "301617513160928382719735203497"],
}


@pytest.mark.parametrize("patient", sorted(REAL_CT_ORDER))
def test_real_studies_select_the_same_series_unsplit(patient: str, lung_pet_ct_dx: Path) -> None:
    folder = lung_pet_ct_dx / "Lung-PET-CT-Dx" / patient
    (files,) = scan_folder(folder)[0]
    candidates = [
        SeriesCandidate(s, tuple(read_headers([i.path for i in s.instances]))) for s in files.series
    ]
    selection = select_series(candidates, AnalysisSettings())
    assert selection.rejected == ()
    assert [c.series.series_instance_uid for c in selection.ct] == REAL_CT_ORDER[patient]
    assert all(c.acquisition is None and c.frames is None for c in selection.ct)
