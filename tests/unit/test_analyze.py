"""analyze() end to end on a written phantom study with a small real Keras model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest

from classifier.analyze import STAGES, analyze, analyze_study
from classifier.datasets.phantom import generate_study, write_study
from classifier.datasets.study_folder import scan_folder
from classifier.model.calibration import PlattCalibration
from classifier.model.inference import LesionClassifier
from classifier.model.patches import PATCH_SHAPE
from classifier.results import codes
from classifier.results.encode import encode
from classifier.settings import AnalysisSettings
from classifier.types import UNCALIBRATED_CERTAINTY, ModelInfo
from storage.states import ResultKind
from storage.study_files import StudyFiles


def _tiny_classifier(lesion_bias: float) -> LesionClassifier:
    """A real (untrained) Keras model with the product's two named outputs."""
    import keras

    inputs = keras.Input(PATCH_SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    lesion = keras.layers.Dense(
        1,
        activation="sigmoid",
        name="lesion",
        bias_initializer=keras.initializers.Constant(lesion_bias),
    )(x)
    histology = keras.layers.Dense(4, activation="softmax", name="histology")(x)
    model = keras.Model(inputs, {"lesion": lesion, "histology": histology}, name="tiny")
    return LesionClassifier(model, ModelInfo("tiny", "0", "0" * 64, "nothing"))


def _config(threshold: float = 0.5) -> AnalysisSettings:
    return AnalysisSettings(lesion_probability_threshold=threshold)


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyFiles, object]:
    study = generate_study(3, "A", ct_size=128, ct_slices=40, pet=True)
    folder = tmp_path_factory.mktemp("phantom")
    write_study(study, folder)
    studies, notes = scan_folder(folder)
    assert len(studies) == 1, notes
    return studies[0], study


def test_analyze_finds_the_phantom_lesion_with_pet(
    phantom_files: tuple[StudyFiles, object],
) -> None:
    files, study = phantom_files
    analysis = analyze_study(files, _config(), _tiny_classifier(lesion_bias=5.0))
    result, ct, suv = analysis.result, analysis.ct, analysis.suv
    assert result.analysed, result.skipped
    # The headers read for series selection come back for encode(), in evidence order.
    assert [str(h.SOPInstanceUID) for h in analysis.sources] == [
        r.sop_instance_uid for r in result.evidence
    ]
    assert all("PixelData" not in h for h in analysis.sources)
    # The volumes handed back for pictures: CT in HU, SUV resampled onto the CT grid.
    assert ct is not None and suv is not None
    assert ct.shape == result.ct_shape == suv.shape
    assert ct.series_instance_uid == result.ct_series_uid
    assert suv.modality == "PT"
    assert result.pet_series_uid is not None, result.skipped
    assert set(result.timings_s) == set(STAGES)
    assert result.ct_shape == (40, 128, 128)
    assert len(result.ct_slices) == 40 and len(result.pet_slices) > 0
    assert result.lesions, "no lesion reported"
    truth = study.lesions[0]
    best = min(
        result.lesions,
        key=lambda lesion: np.linalg.norm(np.subtract(lesion.centroid_mm, truth.center_mm)),
    )
    assert np.linalg.norm(np.subtract(best.centroid_mm, truth.center_mm)) < truth.radius_mm
    assert best.suv_max is not None and best.suv_max > 2.5
    assert best.detected_by in {"CT+PET", "CT"}
    assert [lesion.tracking_id for lesion in result.lesions] == [
        f"Lesion {i + 1}" for i in range(len(result.lesions))
    ]
    assert len({lesion.tracking_uid for lesion in result.lesions}) == len(result.lesions)
    assert abs(sum(best.histology.values()) - 1.0) < 1e-4


def test_threshold_drops_low_probability_candidates(
    phantom_files: tuple[StudyFiles, object],
) -> None:
    files, _ = phantom_files
    result = analyze(files, _config(0.5), _tiny_classifier(lesion_bias=-8.0))
    assert result.analysed and result.lesions == ()


