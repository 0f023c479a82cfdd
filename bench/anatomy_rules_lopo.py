"""The detector's airway and vessel rules (classifier.imaging.lesions: TRACHEA_CONTACT_MM,
TUBE_CONTINUATION, TUBE_END_FRACTION, TUBE_MAX_CALIBRE_MM) chosen leave one patient out over
the real studies, one value at a time with the others at their defaults.

Each tried value runs the analysis (bundled model, default settings) on every annotated patient
and judges each study as the real-CT protocol does (`real_ct_protocol.judged`: the tumour as one
finding of the right size, at most 2 other findings); per held-out patient the value chosen is
the one whose rows on the other patients score best (`real_ct_protocol._score`), ties going to
the default (the value the rule's anatomy gives). A value far outside the range (1e9 mm, a
continuation of 2) switches the rule off.

    python bench/anatomy_rules_lopo.py --data ../shared/data/lung-pet-ct-dx \
        --annotations ../shared/data/lung-pet-ct-dx/Annotation \
        --annotations tests/data/annotations-approximate --out build/anatomy-rules-lopo.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import classifier.imaging.lesions as lesions
from classifier.model.detector_eval import (
    _annotations_by_patient,
    evaluate_study_folder,
    study_row,
)
from classifier.model.inference import LesionClassifier
from classifier.model.real_ct_protocol import _score, judged
from classifier.settings import AnalysisSettings

GRID: dict[str, list[float]] = {
    "TRACHEA_CONTACT_MM": [20.0, 30.0, 40.0, 1e9],
    "TUBE_CONTINUATION": [0.3, 0.5, 0.7, 2.0],
    "TUBE_END_FRACTION": [0.8, 0.9, 1.0],
    "TUBE_MAX_CALIBRE_MM": [20.0, 25.0, 30.0],
}
THRESHOLDS = (0.4, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--annotations", type=Path, action="append", default=[])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    annotated, folders, _ = _annotations_by_patient(args.data, args.annotations)
    patients = sorted(p for p in folders if annotated.get(p))
    settings = AnalysisSettings()
    scoring = dataclasses.replace(
        settings, lesion_probability_threshold=0.0, max_findings_per_study=0
    )
    model = LesionClassifier.load(settings.model)
    defaults = {name: float(getattr(lesions, name)) for name in GRID}
    table: dict[str, dict[float, dict[float, dict[str, Any]]]] = {}
    for name, values in GRID.items():
        table[name] = {}
        for value in values:
            for other, default in defaults.items():
                setattr(lesions, other, default)
            setattr(lesions, name, value)
            rows: dict[float, dict[str, Any]] = {t: {} for t in THRESHOLDS}
            for patient in patients:
                for study in evaluate_study_folder(
                    patient, folders[patient], annotated[patient], scoring, model
                ):
                    for t in THRESHOLDS:
                        row = study_row(study, t, max_findings=settings.max_findings_per_study)
                        rows[t][patient] = judged(row)
            table[name][value] = rows
    for name, default in defaults.items():
        setattr(lesions, name, default)
    chosen: dict[str, dict[str, Any]] = {}
    for name, by_value in table.items():
        for t in THRESHOLDS:
            folds = {}
            for held_out in patients:
                others = [p for p in patients if p != held_out]
                best = max(
                    GRID[name],
                    key=lambda v: (
                        _score([by_value[v][t][p] for p in others]),
                        -abs(v - defaults[name]),
                    ),
                )
                row = by_value[best][t][held_out]
                folds[held_out] = {"value": best, "met": row["met"], "others": row["others"]}
            chosen[f"{name} at {t:g}"] = folds
            print(
                name,
                f"threshold {t:g}:",
                {p: (f["value"], f["met"], f["others"]) for p, f in folds.items()},
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"defaults": defaults, "chosen": chosen, "table": table}, indent=1, default=str)
    )


if __name__ == "__main__":
    main()
