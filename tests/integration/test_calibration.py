"""The lesion score's Platt calibration (classifier.model.calibration): fitted on crafted
scores, its degenerate inputs refused or regularised, and the sidecar beside a model file that
LesionClassifier.load applies (or refuses when fitted for other weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from classifier.imaging.lesions import MASS_MIN_RADIUS_MM
from classifier.model.bundled import BUNDLED_MODEL
from classifier.model.calibration import (
    PlattCalibration,
    brier_score,
    calibration_path,
    fit_platt,
    log_loss,
    platt_targets,
    read_calibration,
    write_calibration,
)
from classifier.model.inference import LesionClassifier, sha256_of
from classifier.model.patches import PATCH_SHAPE
from classifier.settings import AnalysisSettings
from classifier.types import UNCALIBRATED_CERTAINTY

# Like the real candidates: tumours 0.57-0.82, vessels and the rest 0.40-0.77, overlapping.
SCORES = [0.71, 0.70, 0.81, 0.82, 0.57, 0.47, 0.77, 0.46, 0.63, 0.55, 0.67, 0.54, 0.40]
LABELS = [True, True, True, True, True, False, False, False, False, False, False, False, False]


def test_fit_is_monotonic_bounded_and_better_than_the_raw_score_on_its_data() -> None:
    fit = fit_platt(SCORES, LABELS)
    assert fit.a > 0
    grid = np.linspace(0.0, 1.0, 201)
    p = fit.probability(grid)
    assert np.all(np.diff(p) >= 0) and np.all((p > 0) & (p < 1))
    assert brier_score(fit.probability(SCORES), LABELS) < brier_score(SCORES, LABELS)
    assert log_loss(fit.probability(SCORES), LABELS) < log_loss(SCORES, LABELS)
    # 5 tumours in 13: the mean calibrated probability is near the prevalence (Platt's targets
    # pull it a little towards 1/2).
    assert abs(float(fit.probability(SCORES).mean()) - 5 / 13) < 0.05


def test_separable_scores_give_a_finite_fit_that_never_says_certain() -> None:
    # Every tumour above every other candidate: plain logistic regression would run its slope
    # to infinity; Platt's targets (here 4/5 and 1/5) keep it finite.
    scores, labels = [0.9, 0.85, 0.8, 0.4, 0.35, 0.3], [True, True, True, False, False, False]
    assert platt_targets(np.array(labels)).tolist() == pytest.approx([0.8] * 3 + [0.2] * 3)
    fit = fit_platt(scores, labels)
    assert np.isfinite(fit.a) and np.isfinite(fit.b)
    p = fit.probability(scores)
    assert p.max() < 0.95 and p.min() > 0.05


def test_constant_or_reversed_scores_are_regularised_to_the_prevalence() -> None:
    # Constant scores say nothing: the ridge picks slope 0 and the prevalence (Platt's targets).
    flat = fit_platt([0.5] * 6, [True, False, False, True, False, False])
    assert flat.a == pytest.approx(0.0, abs=1e-3)
    assert float(flat.probability(0.9)) == pytest.approx(float(flat.probability(0.1)), abs=1e-3)
    # Scores that rank the others above the tumours: the slope stays at 0, never reversing the
    # order the reporting threshold and the findings' order rely on.
    reversed_fit = fit_platt([0.2, 0.3, 0.8, 0.9], [True, True, False, False])
    assert reversed_fit.a == 0.0
    assert float(reversed_fit.probability(0.5)) == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.9, 0.8], [True, True], "both kinds"),
        ([0.2, 0.1], [False, False], "both kinds"),
        ([], [], "both kinds"),
        ([0.2, 0.7], [True], "one label per score"),
    ],
)
def test_degenerate_inputs_are_refused(scores: list, labels: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_platt(scores, labels)


def test_a_negative_or_infinite_slope_is_refused() -> None:
    with pytest.raises(ValueError, match="a >= 0"):
        PlattCalibration(-0.1, 0.0)
    with pytest.raises(ValueError, match="finite"):
        PlattCalibration(float("inf"), 0.0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) Keras model file with the product's two named outputs."""
    import keras

    inputs = keras.Input(PATCH_SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    lesion = keras.layers.Dense(1, activation="sigmoid", name="lesion")(x)
    histology = keras.layers.Dense(4, activation="softmax", name="histology")(x)
    model = keras.Model(inputs, {"lesion": lesion, "histology": histology}, name="tiny")
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def test_load_applies_the_calibration_beside_the_model_and_refuses_a_stale_one(
    tiny_model: Path,
) -> None:
    sidecar = calibration_path(tiny_model)
    sidecar.unlink(missing_ok=True)
    plain = LesionClassifier.load(tiny_model)
    assert plain.calibration is None and plain.info.certainty == UNCALIBRATED_CERTAINTY
    scores = np.array([0.3, 0.6, 0.9])
    assert plain.certainty(scores) == pytest.approx(scores)

    calibration = PlattCalibration(1.5, -1.4)
    written = write_calibration(
        tiny_model, calibration, sha256_of(tiny_model), {"command": "test", "data": "crafted"}
    )
    assert written == tiny_model.with_name("tiny.keras.calibration.json")
    assert json.loads(written.read_text())["command"] == "test"
    loaded = LesionClassifier.load(tiny_model)
    assert loaded.calibration == calibration
    assert loaded.info.certainty == calibration.describe()
    assert loaded.certainty(scores) == pytest.approx(calibration.probability(scores))

    # Fitted for other weights: refused, naming the file and what to do.
    write_calibration(tiny_model, calibration, "0" * 64, {})
    with pytest.raises(ValueError, match="for weights sha256 000000000000.*real-ct-protocol"):
        LesionClassifier.load(tiny_model)
    written.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        read_calibration(tiny_model, sha256_of(tiny_model))
    written.unlink()


def test_a_sidecar_that_keeps_the_raw_score_says_why_in_the_certainty(tiny_model: Path) -> None:
    held_out = {"brier_raw": 0.134, "brier_calibrated": 0.167, "candidates": 8}
    written = write_calibration(tiny_model, None, sha256_of(tiny_model), {"held_out": held_out})
    try:
        assert json.loads(written.read_text())["method"] == "none"
        assert read_calibration(tiny_model, sha256_of(tiny_model)) is None
        loaded = LesionClassifier.load(tiny_model)
        assert loaded.calibration is None
        assert loaded.info.certainty == (
            "raw lesion score, kept by the real-CT protocol: held out, the Platt calibration "
            "did not improve it (Brier score raw 0.134 vs calibrated 0.167)"
        )
        scores = np.array([0.3, 0.6, 0.9])
        assert loaded.certainty(scores) == pytest.approx(scores)
        # still for these weights only
        write_calibration(tiny_model, None, "0" * 64, {"held_out": held_out})
        with pytest.raises(ValueError, match="for weights sha256 000000000000"):
            LesionClassifier.load(tiny_model)
    finally:
        written.unlink()


def test_the_bundled_model_is_calibrated_at_the_protocols_operating_point() -> None:
    # Written by `lungnode real-ct-protocol ... --install` for the bundled weights; the node's
    # default threshold is the one the protocol chose on its held-out rows (on the raw score).
    sidecar = json.loads(calibration_path(BUNDLED_MODEL).read_text())
    assert sidecar["model_sha256"] == sha256_of(BUNDLED_MODEL)
    # applied only where it beats the raw score on the held-out candidates, else the raw kept
    held_out = sidecar["held_out"]
    applied = held_out["brier_calibrated"] < held_out["brier_raw"]
    assert sidecar["method"] == ("platt" if applied else "none")
    calibration = read_calibration(BUNDLED_MODEL, sha256_of(BUNDLED_MODEL))
    assert (calibration is not None) == applied
    point = sidecar["operating_point"]
    assert point["applies_to"] == "the raw lesion score"
    assert point["lesion_probability_threshold"] == AnalysisSettings().lesion_probability_threshold
    # fitted on the candidates the node proposes: at its own detector radius
    node_radius = AnalysisSettings().mass_radius_mm or MASS_MIN_RADIUS_MM
    assert point["mass_radius_mm"] == node_radius
    assert sidecar["held_out"]["candidates"] > 0 and "real_ct_protocol" in sidecar["command"]
