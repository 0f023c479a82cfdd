"""analyze(): one study's DICOM files to a StudyResult (series selection, volumes, SUV, PET on
CT, lesion candidates, one batched CNN call). Never raises for bad data: problems become
reasons in `StudyResult.skipped`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from pydicom import Dataset

from classifier.imaging.chest_field import chest_refusal
from classifier.imaging.dicom_io import DicomReadError, read_headers, read_pixels
from classifier.imaging.lesions import Candidate, find_candidates
from classifier.imaging.lung_mask import LungMask, lung_mask
from classifier.imaging.resample import register_rigid, resample_to
from classifier.imaging.series_selection import SeriesCandidate, select_series
from classifier.imaging.suv import load_pet_suv_volume
from classifier.imaging.volume import Volume, VolumeError, load_ct_volume
from classifier.model.patches import PATCH_SHAPE, extract_patch
from classifier.settings import AnalysisSettings
from classifier.types import HISTOLOGY_CLASSES, Lesion, StudyResult, lesion_tracking_uid
from storage.study_files import StudyFiles

if TYPE_CHECKING:
    from classifier.model.inference import LesionClassifier

log = logging.getLogger(__name__)
T = TypeVar("T")
STAGES: tuple[str, ...] = ("read", "volumes", "resample", "candidates", "cnn")


class _Clock:
    """Accumulates seconds per stage."""

    def __init__(self) -> None:
        self.timings = {stage: 0.0 for stage in STAGES}

    def run(self, stage: str, work: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return work()
        finally:
            self.timings[stage] += time.perf_counter() - start


def _candidates_of(study: StudyFiles, skipped: list[str]) -> list[SeriesCandidate]:
    out = []
    for series in study.series:
        try:
            headers = read_headers([i.path for i in series.instances])
        except DicomReadError as exc:
            skipped.append(f"series {series.series_instance_uid}: {exc}")
            continue
        out.append(SeriesCandidate(series, tuple(headers)))
    return out


def _load(candidate: SeriesCandidate, loader: Callable[..., Volume], clock: _Clock) -> Volume:
    """The candidate's volume: its instances (one acquisition's, when the series holds several)
    and, of a multi-frame instance, only its frames. Built from the headers already read: the
    volume is allocated once and each file's pixels are read straight into their slice (time
    charged to "read"), so no series is held as a list of datasets and pixels besides it."""
    paths = [i.path for i in candidate.series.instances]

    def pixels(k: int) -> np.ndarray:
        started = time.perf_counter()
        try:
            return read_pixels(paths[k])
        finally:
            spent = time.perf_counter() - started
            clock.timings["read"] += spent
            clock.timings["volumes"] -= spent

    if candidate.frames is not None:
        loader = partial(loader, frame_subset=candidate.frames)
    return clock.run("volumes", lambda: loader(candidate.headers, pixels=pixels))


def to_lesion(
    candidate: Candidate,
    number: int,
    ct: Volume,
    probability: float,
    histology: np.ndarray,
    study_uid: str = "",
    certainty: float | None = None,
) -> Lesion:
    """A measured candidate with its CNN output (raw lesion score `probability`, its calibrated
    `certainty`) as a numbered, tracked Lesion; its Tracking UID follows from study, CT series
    and position (the same on re-analysis)."""
    return Lesion(
        tracking_id=f"Lesion {number}",
        tracking_uid=lesion_tracking_uid(study_uid, ct.series_instance_uid, candidate.centroid_mm),
        key_slice_index=candidate.key_slice_index,
        key_slice=ct.slices[candidate.key_slice_index],
        box_rc=candidate.box_rc,
        slice_range=candidate.slice_range,
        centroid_mm=candidate.centroid_mm,
        side=candidate.side,
        lobe=None,
        long_axis_mm=candidate.long_axis_mm,
        short_axis_mm=candidate.short_axis_mm,
        volume_ml=round(candidate.volume_ml, 3),
        mask=candidate.mask,
        mask_origin=candidate.mask_origin,
        suv_max=candidate.suv_max,
        suv_mean=candidate.suv_mean,
        mtv_ml=candidate.mtv_ml,
        tlg=candidate.tlg,
        lesion_probability=float(probability),
        certainty=None if certainty is None else float(certainty),
        histology={k: float(v) for k, v in zip(HISTOLOGY_CLASSES, histology, strict=True)},
        detected_by=candidate.detected_by,
    )


def lesions_of(
    ct: Volume,
    suv: Volume | None,
    config: AnalysisSettings,
    classifier: LesionClassifier,
    study_uid: str = "",
    skipped: list[str] | None = None,
    clock: _Clock | None = None,
    lungs: LungMask | None = None,
) -> list[Lesion]:
    """The lesions `analyze_study` reports on a CT volume (and SUV on its grid): candidates,
        one batched CNN call, the reporting threshold (on the raw lesion score; each lesion carries
    its calibrated certainty too) and the per-study limit (a note on what the
        limit left out goes to `skipped`); `lungs`: the CT's lung mask when already made.
        Callable on a volume alone: the stress test (classifier.model.stress) runs it on real CT
        with inserted tumours."""
    clock = clock or _Clock()
    skipped = skipped if skipped is not None else []
    found = clock.run(
        "candidates",
        lambda: find_candidates(
            ct,
            suv,
            config.mtv_threshold,
            lungs,
            small_nodules=config.small_nodules,
            mass_radius_mm=config.mass_radius_mm,
        ),
    )
    lesions: list[Lesion] = []
    if found:
        patches = np.stack([extract_patch(ct, c.center_index, suv) for c in found]).astype(
            np.float32
        )
        assert patches.shape[1:] == PATCH_SHAPE
        probability, histology = clock.run("cnn", lambda: classifier.predict(patches))
        above = [
            n
            for n in np.argsort(-probability, kind="stable")
            if float(probability[n]) >= config.lesion_probability_threshold
        ]
        limit = config.max_findings_per_study
        if limit and len(above) > limit:
            skipped.append(
                f"{len(above) - limit} further finding(s) with a lesion score >= "
                f"{config.lesion_probability_threshold:g} left out: at most {limit} are "
                "reported per study, the most probable first ([classifier] "
                "max_findings_per_study)"
            )
            above = above[:limit]
        certainty = classifier.certainty(probability)
        for n in above:
            p = float(probability[n])
            lesions.append(
                to_lesion(
                    found[n], len(lesions) + 1, ct, p, histology[n], study_uid, float(certainty[n])
                )
            )
    return lesions


@dataclass(frozen=True)
class Analysis:
    """What `analyze_study` found and what it built on the way: the result, the volumes (for
    pictures) and the headers of the source instances (for `encode`, so nobody reads them
    again): those of `result.evidence` in its order or, for a study that could not be
    analysed, of every instance that could be read."""

    result: StudyResult
    ct: Volume | None
    suv: Volume | None
    sources: list[Dataset]


def analyze(
    study: StudyFiles, config: AnalysisSettings, classifier: LesionClassifier
) -> StudyResult:
    """Analyse one study; an unusable study gives a result that is not `analysed`, with reasons
    (a CT that is not a whole chest is refused: `StudyResult.refusal`)."""
    return analyze_study(study, config, classifier).result


def analyze_study(
    study: StudyFiles, config: AnalysisSettings, classifier: LesionClassifier
) -> Analysis:
    """Analyse one study; see `Analysis` for what comes back besides the result."""
    candidates: list[SeriesCandidate] = []

    def done(result: StudyResult, ct: Volume | None, suv: Volume | None) -> Analysis:
        headers = [h for c in candidates for h in c.headers]
        if result.evidence:
            by_uid = {str(h.SOPInstanceUID): h for h in headers}
            headers = [by_uid[r.sop_instance_uid] for r in result.evidence]
        return Analysis(result, ct, suv, headers)

    clock = _Clock()
    ct: Volume | None = None
    suv: Volume | None = None
    skipped: list[str] = []
    result_of = partial(
        StudyResult, study_instance_uid=study.study_instance_uid, model=classifier.info
    )
    try:
        candidates = clock.run("read", lambda: _candidates_of(study, skipped))
        selection = select_series(candidates, config)
        skipped.extend(selection.rejected)
        if not selection.ct:
            skipped.append("no CT series qualifies for analysis")
            return done(result_of(skipped=tuple(skipped), timings_s=clock.timings), None, None)

        for choice in selection.ct:
            try:
                ct = _load(choice, load_ct_volume, clock)
                break
            except (VolumeError, DicomReadError) as exc:
                skipped.append(f"CT {choice.describe()}: {exc}")
        if ct is None:
            skipped.append("no CT series could be read as a volume")
            return done(result_of(skipped=tuple(skipped), timings_s=clock.timings), None, None)
        lungs = clock.run("candidates", partial(lung_mask, ct))
        refusal = chest_refusal(ct, lungs)
        if refusal is not None:
            skipped.append(refusal)
            refused = result_of(
                ct_series_uid=ct.series_instance_uid,
                ct_slices=ct.slices,
                ct_shape=ct.shape,
                skipped=tuple(skipped),
                refusal=refusal,
                timings_s=clock.timings,
            )
            return done(refused, ct, None)

        pet: Volume | None = None
        for choice in selection.pet:
            try:
                pet = _load(choice, load_pet_suv_volume, clock)
            except (VolumeError, DicomReadError) as exc:
                skipped.append(f"PET {choice.describe()}: {exc}; analysed without PET")
                continue
            if pet.frame_of_reference_uid == ct.frame_of_reference_uid:
                suv = clock.run("resample", partial(resample_to, pet, ct, lazy=True))
                break
            registration = clock.run("resample", partial(register_rigid, pet, ct))
            skipped.append(
                registration.reason
                if registration.transform
                else f"PET {choice.describe()}: {registration.reason}; analysed without PET"
            )
            if registration.transform is not None:
                suv = clock.run(
                    "resample",
                    partial(resample_to, pet, ct, transform=registration.transform, lazy=True),
                )
                break
            pet = None

        lesions = lesions_of(
            ct, suv, config, classifier, study.study_instance_uid, skipped, clock, lungs
        )
        result = result_of(
            ct_series_uid=ct.series_instance_uid,
            pet_series_uid=pet.series_instance_uid if suv is not None and pet is not None else None,
            ct_slices=ct.slices,
            pet_slices=pet.slices if suv is not None and pet is not None else (),
            ct_shape=ct.shape,
            lesions=tuple(lesions),
            skipped=tuple(skipped),
            timings_s=clock.timings,
        )
        return done(result, ct, suv)
    except (VolumeError, DicomReadError, ValueError, MemoryError) as exc:
        log.exception("analysis of study %s failed", study.study_instance_uid)
        skipped.append(f"analysis failed: {exc}")
        return done(result_of(skipped=tuple(skipped), timings_s=clock.timings), ct, suv)
