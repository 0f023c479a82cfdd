"""Histology a reader can trust, or none (issue 16, item 7): under `[results] histology = auto`
the result objects state histology only for a model whose metadata records real-patient
histology accuracy above the majority-class baseline; otherwise the SR says it was not
assessed, and why. `on` states it, `off` never does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from dicom_validators import dciodvfy_report
from encoded_cases import KNOWN_DCIODVFY_WARNINGS, MODEL, Case, write_case

from classifier.model.inference import real_histology
from classifier.results import codes
from classifier.results.histology_gate import histology_shown
from classifier.types import ModelInfo
from scp_node.web import findings

COLLECTION_BASELINE = 251 / 355  # always "A" on Lung-PET-CT-Dx: 70.7 %


def _items(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_items(item))
    return out


def _names(ds: pydicom.Dataset) -> set[str]:
    return {
        i.ConceptNameCodeSequence[0].CodeValue for i in _items(ds) if "ConceptNameCodeSequence" in i
    }


def _texts(ds: pydicom.Dataset) -> list[str]:
    return [str(i.TextValue) for i in _items(ds) if "TextValue" in i]


def _histology_items(sr: pydicom.Dataset) -> set[str]:
    stated = {c.value for c in codes.PROBABILITY_OF_HISTOLOGY.values()}
    return _names(sr) & (stated | {codes.ASSOCIATED_MORPHOLOGY.value})


def _not_assessed(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    return [
        i
        for i in _items(sr)
        if "ConceptNameCodeSequence" in i
        and i.ConceptNameCodeSequence[0].CodeValue == codes.HISTOLOGY_ASSESSMENT.value
    ]


def _encode(case: Case, tmp_path: Path, name: str, model: ModelInfo, mode: str) -> Case:
    result = dataclasses.replace(case.result, model=model)
    return write_case(name, result, case.sources, tmp_path, histology=mode)


def test_auto_with_the_demo_model_states_no_histology_and_says_why(
    encoded_cases: dict[str, Case],
) -> None:
    case = encoded_cases["histology-auto"]
    sr = pydicom.dcmread(case.paths[0])
    assert _histology_items(sr) == set()
    flags = _not_assessed(sr)
    assert len(flags) == len(case.result.lesions) >= 1
    assert {f.ConceptCodeSequence[0].CodeValue for f in flags} == {
        codes.HISTOLOGY_NOT_ASSESSED.value
    }
    texts = _texts(sr)
    assert any("Histologic type was not assessed" in t and "not been measured" in t for t in texts)
    assert not any("most probably" in t for t in texts)
    # Neither the presentation state nor the key images state it either.
    for ds in case.objects[1:]:
        assert "most probable type" not in str(ds), ds.Modality
    # highdicom reads the TID 1411 group with the not-assessed evaluation back.
    report = hd.sr.srread(case.paths[0])
    (group,) = report.content.get_volumetric_roi_measurement_groups()
    assert group.get_qualitative_evaluations(name=codes.HISTOLOGY_ASSESSMENT)
    errors, warnings = dciodvfy_report(case.paths[0])
    assert errors == []
    assert [w for w in warnings if not any(k in w for k in KNOWN_DCIODVFY_WARNINGS)] == []


def test_on_states_the_probabilities(encoded_cases: dict[str, Case]) -> None:
    sr = pydicom.dcmread(encoded_cases["ct"].paths[0])
    assert {c.value for c in codes.PROBABILITY_OF_HISTOLOGY.values()} <= _histology_items(sr)
    assert _not_assessed(sr) == []


def test_auto_states_histology_of_a_model_above_the_baseline(
    encoded_cases: dict[str, Case], tmp_path: Path
) -> None:
    trusted = dataclasses.replace(
        MODEL, histology_real_accuracy=0.80, histology_real_baseline=COLLECTION_BASELINE
    )
    sr = pydicom.dcmread(
        _encode(encoded_cases["ct"], tmp_path, "trusted", trusted, "auto").paths[0]
    )
    assert {c.value for c in codes.PROBABILITY_OF_HISTOLOGY.values()} <= _histology_items(sr)
    assert _not_assessed(sr) == []


def test_auto_withholds_histology_of_a_model_at_or_below_the_baseline(
    encoded_cases: dict[str, Case], tmp_path: Path
) -> None:
    weak = dataclasses.replace(
        MODEL, histology_real_accuracy=0.65, histology_real_baseline=COLLECTION_BASELINE
    )
    sr = pydicom.dcmread(_encode(encoded_cases["ct"], tmp_path, "weak", weak, "auto").paths[0])
    assert _histology_items(sr) == set()
    assert any("(65.0 %) is not above" in t and "(70.7 %)" in t for t in _texts(sr))


def test_off_withholds_histology_even_of_a_trusted_model(
    encoded_cases: dict[str, Case], tmp_path: Path
) -> None:
    trusted = dataclasses.replace(MODEL, histology_real_accuracy=0.9, histology_real_baseline=0.7)
    sr = pydicom.dcmread(_encode(encoded_cases["ct"], tmp_path, "off", trusted, "off").paths[0])
    assert _histology_items(sr) == set()
    assert any("switched off" in t for t in _texts(sr))


def test_gate_rule_and_mode_validation() -> None:
    assert not histology_shown("auto", MODEL)
    assert histology_shown("on", MODEL)
    at_baseline = dataclasses.replace(
        MODEL, histology_real_accuracy=0.707, histology_real_baseline=0.707
    )
    assert not histology_shown("auto", at_baseline)
    with pytest.raises(ValueError, match="'maybe' is not one of auto, on, off"):
        histology_shown("maybe", MODEL)


def test_model_metadata_fields_are_read_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    assert real_histology({}, path) == {
        "histology_real_accuracy": None,
        "histology_real_baseline": None,
    }
    block = {"histology_real_patients": {"accuracy": 0.8, "majority_baseline": 0.707}}
    assert real_histology(block, path) == {
        "histology_real_accuracy": 0.8,
        "histology_real_baseline": 0.707,
    }
    with pytest.raises(ValueError, match="majority_baseline is '70.7'"):
        real_histology(
            {"histology_real_patients": {"accuracy": 0.8, "majority_baseline": "70.7"}}, path
        )


def test_console_findings_follow_the_same_rule(encoded_cases: dict[str, Case]) -> None:
    """An SR that states histology (written with `on`, or before the rule) shows it on the
    Findings page only when histology is to be shown; else one "not assessed" row instead."""
    path = encoded_cases["ct"].paths[0]

    def rows(show: bool) -> list[tuple[str, str, str]]:
        groups = findings.measurements(path, show_histology=show)["groups"]
        return [row for group in groups for row in group["rows"]]

    assert any(name.startswith("Probability of") for name, _, _ in rows(True))
    hidden = rows(False)
    assert not any(name.startswith("Probability of") for name, _, _ in hidden)
    assert not any(name == "Associated morphology" for name, _, _ in hidden)
    assert findings.NOT_ASSESSED_ROW in hidden
    assert any(name == "Certainty of Finding" for name, _, _ in hidden)
    auto = findings.measurements(encoded_cases["histology-auto"].paths[0])["groups"]
    assert findings.NOT_ASSESSED_ROW in [row for group in auto for row in group["rows"]]
