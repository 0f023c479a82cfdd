"""Which model scores a real patient in the real-CT protocol: never one trained on it.

The bundled lesion score is fine-tuned on real patients (`classifier.model.lopo`); its metadata
(`real_data`) names them and the leave-one-patient-out fold models saved beside it
(`folds_dir`: one per held-out patient, with its sha256). A patient the bundled model trained
on is scored with the fold that held it out; any other patient with the bundled model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FOLDS_SUFFIX = "-folds"
REINSTALL = (
    "rerun `python -m classifier.model.lopo ... --install` (model card, section "
    '"Real CT: lesion score fine-tuned") to write the fold models beside the bundled model'
)


def folds_dir(model: Path) -> Path:
    """The folder of a model's fold models: `lungnode-demo.keras` -> `lungnode-demo-folds/`."""
    return model.with_name(model.stem + FOLDS_SUFFIX)


def trained_on(real_data: dict[str, Any]) -> set[str]:
    """The patient ids the model's lesion score was fine-tuned on: its folds' keys, else its
    scan ids ("Lung_Dx-A0002" or "Lung_Dx-A0002/<study uid>") cut to the patient."""
    folds = real_data.get("fold_models") or {}
    if folds:
        return set(folds)
    return {str(s).split("/", 1)[0] for s in real_data.get("patients") or []}


def scoring_model(patient_id: str, model: Path, metadata: dict[str, Any]) -> Path:
    """The model file that scores `patient_id` without having trained on it: the fold that held
    the patient out where `model`'s metadata says it was fine-tuned on the patient, else
    `model`. Raises FileNotFoundError (naming the file and the fix) when that fold is missing,
    ValueError when its sha256 is not the one recorded."""
    from classifier.model.inference import sha256_of

    real_data = metadata.get("real_data") or {}
    if patient_id not in trained_on(real_data):
        return model
    entry = (real_data.get("fold_models") or {}).get(patient_id)
    if entry is None:
        raise FileNotFoundError(
            f"{model} was fine-tuned on {patient_id} and its metadata records no fold model "
            f"that held {patient_id} out, so its scores there would be fitted: {REINSTALL}"
        )
    path = folds_dir(model) / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(
            f"fold model {path} (the fine-tune that held {patient_id} out) does not exist: "
            f"{model} was trained on {patient_id}; {REINSTALL}"
        )
    sha = sha256_of(path)
    if sha != entry["sha256"]:
        raise ValueError(
            f"fold model {path} has sha256 {sha[:12]}, {model}'s metadata records "
            f"{entry['sha256'][:12]}: it belongs to other weights; {REINSTALL}"
        )
    return path