class _FixedScores(LesionClassifier):
    """Gives the candidates the lesion probabilities it is built with, in their order."""

    def __init__(self, scores: list[float], calibration: PlattCalibration | None = None) -> None:
        self.scores = np.array(scores, dtype=np.float32)
        self.calibration = calibration
        self.info = ModelInfo("fixed", "0", "0" * 64, "nothing")

    def predict(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(patches)
        return self.scores[:n], np.full((n, 4), 0.25, dtype=np.float32)


def test_max_findings_per_study_keeps_the_most_probable_and_says_so(
    phantom_files: tuple[StudyFiles, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    import classifier.analyze as analyze_module

    files, _ = phantom_files
    real = analyze_module.find_candidates
    # The phantom's candidate four times over, scored 0.6, 0.9, 0.3 and 0.7.
    monkeypatch.setattr(analyze_module, "find_candidates", lambda *a, **k: real(*a, **k)[:1] * 4)
    scores = _FixedScores([0.6, 0.9, 0.3, 0.7])
    everything = analyze(files, AnalysisSettings(max_findings_per_study=0), scores)
    assert [x.lesion_probability for x in everything.lesions] == pytest.approx([0.9, 0.7, 0.6])
    assert not any("left out" in r for r in everything.skipped)
    two = analyze(files, AnalysisSettings(max_findings_per_study=2), scores)
    assert [x.lesion_probability for x in two.lesions] == pytest.approx([0.9, 0.7])
    assert [x.tracking_id for x in two.lesions] == ["Lesion 1", "Lesion 2"]
    notes = [r for r in two.skipped if "left out" in r]
    assert len(notes) == 1 and notes[0].startswith("1 further finding(s)"), notes
    assert "max_findings_per_study" in notes[0]


def test_unusable_study_returns_reasons(tmp_path: Path) -> None:
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not dicom")
    from storage.study_files import InstanceFile, SeriesFiles

    files = StudyFiles(
        "1.2.3", (SeriesFiles("1.2.3.4", "CT", (InstanceFile(bad, "1.2.3.4.5", "1.2"),)),)
    )
    analysis = analyze_study(files, _config(), _tiny_classifier(0.0))
    result, ct, suv = analysis.result, analysis.ct, analysis.suv
    assert ct is None and suv is None and analysis.sources == []
    assert result == analyze(files, _config(), _tiny_classifier(0.0))
    assert not result.analysed
    assert any("not readable" in r for r in result.skipped)
    assert any("no CT series" in r for r in result.skipped)


def test_threshold_applies_to_the_raw_score_and_findings_carry_the_calibrated_certainty(
    phantom_files: tuple[StudyFiles, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    import classifier.analyze as analyze_module

    files, _ = phantom_files
    real = analyze_module.find_candidates
    monkeypatch.setattr(analyze_module, "find_candidates", lambda *a, **k: real(*a, **k)[:1] * 4)
    # Calibrated, every score reads far lower (0.6 -> 0.17): the same three are reported.
    calibration = PlattCalibration(1.0, -2.0)
    scores = _FixedScores([0.6, 0.9, 0.3, 0.7], calibration)
    result = analyze(files, AnalysisSettings(max_findings_per_study=0), scores)
    assert [x.lesion_probability for x in result.lesions] == pytest.approx([0.9, 0.7, 0.6])
    expected = calibration.probability([0.9, 0.7, 0.6])
    assert [x.certainty_of_finding for x in result.lesions] == pytest.approx(expected)
    assert all(x.certainty_of_finding < 0.6 for x in result.lesions)


def _text_values(item: Any) -> list[str]:
    """Every TEXT value in an SR content tree."""
    found = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        found += _text_values(child)
    return found


def _sr_certainties(objects: list) -> tuple[list[float], list[str]]:
    """The Certainty of Finding of every lesion in an encoded SR and the SR's algorithm
    parameters (TEXT items starting "certainty=")."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(objects[0])
    values = [
        float(m.value)
        for group in sr.content.get_volumetric_roi_measurement_groups()
        for m in group.get_measurements()
        if m.name == codes.CERTAINTY_OF_FINDING
    ]
    return values, [t for t in _text_values(objects[0]) if t.startswith("certainty=")]


def test_the_sr_certainty_is_the_calibrated_probability_when_the_model_has_one(
    phantom_files: tuple[StudyFiles, object],
) -> None:
    files, _ = phantom_files
    tiny = _tiny_classifier(lesion_bias=5.0)
    calibration = PlattCalibration(0.5, -1.0)
    calibrated = LesionClassifier(tiny.model, tiny.info, calibration)
    analysis = analyze_study(files, _config(), calibrated)
    lesions = analysis.result.lesions
    assert lesions and calibrated.info.certainty == calibration.describe()
    expected = [100 * float(calibration.probability(x.lesion_probability)) for x in lesions]
    raw_percent = [100 * x.lesion_probability for x in lesions]
    assert all(abs(e - r) > 1 for e, r in zip(expected, raw_percent, strict=True))
    values, parameters = _sr_certainties(
        encode(analysis.result, analysis.sources, kinds=(ResultKind.SR, ResultKind.SEG))
    )
    assert values == pytest.approx(expected, abs=0.01)
    assert parameters and all(p.startswith("certainty=calibrated: Platt") for p in parameters)
    # Without a calibration the SR carries the raw score and says it is uncalibrated.
    raw = analyze_study(files, _config(), tiny)
    assert tiny.info.certainty == UNCALIBRATED_CERTAINTY
    values, parameters = _sr_certainties(
        encode(raw.result, raw.sources, kinds=(ResultKind.SR, ResultKind.SEG))
    )
    assert values == pytest.approx(
        [100 * x.lesion_probability for x in raw.result.lesions], abs=0.01
    )
    assert parameters and all(p.startswith("certainty=uncalibrated") for p in parameters)
