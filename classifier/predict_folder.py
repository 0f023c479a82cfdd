"""Offline analysis of a folder of DICOM files: `lungnode predict DIR` (no network).

Each study found in the folder is analysed like the node would, and its SR (and SEG) are written
to `<out>/<StudyInstanceUID>/`; with `png`, one picture per lesion (key CT slice in lung window,
PET overlay, box) is written beside them, and a JSON summary of the result. Histology reaches
none of them where `[results] histology` withholds it (classifier.results.histology_gate).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from classifier.analyze import analyze_study
from classifier.datasets.study_folder import scan_folder
from classifier.model.inference import LesionClassifier
from classifier.results.encode import encode
from classifier.results.histology_gate import (
    DEFAULT_HISTOLOGY_MODE,
    histology_shown,
    not_assessed_reason,
)
from classifier.results.overlay import render_lesion_png
from classifier.results.sr_encoder import DEFAULT_HISTOLOGY_MIN_PROBABILITY
from classifier.settings import AnalysisSettings
from classifier.types import StudyResult

log = logging.getLogger("lungnode.predict")


def result_summary(
    result: StudyResult, histology_not_assessed: str | None = None
) -> dict[str, object]:
    """The result as plain JSON-able data, for people and scripts reading the output folder;
    with `histology_not_assessed` (the reason) the lesions carry no histology."""
    return {
        "study_instance_uid": result.study_instance_uid,
        "analysed": result.analysed,
        "refusal": result.refusal,
        "histology_not_assessed": histology_not_assessed,
        "ct_series_uid": result.ct_series_uid,
        "pet_series_uid": result.pet_series_uid,
        "model": {
            "name": result.model.name,
            "version": result.model.version,
            "sha256": result.model.sha256,
            "clinical_use": result.model.clinical_use,
            "certainty": result.model.certainty,
        },
        "skipped": list(result.skipped),
        "timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
        "lesions": [
            {
                "tracking_id": lesion.tracking_id,
                "tracking_uid": lesion.tracking_uid,
                "side": lesion.side,
                "key_slice_sop_instance_uid": lesion.key_slice.sop_instance_uid,
                "box_rc": list(lesion.box_rc),
                "centroid_mm": [round(v, 1) for v in lesion.centroid_mm],
                "long_axis_mm": round(lesion.long_axis_mm, 1),
                "short_axis_mm": round(lesion.short_axis_mm, 1),
                "volume_ml": round(lesion.volume_ml, 2),
                "suv_max": lesion.suv_max,
                "suv_mean": lesion.suv_mean,
                "mtv_ml": lesion.mtv_ml,
                "tlg": lesion.tlg,
                "lesion_probability": round(lesion.lesion_probability, 4),
                "certainty": round(lesion.certainty_of_finding, 4),
                "histology": {k: round(v, 4) for k, v in lesion.histology.items()},
                "detected_by": lesion.detected_by,
            }
            for lesion in result.lesions
        ],
    }


def predict_folder(
    folder: Path,
    out: Path,
    *,
    config: AnalysisSettings,
    png: bool = False,
    histology: str = DEFAULT_HISTOLOGY_MODE,
    histology_min_probability: float = DEFAULT_HISTOLOGY_MIN_PROBABILITY,
) -> list[Path]:
    """Analyse every study below `folder`; returns the files written."""
    studies, notes = scan_folder(folder)
    for note in notes:
        log.info("skipped %s", note)
    if not studies:
        raise FileNotFoundError(f"DICOM folder {folder}: no DICOM images found below it")
    model = LesionClassifier.load(config.model)
    not_assessed = (
        None
        if histology_shown(histology, model.info)
        else not_assessed_reason(histology, model.info)
    )
    written: list[Path] = []
    for study in studies:
        analysis = analyze_study(study, config, model)
        result, ct, suv = analysis.result, analysis.ct, analysis.suv
        target = out / study.study_instance_uid
        target.mkdir(parents=True, exist_ok=True)
        key_pixels = (
            {x.key_slice_index: ct.array[x.key_slice_index] for x in result.lesions}
            if ct is not None
            else None
        )
        objects = encode(
            result,
            analysis.sources,
            key_pixels=key_pixels,
            histology=histology,
            histology_min_probability=histology_min_probability,
        )
        if not_assessed is not None:  # the summary and the pictures say no more than the SR
            result = dataclasses.replace(
                result,
                lesions=tuple(dataclasses.replace(x, histology={}) for x in result.lesions),
            )
        for ds in objects:
            path = target / f"{ds.Modality}-{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
        summary = target / "result.json"
        summary.write_text(json.dumps(result_summary(result, not_assessed), indent=2))
        written.append(summary)
        if png and ct is not None:
            for lesion in result.lesions:
                picture = target / f"{lesion.tracking_id.replace(' ', '-').lower()}.png"
                render_lesion_png(ct, suv, lesion, picture)
                written.append(picture)
        log.info("predicted study=%s lesions=%d", study.study_instance_uid, len(result.lesions))
    return written
