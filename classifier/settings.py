"""The science's own settings, as plain frozen values with the defaults the node documents.

The node builds an `AnalysisSettings` from its configuration; a notebook or the CLI builds one
directly. Nothing here knows about configuration files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from classifier.model.bundled import BUNDLED_MODEL


@dataclass(frozen=True)
class MtvThreshold:
    """SUV threshold of the metabolic tumour volume: absolute, or a fraction of SUVmax."""

    value: float = 2.5
    relative: bool = False

    def threshold_for(self, suv_max: float) -> float:
        return self.value * suv_max if self.relative else self.value

    def describe(self) -> str:
        return f"{self.value * 100:g}% of SUVmax" if self.relative else f"SUVbw >= {self.value:g}"


@dataclass(frozen=True)
class AnalysisSettings:
    """What `analyze_study` needs besides the study: the model file and the analysis rules."""

    model: Path = BUNDLED_MODEL
    # The detection operating point on the RAW lesion score (not the calibrated certainty): the
    # threshold the real-CT protocol chose on its held-out rows (classifier.model.real_ct_protocol;
    # recorded in the bundled model's calibration file, checked by
    # tests/integration/test_calibration.py).
    lesion_probability_threshold: float = 0.5
    # Most findings reported per study, the most probable first (0: no limit); the result's
    # `skipped` says how many at or above the threshold were left out by it.
    max_findings_per_study: int = 5
    # Also propose small solid nodules (4-15 mm, free-standing; `lesions.NODULE_MIN_MM`). Off by
    # default: on the real studies each adds 0-2 vessel-like dots the phantom-trained CNN
    # scores >= 0.9, until the lesion score is trained with real negatives.
    small_nodules: bool = False
    # The detector's tuned value (not a config key): the radius in mm of the ball a part of a
    # vessel tree must hold to be a mass (`lesions.MASS_MIN_RADIUS_MM` when None); set by the
    # leave-one-patient-out protocol (classifier.model.real_ct_protocol) to try its choices.
    mass_radius_mm: float | None = None
    mtv_threshold: MtvThreshold = field(default_factory=MtvThreshold)
    ct_slice_thickness_range_mm: tuple[float, float] = (0.5, 10.0)
    ct_min_slices: int = 8
    pet_min_slices: int = 8
