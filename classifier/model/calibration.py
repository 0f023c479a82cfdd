"""The lesion score's calibration: Platt scaling of the raw sigmoid into the probability a
reader sees as the finding's certainty, and the sidecar file that stores it beside a model.

The fit is logistic regression of the labels on logit(raw score), two parameters (slope a,
intercept b), with Platt's prior-corrected targets ((N+ + 1)/(N+ + 2) for tumours, 1/(N- + 2)
for the others: a perfect separation of a handful of candidates still gives a finite fit) and a
small ridge on the slope (constant scores still give one answer). The slope is kept >= 0, so the
calibrated probability never reverses the score's order: the reporting threshold, applied to
the raw score, reports the same findings in the same order whatever the calibration.

The sidecar `<model file>.calibration.json` names the SHA-256 of the weights it was fitted
for: a model file whose bytes differ (a new fine-tune) refuses a stale calibration at load. Its
method "none" records that the real-CT protocol kept the raw score (held out, the calibration
did not improve it): the certainty is then the raw score, and says why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

CALIBRATION_FORMAT = "lungnode-lesion-calibration/1"
CALIBRATION_SUFFIX = ".calibration.json"
RAW_KEPT = "none"  # the sidecar's method when the protocol kept the raw score
RIDGE = 0.1  # weight of the slope's L2 penalty, against the summed log loss of the candidates
_EPS = 1e-6


def logit(scores: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """log(p / (1 - p)) of raw scores, clipped away from 0 and 1."""
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass(frozen=True)
class PlattCalibration:
    """p = 1 / (1 + exp(-(a * logit(score) + b))), a >= 0."""

    a: float
    b: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.a) and math.isfinite(self.b)) or self.a < 0:
            raise ValueError(
                f"Platt calibration a={self.a!r}, b={self.b!r}: expected finite numbers with "
                "a >= 0 (a negative slope would reverse the score's order); fit it again with "
                "classifier.model.calibration.fit_platt"
            )

    def probability(self, scores: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """The calibrated probabilities of raw lesion scores (same shape)."""
        return _sigmoid(self.a * logit(scores) + self.b)

    def describe(self) -> str:
        return f"calibrated: Platt scaling of the lesion score (a={self.a:.4f}, b={self.b:.4f})"


def platt_targets(labels: np.ndarray) -> np.ndarray:
    """Platt's prior-corrected targets: (N+ + 1)/(N+ + 2) for positives, 1/(N- + 2) else."""
    positives = int(labels.sum())
    negatives = int(labels.size - positives)
    return np.where(labels, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))


def fit_platt(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[bool] | np.ndarray,
    ridge: float = RIDGE,
) -> PlattCalibration:
    """Fit a and b on raw scores and labels (True: the candidate is the tumour). Refuses inputs
    without at least one tumour and one other candidate: nothing to calibrate against."""
    x = logit(scores).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if x.size != y.size:
        raise ValueError(f"{x.size} scores but {y.size} labels; give one label per score")
    if not y.any() or y.all():
        raise ValueError(
            f"calibration needs candidates of both kinds; got {int(y.sum())} tumour(s) and "
            f"{int((~y).sum())} other candidate(s)"
        )
    if ridge < 0:
        raise ValueError(f"ridge {ridge!r} must be >= 0")
    t = platt_targets(y)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = theta
        z = a * x + b
        # log(1 + exp(z)) - t z: the cross-entropy against soft targets, stable for any z
        value = float(np.sum(np.logaddexp(0.0, z) - t * z) + 0.5 * ridge * a * a)
        residual = _sigmoid(z) - t
        grad = np.array([float(residual @ x) + ridge * a, float(residual.sum())])
        return value, grad

    prior = float(np.log(t.mean() / (1.0 - t.mean())))
    fitted = minimize(
        loss,
        np.array([1.0, prior]),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None), (None, None)],
    )
    if not fitted.success:
        raise ValueError(f"Platt calibration did not converge: {fitted.message}")
    return PlattCalibration(float(fitted.x[0]), float(fitted.x[1]))


