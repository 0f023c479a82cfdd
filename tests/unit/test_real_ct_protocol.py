"""The real-CT protocol's model card section (classifier.model.real_ct_protocol): written between
its markers from a summary, rows held out, what the other findings are, pictures beside the
card; written again in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from classifier.model.calibration import brier_score, fit_platt
from classifier.model.real_ct_calibration import calibrate
from classifier.model.real_ct_calibration import card_section as calibration_section
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


def _missed(scan_id: str) -> dict[str, Any]:
    """A study row whose tumour no reported finding touches (scored below the threshold)."""
    row = _evaluation_row(scan_id, 70.0, 0)
    row["per_tumour"][0].update({"detected": False, "fragments": 0, "hits": []})
    row["per_tumour"][0]["best_finding_long_axis_mm"] = None
    return row


def test_choose_puts_a_missed_tumour_before_any_number_of_other_findings() -> None:
    # At 0.6 four tumours are found with no other finding and E's tumour is missed; at 0.5 every
    # tumour is found, D with 3 other findings (over the target) and E with 2. Both meet the
    # whole target on four rows; a sum would take 0.6 for its fewer other findings, a reader
    # takes 0.5: the missed tumour weighs more.
    clean = {p: _evaluation_row(p, 80.0, 0) for p in "ABC"}
    rows = {
        0.6: {**clean, "D": _evaluation_row("D", 80.0, 0), "E": _missed("E")},
        0.5: {**clean, "D": _evaluation_row("D", 80.0, 3), "E": _evaluation_row("E", 80.0, 2)},
    }
    table = {t: {10.0: {p: judged(r) for p, r in by.items()}} for t, by in rows.items()}
    chosen = choose(table, list("ABCDE"))
    assert sum(f["row"]["met"] for f in chosen["all"][0.6].values()) == 4
    assert sum(f["row"]["met"] for f in chosen["all"][0.5].values()) == 4
    assert chosen["threshold"] == 0.5
    # With every tumour found, fewer studies over the target win over fewer findings in all:
    # one study with 7 others beats two with 3 each.
    over = {
        0.5: {**clean, "D": _evaluation_row("D", 80.0, 7), "E": _evaluation_row("E", 80.0, 0)},
        0.6: {**clean, "D": _evaluation_row("D", 80.0, 3), "E": _evaluation_row("E", 80.0, 3)},
    }
    table = {t: {10.0: {p: judged(r) for p, r in by.items()}} for t, by in over.items()}
    assert choose(table, list("ABCDE"))["threshold"] == 0.5


def _candidate(scan_id: str, score: float, tumour: bool) -> dict[str, Any]:
    return {"scan_id": scan_id, "finding": "Lesion", "score": score, "tumour": tumour}


def test_calibration_is_fitted_leave_one_patient_out_and_pooled_on_held_out_rows() -> None:
    scores = {
        "P1": [(0.81, True), (0.66, False), (0.47, False)],
        "P2": [(0.71, True), (0.55, False)],
        "P3": [(0.57, True), (0.67, False), (0.54, False), (0.40, False)],
    }
    at_10 = {p: [_candidate(p, s, t) for s, t in rows] for p, rows in scores.items()}
    # At 12 mm P1 has only its tumour: its fold is judged at 10 mm, where it has three.
    at_12 = {**at_10, "P1": at_10["P1"][:1]}
    folds = {"P1": {"radius_mm": 10.0}, "P2": {"radius_mm": 12.0}, "P3": {"radius_mm": 12.0}}
    summary = {
        "patients": ["P1", "P2", "P3"],
        "candidates": {"10": at_10, "12": at_12},
        "chosen": {"threshold": 0.5, "radius_mm": 12.0, "folds": folds},
    }
    result = calibrate(summary, score_trained_on=["P2"])
    held_out = result["folds"]["P1"]
    fit = fit_platt([0.71, 0.55, 0.57, 0.67, 0.54, 0.40], [True, False, True, False, False, False])
    assert held_out["a"] == pytest.approx(fit.a) and held_out["b"] == pytest.approx(fit.b)
    assert [c["calibrated"] for c in held_out["candidates"]] == pytest.approx(
        fit.probability([0.81, 0.66, 0.47]), abs=1e-4
    )
    pooled = result["pooled_held_out"]
    assert pooled["candidates"] == 3 + 2 + 4 and pooled["tumours"] == 3
    raw = [s for p in ("P1",) for s, _ in scores[p]] + [0.71, 0.55, 0.57, 0.67, 0.54, 0.40]
    labels = [True, False, False, True, False, True, False, False, False]
    assert pooled["brier_raw"] == pytest.approx(brier_score(raw, labels), abs=1e-4)
    # The patients the lesion score never saw, apart: P1 and P3.
    unseen = result["pooled_unseen_by_score"]
    assert result["unseen_by_score"] == ["P1", "P3"] and unseen["candidates"] == 3 + 4
    final = result["final"]
    assert final["candidates"] == 1 + 2 + 4 and final["radius_mm"] == 12.0
    # calibrating at all is chosen on the held-out rows
    assert result["applied"] == (pooled["brier_calibrated"] < pooled["brier_raw"])
    for applied in (True, False):
        text = " ".join(
            calibration_section({**summary, "calibration": {**result, "applied": applied}}).split()
        )
        assert ("The node applies no calibration" in text) is not applied
        assert (f"a = {final['a']:.4f}" in text) and ("calibrated." in text) is applied
    section = calibration_section({**summary, "calibration": result})
    words = " ".join(section.split())
    assert f"Brier score raw **{pooled['brier_raw']:.3f}** vs calibrated" in words
    assert "| P1 | 10 |" in section and "**tumour** 0.810 -> " in section
    assert "fine-tuned on P2" in words and "never saw (P1, P3; 7 candidates, 2 tumours)" in words


def test_calibration_at_the_nodes_radius_uses_that_radius_for_every_fold_and_the_final_fit() -> (
    None
):
    # The node runs at 10 mm while the protocol chose 12: the certainty the node reports is of
    # its own candidates, so every fold and the final fit are at 10 mm.
    at_10 = {
        "P1": [_candidate("P1", 0.81, True), _candidate("P1", 0.66, False)],
        "P2": [_candidate("P2", 0.71, True), _candidate("P2", 0.55, False)],
        "P3": [_candidate("P3", 0.57, True), _candidate("P3", 0.67, False)],
    }
    at_12 = {**{p: rows[:1] for p, rows in at_10.items()}, "P3": at_10["P3"]}
    folds = {p: {"radius_mm": 12.0} for p in at_10}
    summary = {
        "patients": ["P1", "P2", "P3"],
        "candidates": {"10": at_10, "12": at_12},
        "chosen": {"threshold": 0.5, "radius_mm": 12.0, "folds": folds},
    }
    result = calibrate(summary, node_radius_mm=10.0)
    assert {f["radius_mm"] for f in result["folds"].values()} == {10.0}
    assert result["final"]["radius_mm"] == 10.0 and result["final"]["candidates"] == 6
    # A radius the protocol did not try: the chosen ones, as without it.
    other = calibrate(summary, node_radius_mm=14.0)["final"]
    assert other["radius_mm"] == 12.0 and other["candidates"] == 4
