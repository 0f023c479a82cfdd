"""Which series of a study to analyse, by declarative rules from `AnalysisSettings`.

Each rule is a name and a check on the series' headers that returns a reason when the series
fails it. CT: Modality CT, Image Type ORIGINAL\\PRIMARY (AXIAL when given), slice thickness in
range, enough slices; the thinnest qualifying series is preferred. PET: Modality PT, Units BQML,
enough slices; one sharing the chosen CT's Frame of Reference is preferred.

A CT series is first checked for bolus tracking (a few positions imaged over and over to time
the contrast, see `acquisitions.monitoring_reason`) and skipped with that reason. A CT series
that holds several acquisitions of the same positions (a GE multi-phase series) is split into
one candidate per acquisition (see `acquisitions.split_acquisitions`); each is judged by the CT
rules on its own slices and thickness, and is named "series N UID acquisition K" in reasons.

Between the qualifying acquisitions of one series the rule is, in this order:
  1. the longest z coverage: lung nodules can sit anywhere from apex to base, and a partial
     acquisition (a delayed scan of the liver, a short repeat after motion) misses lung;
  2. the thinnest slices: small nodules are lost to partial volume in thick slices;
  3. the most slices, then the latest acquisition: with equal coverage and thickness the phases
     of a multi-phase study differ only in contrast, and the later one (portal-venous after the
     non-contrast or arterial phase in the usual order; the kept one after a repeat) is the
     phase a chest is read on: vessels and mediastinal structures evenly enhanced, and no
     dense bolus in the pulmonary arteries and superior vena cava to look like a mass.
The best acquisition stands for its series in the ordering between series (thinnest, then most
slices, as for any series); the others follow it as fall-backs should it fail to load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from classifier.imaging.acquisitions import Acquisition, monitoring_reason, split_acquisitions
from classifier.imaging.volume import frames_of
from classifier.settings import AnalysisSettings
from storage.study_files import SeriesFiles


@dataclass(frozen=True)
class SeriesCandidate:
    """A series with the headers of its instances (no pixel data), or one acquisition of it.

    For one acquisition of a series that holds several, `series.instances` and `headers` are
    those of the acquisition (in step with each other), `acquisition` says which, and `frames`
    gives, per header, the 0-based frames it uses of a multi-frame instance (None: all frames,
    or a single-frame instance); `frames` is None when every frame of every header is used.
    """

    series: SeriesFiles
    headers: tuple[Dataset, ...]
    acquisition: Acquisition | None = None
    frames: tuple[tuple[int, ...] | None, ...] | None = None

    @property
    def first(self) -> Dataset:
        return self.headers[0]

    @property
    def slice_count(self) -> int:
        if self.frames is None:
            return sum(frames_of(h) for h in self.headers)
        return sum(
            frames_of(h) if f is None else len(f)
            for h, f in zip(self.headers, self.frames, strict=True)
        )

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.first.get("FrameOfReferenceUID", "") or "")

    def describe(self) -> str:
        if not self.headers:
            return f"series {self.series.series_instance_uid}"
        text = str(self.first.get("SeriesDescription", "") or "").strip()
        number = self.first.get("SeriesNumber", "")
        label = f"series {number} " if number not in (None, "") else "series "
        acquisition = f" {self.acquisition.label}" if self.acquisition is not None else ""
        return f"{label}{self.series.series_instance_uid}{acquisition}" + (
            f" ({text})" if text else ""
        )


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


def acquisitions_of(candidate: SeriesCandidate) -> list[SeriesCandidate]:
    """One candidate per acquisition of a series (see the module doc); [candidate] itself when
    the series is one acquisition."""
    parts = split_acquisitions(candidate.headers)
    if len(parts) < 2:
        return [candidate]
    instances = candidate.series.instances
    out = []
    for part in parts:
        used = part.headers
        series = candidate.series
        if len(instances) == len(candidate.headers):
            series = dataclasses.replace(series, instances=tuple(instances[i] for i in used))
        frames = tuple(part.frames_of(i) for i in used)
        out.append(
            SeriesCandidate(
                series=series,
                headers=tuple(candidate.headers[i] for i in used),
                acquisition=part,
                frames=frames if any(f is not None for f in frames) else None,
            )
        )
    return out


def _coverage_mm(c: SeriesCandidate) -> float:
    if c.acquisition is not None:
        return c.acquisition.coverage_mm
    return 0.0


def _within_series(c: SeriesCandidate) -> tuple[float, float, int, int]:
    """Preference between acquisitions of one series, best first (see the module doc)."""
    order = c.acquisition.order if c.acquisition is not None else 0
    return (-round(_coverage_mm(c)), slice_thickness(c) or 0.0, -c.slice_count, -order)


def _order_ct(ct: list[tuple[int, SeriesCandidate]]) -> list[SeriesCandidate]:
    """Thinnest series first (then most slices) by its best acquisition; the acquisitions of
    one series together, best first; input order between equal series."""
    best: dict[int, SeriesCandidate] = {}
    for index, c in ct:
        if index not in best or _within_series(c) < _within_series(best[index]):
            best[index] = c

    def key(item: tuple[int, SeriesCandidate]) -> tuple:
        index, c = item
        representative = best[index]
        return (
            slice_thickness(representative) or 0.0,
            -representative.slice_count,
            index,
            _within_series(c),
        )

    return [c for _, c in sorted(ct, key=key)]


def select_series(candidates: Sequence[SeriesCandidate], config: AnalysisSettings) -> Selection:
    """Apply the CT and PET rules; CT thinnest first (then most slices), PET same Frame of
    Reference as the preferred CT first (then most slices). A bolus-tracking CT series is
    rejected; a CT series of several acquisitions is judged per acquisition."""
    ct: list[tuple[int, SeriesCandidate]] = []
    pet: list[SeriesCandidate] = []
    rejected: list[str] = []
    for index, c in enumerate(candidates):
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
            monitoring = monitoring_reason(c.headers)
            if monitoring is not None:
                rejected.append(f"CT {c.describe()}: {monitoring}")
                continue
            for part in acquisitions_of(c):
                failures = _failures(part, CT_RULES, config)
                if failures:
                    rejected.append(f"CT {part.describe()}: " + "; ".join(failures))
                else:
                    ct.append((index, part))
        else:
            rejected.append(f"{c.describe()}: Modality {modality or 'missing'} is not analysed")
    ordered = _order_ct(ct)
    reference = ordered[0].frame_of_reference_uid if ordered else ""
    pet.sort(key=lambda c: (c.frame_of_reference_uid != reference, -c.slice_count))
    return Selection(tuple(ordered), tuple(pet), tuple(rejected))
