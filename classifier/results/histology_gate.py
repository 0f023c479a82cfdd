"""Whether the result objects state histology: only what a reader can trust.

`[results] histology`: "on" states the CNN's histology probabilities, "off" never does, and
"auto" (the default) states them only when the model's metadata records a per-patient
histology accuracy on real patients above the majority-class baseline (70.7 % on
Lung-PET-CT-Dx: A 251, G 61, B 38, E 5 patients). Otherwise the objects say that histology was
not assessed, and why, instead of a probability learnt from phantoms.
"""

from __future__ import annotations

from classifier.types import ModelInfo

HISTOLOGY_MODES: tuple[str, ...] = ("auto", "on", "off")
DEFAULT_HISTOLOGY_MODE = "auto"


def check_mode(mode: str) -> str:
    """The mode itself; ValueError naming it and the choices when it is not one of them."""
    if mode not in HISTOLOGY_MODES:
        raise ValueError(
            f"histology mode {mode!r} is not one of {', '.join(HISTOLOGY_MODES)} "
            "([results] histology)"
        )
    return mode


def histology_shown(mode: str, model: ModelInfo) -> bool:
    """True when histology may reach a reader under `mode` with `model`."""
    if check_mode(mode) == "on":
        return True
    return mode == "auto" and model.histology_beats_baseline


def not_assessed_reason(mode: str, model: ModelInfo) -> str:
    """Why histology is not stated, in words a reader understands."""
    if check_mode(mode) == "off":
        return "Histologic type was not assessed: it is switched off on this node."
    accuracy, baseline = model.histology_real_accuracy, model.histology_real_baseline
    if accuracy is None or baseline is None:
        return (
            "Histologic type was not assessed: the model's histology accuracy on real "
            "patients has not been measured (it was learnt from synthetic phantoms)."
        )
    return (
        f"Histologic type was not assessed: the model's histology accuracy on real patients "
        f"({100 * accuracy:.1f} %) is not above always answering the commonest type "
        f"({100 * baseline:.1f} %)."
    )
