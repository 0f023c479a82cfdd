"""Series selection: which CT and PET of a study are analysed, and why the others are not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from classifier.analyze import analyze
from classifier.datasets.phantom import generate_study, write_study
from classifier.datasets.study_folder import scan_folder
from classifier.imaging.series_selection import SeriesCandidate, select_series, slice_thickness
from classifier.settings import AnalysisSettings
from classifier.types import ModelInfo
from storage.study_files import SeriesFiles

FRAME_A = "1.2.826.0.1.3680043.8.498.1001"
FRAME_B = "1.2.826.0.1.3680043.8.498.1002"


@pytest.fixture(scope="module")
def config() -> AnalysisSettings:
    config = AnalysisSettings()
    # The rejection tests below are written against the shipped defaults.
    assert config.ct_slice_thickness_range_mm == (0.5, 10.0)
    assert (config.ct_min_slices, config.pet_min_slices) == (8, 8)
    return config


def _candidate(
    uid: str,
    modality: str,
    *,
    slices: int = 40,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    thickness: str | None = "5",
    frame: str = FRAME_A,
    units: str | None = "BQML",
    number: int = 1,
    description: str = "",
) -> SeriesCandidate:
    """A series of `slices` single-frame headers (no pixel data) as the node would read them."""
    headers = []
    for k in range(slices):
        ds = Dataset()
        ds.Modality = modality
        ds.SeriesInstanceUID = uid
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.FrameOfReferenceUID = frame
        ds.InstanceNumber = k + 1
        if image_type:
            ds.ImageType = list(image_type)
        if thickness is not None:
            ds.SliceThickness = thickness
        if modality == "PT" and units is not None:
            ds.Units = units
        headers.append(ds)
    return SeriesCandidate(SeriesFiles(uid, modality, ()), tuple(headers))


def _uids(candidates: tuple[SeriesCandidate, ...]) -> list[str]:
    return [c.series.series_instance_uid for c in candidates]


def test_thinnest_qualifying_ct_is_preferred(config: AnalysisSettings) -> None:
    thick = _candidate("1.2.3.1", "CT", slices=60, thickness="5")
    thin = _candidate("1.2.3.2", "CT", slices=200, thickness="1.25")
    thin_fewer = _candidate("1.2.3.3", "CT", slices=150, thickness="1.25")
    selection = select_series([thick, thin_fewer, thin], config)
    # Thinnest first; at equal thickness the series with more slices first.
    assert _uids(selection.ct) == ["1.2.3.2", "1.2.3.3", "1.2.3.1"]
    assert selection.pet == ()
    assert selection.rejected == ()


def test_enhanced_ct_thickness_and_frames_come_from_the_functional_groups(
    config: AnalysisSettings,
) -> None:
    enhanced = Dataset()
    enhanced.Modality = "CT"
    enhanced.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    enhanced.FrameOfReferenceUID = FRAME_A
    enhanced.NumberOfFrames = 120
    measures = Dataset()
    measures.SliceThickness = "1.0"
    measures.PixelSpacing = ["0.7", "0.7"]
    group = Dataset()
    group.PixelMeasuresSequence = Sequence([measures])
    enhanced.SharedFunctionalGroupsSequence = Sequence([group])
    multi = SeriesCandidate(SeriesFiles("1.2.3.9", "CT", ()), (enhanced,))
    single = _candidate("1.2.3.1", "CT", slices=60, thickness="2")

    assert slice_thickness(multi) == pytest.approx(1.0)
    assert multi.slice_count == 120
    assert _uids(select_series([single, multi], config).ct) == ["1.2.3.9", "1.2.3.1"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")},
            ["Image Type", "LOCALIZER", "not an AXIAL image"],
            id="localizer",
        ),
        pytest.param(
            {"image_type": ("DERIVED", "SECONDARY", "AXIAL")},
            ["Image Type is DERIVED\\SECONDARY\\AXIAL", "not ORIGINAL\\PRIMARY"],
            id="derived",
        ),
        pytest.param(
            {"image_type": ()},
            ["Image Type is missing"],
            id="no-image-type",
        ),
        pytest.param(
            {"slices": 5},
            ["5 slice(s)", "fewer than ct_min_slices = 8"],
            id="too-few-slices",
        ),
        pytest.param(
            {"thickness": "12"},
            ["Slice Thickness 12 mm is outside 0.5-10 mm"],
            id="too-thick",
        ),
        pytest.param(
            {"thickness": "0.3"},
            ["Slice Thickness 0.3 mm is outside 0.5-10 mm"],
            id="too-thin",
        ),
        pytest.param(
            {"thickness": None},
            ["Slice Thickness is missing"],
            id="no-thickness",
        ),
    ],
)
def test_ct_rejected_with_the_rule_named(
    config: AnalysisSettings, kwargs: dict, expected: list[str]
) -> None:
    good = _candidate("1.2.3.1", "CT", thickness="3")
    bad = _candidate("1.2.3.7", "CT", number=4, description="bad one", **kwargs)
    selection = select_series([bad, good], config)
    assert _uids(selection.ct) == ["1.2.3.1"]
    assert len(selection.rejected) == 1
    reason = selection.rejected[0]
    assert reason.startswith("CT series 4 1.2.3.7 (bad one): "), reason
    for text in expected:
        assert text in reason, reason


def test_every_failed_ct_rule_is_reported(config: AnalysisSettings) -> None:
    bad = _candidate("1.2.3.7", "CT", slices=3, thickness="15", image_type=("DERIVED", "PRIMARY"))
    (reason,) = select_series([bad], config).rejected
    assert "Image Type is DERIVED\\PRIMARY" in reason
    assert "Slice Thickness 15 mm is outside" in reason
    assert "3 slice(s), fewer than ct_min_slices = 8" in reason


def test_other_modalities_are_named(config: AnalysisSettings) -> None:
    report = _candidate("1.2.3.5", "SR", slices=1, number=9)
    selection = select_series([report], config)
    assert selection.ct == () and selection.pet == ()
    assert selection.rejected == ("series 9 1.2.3.5: Modality SR is not analysed",)


def test_series_without_headers_is_named(config: AnalysisSettings) -> None:
    empty = SeriesCandidate(SeriesFiles("1.2.3.6", "CT", ()), ())
    selection = select_series([empty], config)
    assert selection.ct == () and selection.pet == ()
    assert selection.rejected == ("series 1.2.3.6: no readable instances",)


def test_pet_sharing_the_chosen_ct_frame_of_reference_is_preferred(
    config: AnalysisSettings,
) -> None:
    # The thin CT (chosen) is in frame B; the PET in frame A has more slices but is second.
    ct_thick = _candidate("1.2.4.1", "CT", thickness="5", frame=FRAME_A)
    ct_thin = _candidate("1.2.4.2", "CT", thickness="1", frame=FRAME_B)
    pet_other = _candidate("1.2.4.3", "PT", slices=300, frame=FRAME_A)
    pet_same = _candidate("1.2.4.4", "PT", slices=100, frame=FRAME_B)
    selection = select_series([ct_thick, pet_other, ct_thin, pet_same], config)
    assert _uids(selection.ct) == ["1.2.4.2", "1.2.4.1"]
    assert _uids(selection.pet) == ["1.2.4.4", "1.2.4.3"]

    # Without a shared frame the PET with more slices comes first.
    selection = select_series([ct_thick, pet_same, pet_other], config)
    assert _uids(selection.pet) == ["1.2.4.3", "1.2.4.4"]


@pytest.mark.parametrize(
    ("units", "shown"),
    [("CNTS", "Units is CNTS"), ("GML", "Units is GML"), (None, "Units is missing")],
)
def test_pet_without_bqml_units_is_rejected(
    config: AnalysisSettings, units: str | None, shown: str
) -> None:
    ct = _candidate("1.2.5.1", "CT")
    pet = _candidate("1.2.5.2", "PT", units=units, number=3)
    selection = select_series([ct, pet], config)
    assert selection.pet == ()
    (reason,) = selection.rejected
    assert reason.startswith("PET series 3 1.2.5.2: "), reason
    assert f"{shown}, not BQML" in reason


def test_pet_with_too_few_slices_is_rejected(config: AnalysisSettings) -> None:
    pet = _candidate("1.2.5.3", "PT", slices=7)
    (reason,) = select_series([pet], config).rejected
    assert "7 slice(s), fewer than pet_min_slices = 8" in reason


def test_phantom_headers_qualify(config: AnalysisSettings) -> None:
    study = generate_study(2, "B", ct_size=32, ct_slices=10, pet_size=16, pet_slices=8)
    ct = SeriesCandidate(SeriesFiles(study.ct[0].SeriesInstanceUID, "CT", ()), tuple(study.ct))
    pet = SeriesCandidate(SeriesFiles(study.pet[0].SeriesInstanceUID, "PT", ()), tuple(study.pet))
    selection = select_series([pet, ct], config)
    assert selection.ct == (ct,) and selection.pet == (pet,)
    assert selection.rejected == ()


class _MustNotPredict:
    """Stands in for the CNN where the analysis has to stop before any prediction."""

    info = ModelInfo("none", "0", "0" * 64, "not used")

    def predict(self, patches: object) -> None:
        raise AssertionError("predict() was called for a study without a usable CT")


def test_study_with_only_pet_gives_no_ct_and_a_reason(
    config: AnalysisSettings, tmp_path: Path
) -> None:
    study = generate_study(4, "G", ct_size=32, ct_slices=10, pet_size=16, pet_slices=8)
    pet_only = dataclasses.replace(study, ct=[], boxes=[])
    write_study(pet_only, tmp_path)
    studies, notes = scan_folder(tmp_path)
    assert len(studies) == 1, notes
    (series,) = studies[0].series
    assert series.modality == "PT"

    candidate = SeriesCandidate(series, tuple(study.pet))
    selection = select_series([candidate], config)
    assert selection.ct == ()
    assert selection.pet == (candidate,)

    result = analyze(studies[0], config, _MustNotPredict())  # type: ignore[arg-type]
    assert result.ct_series_uid is None
    assert result.lesions == ()
    assert "no CT series qualifies for analysis" in result.skipped
