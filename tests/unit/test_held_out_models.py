"""The real-CT protocol scores each patient with weights that never trained on it."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from classifier.model.detector_eval import StudyEvaluation
from classifier.model.held_out_models import folds_dir, scoring_model, trained_on
from classifier.model.inference import read_model_metadata, sha256_of, write_model_metadata
from classifier.model.lopo import RealPatient, fold_patients, training_scans

PATIENTS = ("Lung_Dx-A0002", "Lung_Dx-E0001", "Lung_Dx-E0002")


def _archive(path: Path, metadata: dict[str, Any], config: str = "{}") -> Path:
    """A .keras-like zip carrying lungnode metadata (what lopo writes on each fold)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", config)
    write_model_metadata(path, metadata)
    return path


def _bundled(tmp_path: Path, fine_tuned_on: tuple[str, ...]) -> tuple[Path, dict[str, Any]]:
    """A bundled model fine-tuned on `fine_tuned_on`, its folds written beside it as lopo
    --install does; its metadata."""
    model = tmp_path / "lungnode-demo.keras"
    folds = {}
    for patient in fine_tuned_on:
        fold = _archive(folds_dir(model) / f"{patient}.keras", {"held_out_patient": patient})
        folds[patient] = {"file": fold.name, "sha256": sha256_of(fold)}
    meta = {"real_data": {"patients": list(fine_tuned_on), "fold_models": folds}}
    _archive(model, meta)
    return model, read_model_metadata(model)


def test_each_trained_patient_is_scored_by_the_fold_that_held_it_out(tmp_path: Path) -> None:
    model, meta = _bundled(tmp_path, PATIENTS[:2])
    for patient in PATIENTS[:2]:
        path = scoring_model(patient, model, meta)
        assert path == folds_dir(model) / f"{patient}.keras"
        assert read_model_metadata(path)["held_out_patient"] == patient
    # a patient the bundled model never trained on is scored by it
    assert scoring_model(PATIENTS[2], model, meta) == model


def test_no_patient_is_ever_scored_by_weights_trained_on_it(tmp_path: Path) -> None:
    model, meta = _bundled(tmp_path, PATIENTS)
    for patient in PATIENTS:
        path = scoring_model(patient, model, meta)
        scorer_trained_on = (
            trained_on(read_model_metadata(path).get("real_data") or {})
            if path == model
            else set(PATIENTS) - {read_model_metadata(path)["held_out_patient"]}
        )
        assert patient not in scorer_trained_on


def test_a_missing_fold_file_is_named_with_the_fix(tmp_path: Path) -> None:
    model, meta = _bundled(tmp_path, PATIENTS)
    (folds_dir(model) / f"{PATIENTS[1]}.keras").unlink()
    with pytest.raises(FileNotFoundError, match=r"Lung_Dx-E0001\.keras.*lopo \.\.\. --install"):
        scoring_model(PATIENTS[1], model, meta)
    assert scoring_model(PATIENTS[0], model, meta) != model


def test_a_model_fine_tuned_without_folds_is_refused_not_read(tmp_path: Path) -> None:
    model = _archive(tmp_path / "lungnode-demo.keras", {"real_data": {"patients": [PATIENTS[0]]}})
    with pytest.raises(FileNotFoundError, match="no fold model that held Lung_Dx-A0002 out"):
        scoring_model(PATIENTS[0], model, read_model_metadata(model))


def test_a_fold_of_other_weights_is_refused(tmp_path: Path) -> None:
    model, meta = _bundled(tmp_path, PATIENTS[:1])
    _archive(folds_dir(model) / f"{PATIENTS[0]}.keras", {"held_out_patient": "someone else"})
    with pytest.raises(ValueError, match="belongs to other weights"):
        scoring_model(PATIENTS[0], model, meta)


def _scan(scan_id: str, patient_id: str) -> RealPatient:
    study = StudyEvaluation(scan_id, patient_id, None, (), (), (), ())
    empty = np.zeros((0, 64, 64, 8), dtype=np.float32)
    return RealPatient(scan_id, study, empty, empty, np.zeros(0, bool), np.zeros(0, str))


def test_lopo_holds_out_a_patient_with_two_studies_whole() -> None:
    scans = [
        _scan("Lung_Dx-A0002/1.2.3", "Lung_Dx-A0002"),
        _scan("Lung_Dx-E0001", "Lung_Dx-E0001"),
        _scan("Lung_Dx-A0002/1.2.4", "Lung_Dx-A0002"),
    ]
    folds = fold_patients(scans)
    assert sorted(folds) == ["Lung_Dx-A0002", "Lung_Dx-E0001"]
    assert [p.scan_id for p in folds["Lung_Dx-A0002"]] == [
        "Lung_Dx-A0002/1.2.3",
        "Lung_Dx-A0002/1.2.4",
    ]
    for patient, held in folds.items():
        training = training_scans(scans, patient)
        assert not {q.scan_id for q in training} & {p.scan_id for p in held}
        assert len(training) + len(held) == len(scans)


def test_the_bundled_model_has_a_held_out_fold_for_every_patient_it_trained_on() -> None:
    from classifier.model.bundled import BUNDLED_MODEL

    meta = read_model_metadata(BUNDLED_MODEL)
    patients = trained_on(meta.get("real_data") or {})
    assert patients, "the bundled model records no real fine-tuning patients (MODEL_CARD.md)"
    for patient in patients:
        path = scoring_model(patient, BUNDLED_MODEL, meta)  # checks the recorded sha256
        assert path != BUNDLED_MODEL
        assert read_model_metadata(path)["held_out_patient"] == patient


def test_lopo_keeps_the_chosen_lengths_folds_and_installs_them_beside_the_model(
    tmp_path: Path,
) -> None:
    from classifier.model.lopo import _fold_path, _keep_folds, install_folds

    out = tmp_path / "lopo"
    for epochs in (6, 10):
        for patient in PATIENTS:
            _archive(_fold_path(out, epochs, patient), {}, config=f"{epochs} epochs")
    kept = _keep_folds(out, 10, PATIENTS, (6, 10))
    assert sorted(kept) == sorted(PATIENTS)
    assert sorted(p.name for p in (out / "folds").iterdir()) == [f"{p}.keras" for p in PATIENTS]
    for patient, entry in kept.items():
        path = out / "folds" / entry["file"]
        assert read_model_metadata(path)["held_out_patient"] == patient
        with zipfile.ZipFile(path) as zf:
            assert zf.read("config.json") == b"10 epochs"
    model = _archive(tmp_path / "weights" / "lungnode-demo.keras", {"real_data": {}})
    stale = _archive(folds_dir(model) / "Lung_Dx-OLD.keras", {})
    install_folds(out, kept, model)
    assert not stale.exists()
    meta = read_model_metadata(model) | {"real_data": {"fold_models": kept}}
    for patient in PATIENTS:
        assert scoring_model(patient, model, meta) == folds_dir(model) / f"{patient}.keras"
