"""Which series of a study to analyse, by declarative rules from `AnalysisSettings`.

Each rule is a name and a check on the series' headers that returns a reason when the series
fails it. CT: Modality CT, Image Type ORIGINAL\\PRIMARY (AXIAL when given), slice thickness in
range, enough slices; the thinnest qualifying series is preferred. PET: Modality PT, Units BQML,
enough slices; one sharing the chosen CT's Frame of Reference is preferred.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from classifier.imaging.volume import frames_of
from classifier.settings import AnalysisSettings
from storage.study_files import SeriesFiles


@dataclass(frozen=True)
class SeriesCandidate:
    """A series with the headers of its instances (no pixel data)."""

    series: SeriesFiles
    headers: tuple[Dataset, ...]

    @property
    def first(self) -> Dataset:
        return self.headers[0]

    @property
    def slice_count(self) -> int:
        return sum(frames_of(h) for h in self.headers)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.first.get("FrameOfReferenceUID", "") or "")

    def describe(self) -> str:
        if not self.headers:
            return f"series {self.series.series_instance_uid}"
        text = str(self.first.get("SeriesDescription", "") or "").strip()
        number = self.first.get("SeriesNumber", "")
        label = f"series {number} " if number not in (None, "") else "series "
        return f"{label}{self.series.series_instance_uid}" + (f" ({text})" if text else "")


@dataclass(frozen=True)
class Selection:
    """Qualifying series in order of preference, and a reason for every rejected one."""

    ct: tuple[SeriesCandidate, ...]
    pet: tuple[SeriesCandidate, ...]
    rejected: tuple[str, ...]


Rule = Callable[[SeriesCandidate, AnalysisSettings], str | None]


def _shared(candidate: SeriesCandidate, keyword: str) -> Dataset | None:
    """The first item of a shared functional group of an enhanced image, if any."""
    shared = candidate.first.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0] and len(shared[0][keyword].value):
        return shared[0][keyword].value[0]
    return None


def slice_thickness(candidate: SeriesCandidate) -> float | None:
    """Slice Thickness in mm, from the header or the enhanced Pixel Measures; None if absent."""
    value = candidate.first.get("SliceThickness")
    if value in (None, ""):
        measures = _shared(candidate, "PixelMeasuresSequence")
        per_frame = candidate.first.get("PerFrameFunctionalGroupsSequence")
        if measures is None and per_frame and "PixelMeasuresSequence" in per_frame[0]:
            measures = per_frame[0].PixelMeasuresSequence[0]
        value = measures.get("SliceThickness") if measures is not None else None
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _modality(expected: str) -> Rule:
    def rule(c: SeriesCandidate, config: AnalysisSettings) -> str | None:
        found = str(c.first.get("Modality", "") or c.series.modality)
        return None if found == expected else f"Modality is {found or 'missing'}, not {expected}"

    return rule


def _original_primary(c: SeriesCandidate, config: AnalysisSettings) -> str | None:
    image_type = [str(v).upper() for v in (c.first.get("ImageType") or [])]
    if image_type[:2] != ["ORIGINAL", "PRIMARY"]:
        shown = "\\".join(image_type) or "missing"
        return f"Image Type is {shown}, not ORIGINAL\\PRIMARY"
    if len(image_type) > 2 and image_type[2] not in {"AXIAL", ""}:
        return f"Image Type is {'/'.join(image_type)}: not an AXIAL image"
    return None


def _thickness(c: SeriesCandidate, config: AnalysisSettings) -> str | None:
    low, high = config.ct_slice_thickness_range_mm
    value = slice_thickness(c)
    if value is None:
        return "Slice Thickness is missing"
    if not low <= value <= high:
        return f"Slice Thickness {value:g} mm is outside {low:g}-{high:g} mm"
    return None


def _min_slices(key: str) -> Rule:
    def rule(c: SeriesCandidate, config: AnalysisSettings) -> str | None:
        minimum = getattr(config, key)
        count = c.slice_count
        return None if count >= minimum else f"{count} slice(s), fewer than {key} = {minimum}"

    return rule


def _units_bqml(c: SeriesCandidate, config: AnalysisSettings) -> str | None:
    units = str(c.first.get("Units", "") or "").upper()
    return None if units == "BQML" else f"Units is {units or 'missing'}, not BQML (no SUV possible)"


CT_RULES: tuple[tuple[str, Rule], ...] = (
    ("modality", _modality("CT")),
    ("image type", _original_primary),
    ("slice thickness", _thickness),
    ("slice count", _min_slices("ct_min_slices")),
)
PET_RULES: tuple[tuple[str, Rule], ...] = (
    ("modality", _modality("PT")),
    ("units", _units_bqml),
    ("slice count", _min_slices("pet_min_slices")),
)


def _failures(
    c: SeriesCandidate, rules: Sequence[tuple[str, Rule]], config: AnalysisSettings
) -> list[str]:
    return [reason for _, rule in rules if (reason := rule(c, config)) is not None]


def select_series(candidates: Sequence[SeriesCandidate], config: AnalysisSettings) -> Selection:
    """Apply the CT and PET rules; CT thinnest first (then most slices), PET same Frame of
    Reference as the preferred CT first (then most slices)."""
    ct: list[SeriesCandidate] = []
    pet: list[SeriesCandidate] = []
    rejected: list[str] = []
    for c in candidates:
        if not c.headers:
            rejected.append(f"{c.describe()}: no readable instances")
            continue
        modality = str(c.first.get("Modality", "") or c.series.modality)
        if modality == "PT":
            failures = _failures(c, PET_RULES, config)
            if failures:
                rejected.append(f"PET {c.describe()}: " + "; ".join(failures))
            else:
                pet.append(c)
        elif modality == "CT":
            failures = _failures(c, CT_RULES, config)
            if failures:
                rejected.append(f"CT {c.describe()}: " + "; ".join(failures))
            else:
                ct.append(c)
        else:
            rejected.append(f"{c.describe()}: Modality {modality or 'missing'} is not analysed")
    ct.sort(key=lambda c: (slice_thickness(c) or 0.0, -c.slice_count))
    reference = ct[0].frame_of_reference_uid if ct else ""
    pet.sort(key=lambda c: (c.frame_of_reference_uid != reference, -c.slice_count))
    return Selection(tuple(ct), tuple(pet), tuple(rejected))