def brier_score(probabilities: np.ndarray | Sequence[float], labels: Sequence[bool]) -> float:
    """Mean squared difference of the probabilities and the 0/1 labels."""
    p = np.asarray(probabilities, dtype=np.float64)
    return float(np.mean((p - np.asarray(labels, dtype=np.float64)) ** 2))


def log_loss(probabilities: np.ndarray | Sequence[float], labels: Sequence[bool]) -> float:
    """Mean negative log-likelihood of the 0/1 labels (probabilities clipped to [1e-6, 1-1e-6])."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0 - _EPS)
    y = np.asarray(labels, dtype=bool)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def calibration_path(model: Path) -> Path:
    """The sidecar of a model file: `<name>.calibration.json` beside it."""
    return model.with_name(model.name + CALIBRATION_SUFFIX)


def write_calibration(
    model: Path, calibration: PlattCalibration | None, sha256: str, provenance: dict[str, Any]
) -> Path:
    """Store the calibration beside `model`, for the weights with this SHA-256, with what made
    it (`provenance`: the command, the data, the held-out figures); None stores the choice of
    the raw score (method "none")."""
    path = calibration_path(model)
    fitted = {"a": calibration.a, "b": calibration.b} if calibration else {}
    payload = {
        "format": CALIBRATION_FORMAT,
        "method": "platt" if calibration else RAW_KEPT,
        **fitted,
        "model_sha256": sha256,
        **provenance,
    }
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_calibration(model: Path, sha256: str) -> PlattCalibration | None:
    """The calibration stored beside `model`, or None when there is none or it records that the
    raw score was kept (`read_sidecar` says which). A sidecar for other weights or a malformed
    one raises ValueError naming the file and the fix."""
    return read_sidecar(model, sha256)[0]


def read_sidecar(model: Path, sha256: str) -> tuple[PlattCalibration | None, str | None]:
    """The sidecar beside `model`, read once: (its calibration, None); (None, what the certainty
    is) when it records the raw score kept by the protocol; (None, None) when there is none.
    A sidecar for other weights or a malformed one raises ValueError naming the file and the
    fix."""
    path = calibration_path(model)
    if not path.is_file():
        return None, None
    fix = (
        "run `lungnode real-ct-protocol ... --install` again to fit the calibration for this "
        f"model, or delete {path.name} to report the uncalibrated score"
    )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"calibration file {path} is not JSON ({exc}); {fix}") from exc
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise ValueError(f"calibration file {path} is not in format {CALIBRATION_FORMAT}; {fix}")
    if data.get("model_sha256") != sha256:
        raise ValueError(
            f"calibration file {path} was fitted for weights sha256 "
            f"{str(data.get('model_sha256'))[:12]}, but {model.name} is {sha256[:12]}; {fix}"
        )
    if data.get("method") == RAW_KEPT:
        held_out = data.get("held_out")
        return None, raw_kept_certainty(held_out if isinstance(held_out, dict) else {})
    a, b = data.get("a"), data.get("b")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
        raise ValueError(f"calibration file {path}: a={a!r}, b={b!r} are not numbers; {fix}")
    return PlattCalibration(float(a), float(b)), None  # type: ignore[arg-type]


def raw_kept_certainty(held_out: dict[str, Any]) -> str:
    """What a finding's certainty is when the protocol kept the raw score, with its figures."""
    figures = (
        f" (Brier score raw {held_out['brier_raw']:.3f} vs calibrated "
        f"{held_out['brier_calibrated']:.3f})"
        if "brier_raw" in held_out and "brier_calibrated" in held_out
        else ""
    )
    return (
        "raw lesion score, kept by the real-CT protocol: held out, the Platt calibration did not "
        f"improve it{figures}"
    )
