"""The classifier boundary: what `analyze` takes (StudyFiles) and what it returns (StudyResult).

These are plain frozen dataclasses so the node, the encoders and the tests share one vocabulary.
Coordinates: volumes are indexed [slice, row, column]; patient coordinates are DICOM LPS in mm.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

HISTOLOGY_CLASSES: tuple[str, ...] = ("A", "B", "E", "G")
HISTOLOGY_NAMES: dict[str, str] = {
    "A": "adenocarcinoma",
    "B": "small cell carcinoma",
    "E": "large cell carcinoma",
    "G": "squamous cell carcinoma",
}

UNCALIBRATED_CERTAINTY = "uncalibrated lesion score (no calibration beside the model)"


def stable_uid(*parts: object) -> str:
    """A UID (2.25 form) derived from `parts` alone: the same parts give the same UID on every
    run and every machine (SHA-256 of the parts joined by "|", first 128 bits)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def lesion_tracking_uid(
    study_uid: str, series_uid: str, centroid_mm: tuple[float, float, float]
) -> str:
    """The Tracking UID of a lesion: derived from the study, the CT series it was found in and
    its centroid rounded to whole millimetres, so re-analysing the same images (a new version of
    the study, a resend, a restarted worker) gives the same lesion the same UID."""
    x, y, z = (round(float(v)) for v in centroid_mm)
    return stable_uid("lungnode-lesion", study_uid, series_uid, x, y, z)


@dataclass(frozen=True)
class ImageReference:
    """A source image the analysis used (for SR evidence and references)."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True)
class Lesion:
    """One lesion found in the CT volume, with its measurements and CNN output.

    `mask` is the lesion's binary mask cropped to `mask_origin` (slice, row, column) in the
    CT volume's index space; `box_rc` is (row_min, col_min, row_max, col_max) on the key slice.
    """

    tracking_id: str
    tracking_uid: str
    key_slice_index: int
    key_slice: ImageReference
    box_rc: tuple[int, int, int, int]
    slice_range: tuple[int, int]
    centroid_mm: tuple[float, float, float]
    side: str  # "left", "right" or "central"
    lobe: str | None
    long_axis_mm: float
    short_axis_mm: float
    volume_ml: float
    mask: np.ndarray = field(repr=False, compare=False)
    mask_origin: tuple[int, int, int] = (0, 0, 0)
    suv_max: float | None = None
    suv_mean: float | None = None
    mtv_ml: float | None = None
    tlg: float | None = None
    # The lesion score's raw sigmoid: the detection operating point ([classifier]
    # lesion_probability_threshold) and the order of the findings apply to it.
    lesion_probability: float = 0.0
    histology: dict[str, float] = field(default_factory=dict)
    detected_by: str = "CT"  # "CT", "PET" or "CT+PET"
    # The Certainty of Finding a reader sees: the score's calibrated probability when the model
    # has a calibration (ModelInfo.certainty says which); None: the raw score.
    certainty: float | None = None

    @property
    def certainty_of_finding(self) -> float:
        """The finding's certainty (0-1) as reported: calibrated, or the raw score."""
        return self.lesion_probability if self.certainty is None else self.certainty

    @property
    def most_probable_type(self) -> str:
        return max(self.histology, key=self.histology.__getitem__)


@dataclass(frozen=True)
class ModelInfo:
    """Provenance of the model that produced a result; carried into the SR and SEG."""

    name: str
    version: str
    sha256: str
    trained_on: str
    clinical_use: bool = False
    # Per-patient histology accuracy on real patients and the majority-class baseline (what
    # always answering the commonest class scores), as the model's metadata records them
    # ("histology_real_patients"); None: not measured, so histology is not stated under
    # [results] histology = auto.
    histology_real_accuracy: float | None = None
    histology_real_baseline: float | None = None
    # What a finding's certainty is: the lesion score calibrated on real CT (the calibration
    # stored beside the model file) or, without one, the raw score, said so.
    certainty: str = UNCALIBRATED_CERTAINTY

    @property
    def histology_beats_baseline(self) -> bool:
        """True when real-patient histology accuracy is recorded and above its baseline."""
        accuracy, baseline = self.histology_real_accuracy, self.histology_real_baseline
        return accuracy is not None and baseline is not None and accuracy > baseline

    @property
    def device_uid_suffix(self) -> str:
        """A decimal string derived from the weights, so the Device UID changes with them."""
        return str(int(self.sha256[:24], 16))


@dataclass(frozen=True)
class StudyResult:
    """Everything `analyze` learnt about one study; the input of the SR and SEG encoders."""

    study_instance_uid: str
    model: ModelInfo
    ct_series_uid: str | None = None
    pet_series_uid: str | None = None
    ct_slices: tuple[ImageReference, ...] = ()  # ordered along the slice normal, index = slice
    pet_slices: tuple[ImageReference, ...] = ()
    ct_shape: tuple[int, int, int] | None = None
    lesions: tuple[Lesion, ...] = ()
    skipped: tuple[str, ...] = ()  # reasons, in words a technologist understands
    timings_s: dict[str, float] = field(default_factory=dict, compare=False)
    # Set when the CT series (ct_series_uid) was read but is not a chest the detector can read
    # (classifier.imaging.chest_field): why, as also in `skipped`; no lesion was looked for.
    refusal: str | None = None

    @property
    def analysed(self) -> bool:
        """False when no CT series could be analysed (none read, or the one read refused as
        not a whole chest); `skipped` then says why."""
        return self.ct_series_uid is not None and self.refusal is None

    @property
    def evidence(self) -> tuple[ImageReference, ...]:
        return self.ct_slices + self.pet_slices
