"""The real-CT protocol's model card section (classifier.model.real_ct_protocol): written between
its markers from a summary, rows held out, what the other findings are, pictures beside the
card; written again in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from classifier.model.real_ct_protocol import CARD_END, CARD_START, choose, install, judged


def _evaluation_row(scan_id: str, axis: float, others: int, fragments: int = 1) -> dict[str, Any]:
    return {
        "scan_id": scan_id,
        "tumours": 1,
        "other_findings": others,
        "false_positive_findings": [],
        "per_tumour": [
            {
                "detected": True,
                "fragments": fragments,
                "best_finding_long_axis_mm": axis,
                "hits": [
                    {
                        "finding": "Lesion 1",
                        "probability": 0.7,
                        "long_axis_mm": axis,
                        "touches_annotated_boxes": True,
                    }
                ],
                "beside": [],
                "annotated": {
                    "largest_slice_box_long_side_mm": 80.0,
                    "largest_slice_box_diagonal_mm": 100.0,
                },
            }
        ],
    }


def _row(axis: float, others: list[dict[str, Any]]) -> dict[str, Any]:
    verdict = judged(_evaluation_row("", axis, len(others)))
    verdict["other_findings"] = others
    return verdict


def _summary() -> dict[str, Any]:
    vessel = {
        "finding": "Lesion 2",
        "key_slice": 30,
        "long_axis_mm": 20.9,
        "probability": 0.67,
        "side": "left",
        "above_apex": False,
    }
    apex = {**vessel, "key_slice": 60, "long_axis_mm": 40.0, "above_apex": True}
    patients = ["Lung_Dx-P1", "Lung_Dx-P2"]
    by_radius = {
        10.0: {"Lung_Dx-P1": _row(75.0, []), "Lung_Dx-P2": _row(75.0, [vessel, apex])},
        14.0: {"Lung_Dx-P1": _row(30.0, []), "Lung_Dx-P2": _row(75.0, [vessel])},
    }
    chosen = choose({0.5: by_radius}, patients)
    return {
        "patients": patients,
        "radii_mm": [10.0, 14.0],
        "thresholds": [0.5],
        "chosen": chosen,
        "table": {"0.5": {f"{r:g}": rows for r, rows in by_radius.items()}},
    }


def test_install_writes_the_section_between_its_markers_and_the_pictures(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = _summary()
    chosen = summary["chosen"]
    pictures = out / "pictures" / f"t{chosen['threshold']:g}-r{chosen['radius_mm']:g}"
    pictures.mkdir(parents=True)
    for patient in summary["patients"]:
        (pictures / f"{patient}-findings.png").write_bytes(b"png")
    card = tmp_path / "card" / "MODEL_CARD.md"
    card.parent.mkdir()
    card.write_text("# Card\n\nbefore\n\nafter\n")
    install(summary, out, "python -m classifier.model.real_ct_protocol ...", card)
    text = card.read_text()
    assert text.startswith("# Card\n\nbefore\n\nafter\n") and CARD_START in text
    section = text.split(CARD_START, 1)[1].split(CARD_END, 1)[0]
    # P1 held out is judged at the radius chosen on P2 alone (14 mm: fewer other findings),
    # where its tumour is a 30 mm fragment; P2 held out at the radius P1 chose (10 mm).
    assert "| Lung_Dx-P1 | yes (p 0.700) | 30.0 vs 80.0-100.0 | 0 (-) | - | 14 | not met |" in (
        section
    )
    assert "2 (1 above apex, 1 not reviewed)" in section
    assert "1 of 2 held-out" in section
    for patient in summary["patients"]:
        assert (card.parent / "real-ct" / f"{patient}-findings.png").read_bytes() == b"png"
    install(summary, out, "again", card)  # in place, once
    again = card.read_text()
    assert again.count(CARD_START) == 1 and "again" in again


def test_judged_applies_the_target() -> None:
    assert judged(_evaluation_row("a", 70.0, 2))["met"]
    assert not judged(_evaluation_row("a", 50.0, 0))["met"]  # below 0.7 x 80 mm: a fragment
    assert not judged(_evaluation_row("a", 70.0, 3))["met"]
    assert not judged(_evaluation_row("a", 70.0, 0, fragments=2))["met"]
    beside = _evaluation_row("a", 70.0, 0)
    beside["per_tumour"][0]["hits"][0]["touches_annotated_boxes"] = False
    assert not judged(beside)["one_finding"]  # a centroid hit beside the tumour


def test_choose_reports_each_patient_at_the_value_chosen_on_the_others() -> None:
    # Radius 10 suits patients A and B, radius 16 suits C and D; E is met by neither.
    met, missed = _evaluation_row("x", 80.0, 0), _evaluation_row("x", 20.0, 0)
    by_radius = {
        10.0: {"A": met, "B": met, "C": missed, "D": missed, "E": missed},
        16.0: {"A": missed, "B": missed, "C": met, "D": met, "E": missed},
    }
    table = {0.5: {r: {p: judged(row) for p, row in rows.items()} for r, rows in by_radius.items()}}
    chosen = choose(table, ["A", "B", "C", "D", "E"])
    folds = chosen["folds"]
    # Held out A: on B-E radius 16 meets 2, radius 10 meets 1, so A is judged at 16 (missed).
    assert folds["A"]["radius_mm"] == 16.0 and not folds["A"]["row"]["met"]
    assert folds["C"]["radius_mm"] == 10.0 and not folds["C"]["row"]["met"]
    # Held out E: both meet 2 on the others, the tie goes to the smaller radius.
    assert folds["E"]["radius_mm"] == 10.0
    assert chosen["threshold"] == 0.5
