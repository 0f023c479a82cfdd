"""The real-CT protocol's calibration step: the lesion score's Platt calibration fitted leave one
patient out on the protocol's candidates, its held-out figures, and the final calibration (all
patients) stored beside the model it was fitted for.

A candidate is labelled the tumour when it is the finding the protocol matches to the annotated
tumour (`real_ct_protocol.scored_candidates`); every other candidate (fragments, vessels, the
rest) is not. The candidates are those at the detector radius the node runs with (the
calibration is of the probabilities the node reports; without that radius among the tried ones:
each patient's fold radius, and the chosen default for the final fit). Each patient's
calibration is fitted on the other patients' candidates, so no held-out probability saw its own
patient. The final calibration is fitted on every patient's candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from classifier.model.calibration import (
    RIDGE,
    PlattCalibration,
    brier_score,
    calibration_path,
    fit_platt,
    log_loss,
    write_calibration,
)


def _fit(candidates: Sequence[dict[str, Any]]) -> PlattCalibration:
    return fit_platt([c["score"] for c in candidates], [bool(c["tumour"]) for c in candidates])


def _pooled(raw: list[float], calibrated: list[float], labels: list[bool]) -> dict[str, Any]:
    """Brier score and log loss of raw and calibrated probabilities against the labels."""
    return {
        "candidates": len(labels),
        "tumours": int(sum(labels)),
        "brier_raw": round(brier_score(raw, labels), 4),
        "brier_calibrated": round(brier_score(calibrated, labels), 4),
        "log_loss_raw": round(log_loss(raw, labels), 4),
        "log_loss_calibrated": round(log_loss(calibrated, labels), 4),
    }


def calibrate(
    summary: dict[str, Any],
    score_trained_on: Sequence[str] = (),
    node_radius_mm: float | None = None,
    scored_by_fold: Sequence[str] = (),
) -> dict[str, Any]:
    """Leave one patient out calibration over a protocol summary (its "candidates" and
    "chosen"): per held-out patient the fold's parameters and each candidate's raw and
    calibrated probability; pooled Brier score and log loss, raw vs calibrated, over the
    held-out candidates only, and over those of the patients the lesion score was not trained
    on (`score_trained_on`: the model's fine-tuning patients); the final calibration on all
    patients. At `node_radius_mm` (the node's detector radius) where the protocol tried it;
    `scored_by_fold`: the patients whose raw scores came from a fold that held them out."""
    chosen = summary["chosen"]
    candidates = summary["candidates"]
    fixed = (
        f"{node_radius_mm:g}"
        if node_radius_mm is not None and f"{node_radius_mm:g}" in candidates
        else None
    )
    patients: list[str] = list(summary["patients"])
    folds: dict[str, Any] = {}
    raw: dict[str, list[float]] = {}
    calibrated: dict[str, list[float]] = {}
    labels: dict[str, list[bool]] = {}
    for patient in patients:
        radius = fixed or f"{chosen['folds'][patient]['radius_mm']:g}"
        train = [c for p in patients if p != patient for c in candidates[radius][p]]
        held_out = candidates[radius][patient]
        fold: dict[str, Any] = {"radius_mm": float(radius)}
        try:
            fit = _fit(train)
            fold.update({"a": fit.a, "b": fit.b})
            probabilities = fit.probability([c["score"] for c in held_out]).tolist()
        except ValueError as exc:  # no tumour (or nothing else) among the others' candidates
            fold["not_fitted"] = str(exc)
            probabilities = [c["score"] for c in held_out]
        fold["candidates"] = [
            {**c, "calibrated": round(float(p), 4)}
            for c, p in zip(held_out, probabilities, strict=True)
        ]
        folds[patient] = fold
        raw[patient] = [c["score"] for c in held_out]
        calibrated[patient] = [float(p) for p in probabilities]
        labels[patient] = [bool(c["tumour"]) for c in held_out]
    unseen = [p for p in patients if p not in set(score_trained_on)]
    radius = fixed or f"{chosen['radius_mm']:g}"
    everyone = [c for p in patients for c in candidates[radius][p]]
    final = _fit(everyone)
    threshold = float(chosen["threshold"])
    pooled = _pooled(
        [v for p in patients for v in raw[p]],
        [v for p in patients for v in calibrated[p]],
        [v for p in patients for v in labels[p]],
    )
    return {
        "method": "Platt scaling of logit(raw lesion score), prior-corrected targets, "
        f"ridge {RIDGE:g} on the slope, slope >= 0",
        "folds": folds,
        "pooled_held_out": pooled,
        # Whether to calibrate at all is chosen like every tuned value: on held-out rows.
        "applied": pooled["brier_calibrated"] < pooled["brier_raw"],
        "score_trained_on": sorted(score_trained_on),
        "scored_by_fold": sorted(scored_by_fold),
        "unseen_by_score": unseen,
        "pooled_unseen_by_score": _pooled(
            [v for p in unseen for v in raw[p]],
            [v for p in unseen for v in calibrated[p]],
            [v for p in unseen for v in labels[p]],
        )
        if unseen
        else None,
        "final": {
            "a": final.a,
            "b": final.b,
            "radius_mm": float(radius),
            "candidates": len(everyone),
            "tumours": sum(bool(c["tumour"]) for c in everyone),
            "patients": patients,
            "at_threshold": round(float(final.probability(threshold)), 4),
        },
    }


def install_calibration(summary: dict[str, Any], model: Path, command: str) -> Path:
    """Write the final calibration beside `model`, for the weights the protocol scored with
    (refused when `model` is not those weights), with the command and the data it saw; when
    held out it did not improve the raw score (`applied` false), the sidecar records the raw
    score kept instead."""
    from classifier.model.inference import sha256_of

    sha256 = summary["model"]["sha256"]
    if sha256_of(model) != sha256:
        raise ValueError(
            f"the protocol scored candidates with weights sha256 {sha256[:12]}, but {model} is "
            f"{sha256_of(model)[:12]}; run the protocol again on this model"
        )
    calibration = summary["calibration"]
    final = calibration["final"]
    provenance = {
        "command": command,
        "data": summary["data"],
        "annotations": summary["annotations"],
        "fitted_on": {k: final[k] for k in ("patients", "radius_mm", "candidates", "tumours")},
        "fit": calibration["method"],
        "held_out": calibration["pooled_held_out"],
        # The protocol's operating point: the threshold applies to the raw score, not to this.
        "operating_point": {
            "lesion_probability_threshold": float(summary["chosen"]["threshold"]),
            "applies_to": "the raw lesion score",
            "mass_radius_mm": float(final["radius_mm"]),
        },
        "score_trained_on": calibration["score_trained_on"],
        "held_out_unseen_by_score": calibration["pooled_unseen_by_score"],
    }
    fitted = PlattCalibration(final["a"], final["b"]) if calibration["applied"] else None
    return write_calibration(model, fitted, sha256, provenance)


def _trained_note(calibration: dict[str, Any]) -> str:
    """What the lesion score was trained on, beside the calibration figures, and the figures on
    the patients it never saw."""
    trained = calibration.get("score_trained_on") or []
    folds = calibration.get("scored_by_fold") or []
    if not trained and folds:
        return (
            "Every raw score here is held out: the patients the lesion score was fine-tuned on "
            f"({', '.join(p.replace('Lung_Dx-', '') for p in folds)}) were scored by the fold "
            "that held each out."
        )
    if not trained:
        return "The model records no real patients its lesion score was trained on."
    names = ", ".join(p.replace("Lung_Dx-", "") for p in trained)
    text = (
        f'The lesion score was fine-tuned on {names} (section "Real CT: lesion score '
        'fine-tuned"): their raw scores are on training scans, so calibrating them says little '
        "about unseen CT."
    )
    unseen = calibration.get("pooled_unseen_by_score")
    if unseen:
        who = ", ".join(p.replace("Lung_Dx-", "") for p in calibration["unseen_by_score"])
        text += (
            f" On the patients the score never saw ({who}; {unseen['candidates']} candidates, "
            f"{unseen['tumours']} tumours): Brier score raw {unseen['brier_raw']:.3f} vs "
            f"calibrated {unseen['brier_calibrated']:.3f}, log loss raw "
            f"{unseen['log_loss_raw']:.3f} vs calibrated {unseen['log_loss_calibrated']:.3f}."
        )
    return text


_HEAD = (
    "| held-out patient | radius (mm) | fit on the others "
    "| candidate: raw score -> calibrated probability |\n|---|---|---|---|"
)


def card_section(summary: dict[str, Any]) -> str:
    """The calibration part of the model card's real-CT section: per held-out patient the raw
    and calibrated probability of each candidate, the pooled figures, the final parameters."""
    calibration = summary["calibration"]
    pooled = calibration["pooled_held_out"]
    final = calibration["final"]
    rows = []
    for patient, fold in calibration["folds"].items():
        cells = ", ".join(
            f"{'**tumour**' if c['tumour'] else c['finding']} {c['score']:.3f} -> "
            f"{c['calibrated']:.3f}"
            for c in fold["candidates"]
        )
        fit = (
            f"a {fold['a']:.2f}, b {fold['b']:.2f}"
            if "a" in fold
            else f"not fitted ({fold['not_fitted']}): raw"
        )
        rows.append(f"| {patient} | {fold['radius_mm']:g} | {fit} | {cells or '-'} |")
    threshold = float(summary["chosen"]["threshold"])
    trained = _trained_note(calibration)
    sidecar = calibration_path(Path("lungnode-demo.keras")).name
    if calibration.get("applied", True):
        applied = f"""The calibration the node applies is fitted on all \
{len(final["patients"])} patients' {final["candidates"]} candidates ({final["tumours"]} \
tumours) at the node's radius {final["radius_mm"]:g} mm: a = {final["a"]:.4f}, b = \
{final["b"]:.4f}. It is stored beside the model (`{sidecar}`, with the command and the data it
saw) for these weights only: other weights refuse it at load. The reporting threshold applies
to the **raw** score (one convention: `[classifier] lesion_probability_threshold`); the
calibration never reverses the score's order, so it changes what a finding's certainty reads,
not which findings are reported. The threshold {threshold:g} reads as
{final["at_threshold"]:.3f} calibrated."""
    else:
        applied = f"""**The node applies no calibration**: whether to calibrate is chosen on \
the held-out rows like every tuned value, and held out the calibrated Brier score is not lower
than the raw one. The sidecar (`{sidecar}`, for these weights only) records that choice, its
figures and the command; the certainty a reader sees is the raw score, and the SR and SEG say
why (Algorithm Parameters `certainty=raw lesion score, kept by the real-CT protocol ...`).
(Fitted on all {len(final["patients"])} patients' {final["candidates"]} candidates it would
have been a = {final["a"]:.4f}, b = {final["b"]:.4f}: the threshold {threshold:g} would read
{final["at_threshold"]:.3f}.)"""
    return f"""### Certainty of the findings: the lesion score calibrated (issue 16 item 6)

The lesion score's raw sigmoid (the "p" in the tables above) is not a probability on real CT.
The certainty a reader sees (SR Certainty of Finding, SEG segment description, pictures) is its
calibration where that does better held out than the raw score: {calibration["method"]}, fitted
on the candidates of the runs above. A candidate is
the tumour when it is the finding matched to the annotated tumour; anything else (fragments,
vessels, the rest) is not. The candidates are those at the detector radius the node runs with
(column "radius"; the calibration is of what the node reports). Leave one patient out: each
patient's candidates are calibrated by a fit on the other patients' candidates.

{_HEAD}
{chr(10).join(rows)}

Pooled over the {pooled["candidates"]} held-out candidates ({pooled["tumours"]} tumours):
Brier score raw **{pooled["brier_raw"]:.3f}** vs calibrated
**{pooled["brier_calibrated"]:.3f}**, log loss raw **{pooled["log_loss_raw"]:.3f}** vs
calibrated **{pooled["log_loss_calibrated"]:.3f}**. {trained} With
{pooled["candidates"]} candidates these figures are coarse.

{applied} A model without a calibration file beside it (a fresh
`lungnode train`, a new fine-tune) reports the raw score as the certainty, and its SR and SEG
say so (Algorithm Parameters `certainty=uncalibrated ...`).
"""
