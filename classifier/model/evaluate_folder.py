"""Evaluate a model on a TCIA-layout folder: rebuild the patches the way training built them, run
the model, and write the evaluation report (classifier.model.evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from classifier.model.evaluation import PatchPredictions, write_report
from classifier.model.inference import LesionClassifier, read_model_metadata
from classifier.model.patch_set import build_patch_set, scan


def evaluate(
    model_path: Path,
    data_dir: Path,
    annotations_dir: Path | None,
    report_dir: Path,
    *,
    patients: list[str] | None = None,
) -> dict[str, Any]:
    """Rebuild the patches of a TCIA-layout folder, run the model, and write the report.

    By default it scores the test split recorded in the model file's metadata by `lungnode
    train` (validation, then train, when that is empty) when the folder is the one it was
    trained on (same data fingerprint); otherwise every patient of the folder.
    """
    model_path = Path(model_path)
    classifier = LesionClassifier.load(model_path)
    meta = read_model_metadata(model_path)
    dataset = scan(Path(data_dir), annotations_dir)
    available = {p.patient_id for p in dataset.patients}
    if patients is None:
        # A recorded split applies only to the very data the model was trained on.
        same_data = meta.get("data_fingerprint") == dataset.fingerprint()
        split = (meta.get("split") or {}) if same_data else {}
        name = next((k for k in ("test", "validation", "train") if split.get(k)), None)
        selected = [p for p in split[name] if p in available] if name else sorted(available)
        scope = f"{name} split recorded in the model" if name else "all patients in the folder"
    else:
        missing = sorted(set(patients) - available)
        if missing:
            raise ValueError(
                f"patients {missing} are not in {data_dir}; choose from {sorted(available)}"
            )
        selected, scope = list(patients), "patients given by the caller"
    if not selected:
        raise ValueError(f"no patients to evaluate in {data_dir} (scope: {scope})")
    patch_set = build_patch_set(
        dataset, selected, seed=int(meta.get("seed", 0)), progress=lambda _m: None
    )
    lesion, histology = classifier.predict(patch_set.patches)
    pred = PatchPredictions(
        patch_set.patient_ids,
        patch_set.is_lesion,
        patch_set.labels,
        lesion,
        histology,
        patch_set.kinds,
    )
    extra = {
        "model": {
            "name": classifier.info.name,
            "version": classifier.info.version,
            "sha256": classifier.info.sha256,
        },
        "data_fingerprint": dataset.fingerprint(),
        "scope": scope,
    }
    return write_report(
        pred,
        Path(report_dir),
        title=f"{classifier.info.name} {classifier.info.version}",
        history=meta.get("history"),
        extra=extra,
        seed=int(meta.get("seed", 0)),
    )
