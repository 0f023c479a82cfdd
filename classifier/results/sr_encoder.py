"""StudyResult -> IHE AI Results (AIR) Comprehensive 3D SR with a TID 1500 Measurement Report.

Each lesion gets four measurement groups with the same Tracking UID, shaped so that OHIF
(Cornerstone3D adapters) tracks them as one rectangle and two lengths, dcmqi reads them without
a warning, and PixelMed finds nothing outside the templates:
- a TID 1410 planar group with the lesion's box on its key CT slice (Image Region, a closed
  5-point POLYLINE; Geometric purpose of region = Bounded by) and no measurement;
- two TID 1501 groups, the long and the short axis on that slice, each a NUM in mm with its
  method (group level) and the two points it was measured between (2-point POLYLINE);
- a TID 1411 volumetric group that references the lesion's segment in the SEG (by its source
  series, 121232) and carries the volume, the PET uptake, the Certainty of Finding (111012) and
  the histology probabilities (percent), with the most probable histologic type as Associated
  morphology only when its probability reaches a configured minimum, and then with its
  certainty attached.
The box and the segment groups carry the lesion's Tracking Identifier; the lines carry the one
OHIF needs to pick its Length tool (codes.line_tracking_identifier). Finding type is Nodule up
to 30 mm long axis, Mass above.

Every report has an Image Library (TID 1600) and a non-empty Imaging Measurements container
(a TID 1501 "Study summary" group when there is no lesion); the TID 1500 "Qualitative
Evaluations" container says what the CAD did (CAD Processing and Findings Summary, CID 6047),
why parts were skipped, and a summary in words a technologist understands. Every container is
SEPARATE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.sr.coding import Code

from classifier.results import codes, geometry
from classifier.types import Lesion, ModelInfo, StudyResult, stable_uid

DEFAULT_HISTOLOGY_MIN_PROBABILITY = 0.5


def algorithm_identification(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification: name, version, and as parameters the weights' SHA-256
    and what the Certainty of Finding is (calibrated, or the raw score). No Algorithm
    Manufacturer: PixelMed finds it outside the template and dcmqi does not know it; the
    General Equipment module names the manufacturer."""
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"weights_sha256={model.sha256}", f"certainty={model.certainty}"],
    )


def device_observer(model: ModelInfo) -> hd.sr.ObserverContext:
    """TID 1004: the algorithm as the device observer."""
    return hd.sr.ObserverContext(
        observer_type=dicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=codes.device_uid(model),
            name=model.name,
            manufacturer_name=codes.MANUFACTURER,
            model_name=model.name,
        ),
    )


def observation_context(model: ModelInfo) -> hd.sr.ObservationContext:
    """TID 1001 with the algorithm as the device observer (TID 1004)."""
    return hd.sr.ObservationContext(observer_device_context=device_observer(model))


def procedures_reported(result: StudyResult) -> list:
    """Procedure Reported: CT, or PET/CT when a PET series was used."""
    if result.pet_series_uid is not None:
        return [codes.PROCEDURE_PET_CT]
    return [codes.PROCEDURE_CT]


def _finding_sites(lesion: Lesion) -> list[hd.sr.FindingSite]:
    site, laterality = codes.finding_site_codes(lesion.side, lesion.lobe)
    return [hd.sr.FindingSite(anatomic_location=site, laterality=laterality)]


def _num(name, value: float, unit, derivation=None, coordinates=None) -> hd.sr.Measurement:
    if not np.isfinite(value):
        raise ValueError(
            f"measurement {name.meaning!r} is {value!r}; only finite numbers can go in"
        )
    return hd.sr.Measurement(
        name=name,
        value=float(value),
        unit=unit,
        derivation=derivation,
        referenced_coordinates=coordinates,
    )


def lesion_measurements(lesion: Lesion) -> list[hd.sr.Measurement]:
    """Volume, PET uptake (when measured), the certainty of the finding and the CNN's histology
    probabilities of one lesion: what holds for the whole lesion (TID 1411 group)."""
    items = [_num(codes.VOLUME, lesion.volume_ml, codes.UNIT_ML)]
    if lesion.suv_max is not None:
        items.append(_num(codes.SUV_BW, lesion.suv_max, codes.UNIT_SUV_BW, codes.MAXIMUM))
    if lesion.suv_mean is not None:
        items.append(_num(codes.SUV_BW, lesion.suv_mean, codes.UNIT_SUV_BW, codes.MEAN))
    if lesion.mtv_ml is not None:
        items.append(_num(codes.METABOLIC_VOLUME, lesion.mtv_ml, codes.UNIT_ML))
    if lesion.tlg is not None:
        items.append(_num(codes.TOTAL_LESION_GLYCOLYSIS, lesion.tlg, codes.UNIT_SUV_BW_GRAM))
    items.append(
        _num(
            codes.CERTAINTY_OF_FINDING,
            round(100.0 * lesion.certainty_of_finding, 2),
            codes.UNIT_PERCENT,
        )
    )
    for cls, probability in sorted(lesion.histology.items()):
        if cls not in codes.PROBABILITY_OF_HISTOLOGY:
            raise ValueError(
                f"lesion {lesion.tracking_id}: histology class {cls!r} is not one of "
                f"{sorted(codes.PROBABILITY_OF_HISTOLOGY)}"
            )
        percent = round(100.0 * probability, 2)
        items.append(_num(codes.PROBABILITY_OF_HISTOLOGY[cls], percent, codes.UNIT_PERCENT))
    return items


box_corners_px = geometry.box_corners_px  # where it used to live


def _source_image(lesion: Lesion) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=lesion.key_slice.sop_class_uid,
        referenced_sop_instance_uid=lesion.key_slice.sop_instance_uid,
    )


def axis_groups(
    lesion: Lesion, result: StudyResult, key_image: Dataset
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One TID 1501 group per 2-D diameter on the key slice (long axis, then short axis): the
    NUM in mm with the two points it was measured between (TID 300 INFERRED FROM SCOORD, a
    2-point POLYLINE), its method at group level, and the lesion's Tracking UID.

    OHIF hydrates a 2-point line only as a Length tool, and picks that tool only by its
    Tracking Identifier (codes.OHIF_LENGTH), reading the points from the group's first NUM:
    so each line is a group of its own, in a template (TID 1501, TID 300) that holds a
    SCOORD under a NUM; TID 1410's ROI measurements (TID 1419) do not.
    """
    spacing = [float(v) for v in key_image.PixelSpacing]
    shape = (int(key_image.Rows), int(key_image.Columns))
    ends = geometry.axis_endpoints_px(
        geometry.key_slice_mask(lesion, shape), (spacing[0], spacing[1])
    )
    if ends is None:  # key_slice_mask falls back to the box, which is never empty
        raise ValueError(f"lesion {lesion.tracking_id}: no pixel on its key slice")
    groups = []
    for name, value, method, points, what in (
        (codes.LONG_AXIS, lesion.long_axis_mm, codes.METHOD_LONG_AXIS, ends[0], "long axis"),
        (codes.SHORT_AXIS, lesion.short_axis_mm, codes.METHOD_SHORT_AXIS, ends[1], "short axis"),
    ):
        line = hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=points,
            source_image=_source_image(lesion),
        )
        measurement = _num(name, value, codes.UNIT_MM, coordinates=[line])
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=lesion.tracking_uid,
                identifier=codes.line_tracking_identifier(lesion.tracking_id, what),
            ),
            finding_category=codes.FINDING_CATEGORY,
            finding_type=codes.finding_type(lesion.long_axis_mm),
            method=method,
            algorithm_id=algorithm_identification(result.model),
            finding_sites=_finding_sites(lesion),
            measurements=[measurement],
        )
        # TID 1501 row 5 modifies the group's measurements; highdicom writes it as CONTAINS.
        for item in group[0].ContentSequence:
            if item.ConceptNameCodeSequence[0].CodeValue == codes.MEASUREMENT_METHOD.value:
                item.RelationshipType = hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD.value
        groups.append(group)
    return groups


def key_slice_region(lesion: Lesion, key_image: Dataset) -> hd.sr.ImageRegion:
    """The lesion's box on its key CT slice: a closed 2-D POLYLINE SCOORD on that image."""
    if key_image.SOPInstanceUID != lesion.key_slice.sop_instance_uid:
        raise ValueError(
            f"lesion {lesion.tracking_id}: key slice {lesion.key_slice.sop_instance_uid} "
            f"but image {key_image.SOPInstanceUID} was given"
        )
    _, _, r1, c1 = lesion.box_rc
    rows, columns = int(key_image.Rows), int(key_image.Columns)
    if r1 >= rows or c1 >= columns:
        raise ValueError(
            f"lesion {lesion.tracking_id}: box_rc {lesion.box_rc} lies outside the "
            f"{rows}x{columns} key slice"
        )
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=geometry.box_corners_px(lesion),
        source_image=_source_image(lesion),
    )


def referenced_segment(
    lesion: Lesion, result: StudyResult, segmentation: Dataset, segment_number: int
) -> hd.sr.ReferencedSegment:
    """The lesion's segment in the SEG, with the analysed CT series as its source series.

    Built from the lesion rather than with ReferencedSegment.from_segmentation, which fails on
    a one-segment SEG (highdicom puts its Segment Identification in the shared groups).
    """
    if result.ct_series_uid is None:
        raise ValueError("a segment reference needs the analysed CT series")
    return hd.sr.ReferencedSegment(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        segment_number=segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(result.ct_series_uid),
    )


def histology_evaluation(
    lesion: Lesion, min_probability: float
) -> hd.sr.QualitativeEvaluation | None:
    """Associated morphology = the most probable histologic type, with the CNN's probability as
    its Certainty of Finding (HAS PROPERTIES), when that probability reaches `min_probability`;
    None otherwise (the per-class probabilities are in the group either way)."""
    if not lesion.histology:
        return None
    cls = lesion.most_probable_type
    probability = float(lesion.histology[cls])
    if probability < min_probability:
        return None
    evaluation = hd.sr.QualitativeEvaluation(
        name=codes.ASSOCIATED_MORPHOLOGY, value=codes.HISTOLOGY_CODES[cls]
    )
    certainty = hd.sr.NumContentItem(
        name=codes.CERTAINTY_OF_FINDING,
        value=round(100.0 * probability, 2),
        unit=codes.UNIT_PERCENT,
        relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
    )
    evaluation[0].ContentSequence = hd.sr.ContentSequence([certainty])
    return evaluation


def key_slice_group(
    lesion: Lesion, result: StudyResult, key_image: Dataset
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The TID 1410 group of the lesion's box on its key slice (Image Region, a closed 5-point
    POLYLINE; Geometric purpose of region = Bounded by), without measurements: OHIF hydrates
    it as a RectangleROI and would look for the rectangle's points under a first NUM."""
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=lesion.tracking_uid, identifier=lesion.tracking_id
        ),
        referenced_region=key_slice_region(lesion, key_image),
        finding_category=codes.FINDING_CATEGORY,
        finding_type=codes.finding_type(lesion.long_axis_mm),
        algorithm_id=algorithm_identification(result.model),
        finding_sites=_finding_sites(lesion),
        geometric_purpose=codes.BOUNDED_BY,
    )


def lesion_groups(
    lesion: Lesion,
    result: StudyResult,
    segmentation: Dataset,
    segment_number: int,
    key_image: Dataset,
    *,
    histology_min_probability: float = DEFAULT_HISTOLOGY_MIN_PROBABILITY,
    histology_assessed: bool = True,
) -> list[
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
]:
    """The groups of a lesion, all with its Tracking UID: the key-slice box (TID 1410), the
    long and the short axis lines (TID 1501 each), and the segment with volume, uptake,
    certainty and histology (TID 1411). The planar groups come first, so a viewer that merges
    the groups of a finding lists the diameters before the rest. Without `histology_assessed`,
    the TID 1411 group says histology was not assessed."""
    evaluation = (
        histology_evaluation(lesion, histology_min_probability)
        if histology_assessed
        else hd.sr.QualitativeEvaluation(
            name=codes.HISTOLOGY_ASSESSMENT, value=codes.HISTOLOGY_NOT_ASSESSED
        )
    )
    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=lesion.tracking_uid, identifier=lesion.tracking_id
        ),
        referenced_segment=referenced_segment(lesion, result, segmentation, segment_number),
        finding_category=codes.FINDING_CATEGORY,
        finding_type=codes.finding_type(lesion.long_axis_mm),
        algorithm_id=algorithm_identification(result.model),
        finding_sites=_finding_sites(lesion),
        measurements=lesion_measurements(lesion),
        qualitative_evaluations=[evaluation] if evaluation is not None else None,
    )
    return [
        key_slice_group(lesion, result, key_image),
        *axis_groups(lesion, result, key_image),
        volumetric,
    ]


def summary_text(result: StudyResult, histology_not_assessed: str | None = None) -> str:
    """One paragraph a technologist can read in the viewer's SR pane; with lesions and
    `histology_not_assessed`, that reason closes it."""
    disclaimer = "" if result.model.clinical_use else "NOT FOR CLINICAL USE. "
    model = f"{result.model.name} {result.model.version}"
    if result.refusal is not None:
        return (
            f"{disclaimer}The study could not be analysed by {model}: {result.refusal} "
            "No lesion measurements were made."
        )
    if not result.analysed:
        return (
            f"{disclaimer}The study could not be analysed by {model}; "
            "see the reasons in this report. No lesion measurements were made."
        )
    series = "CT and PET" if result.pet_series_uid else "CT"
    if not result.lesions:
        return f"{disclaimer}No lung lesion was found by {model} in the {series} images."
    parts = []
    for lesion in result.lesions:
        text = (
            f"{lesion.tracking_id}: {lesion.side} lung"
            + (f" ({lesion.lobe})" if lesion.lobe else "")
            + f", {lesion.long_axis_mm:.1f} x {lesion.short_axis_mm:.1f} mm, "
            f"{lesion.volume_ml:.2f} ml"
        )
        if lesion.suv_max is not None:
            text += f", SUVmax {lesion.suv_max:.1f}"
        if lesion.histology:
            cls = lesion.most_probable_type
            meaning = codes.HISTOLOGY_CODES[cls].meaning.lower()
            text += f", most probably {meaning} (p={lesion.histology[cls]:.2f})"
        parts.append(text)
    return (
        f"{disclaimer}{len(result.lesions)} lung lesion(s) found by {model} in the {series} "
        "images: "
        + "; ".join(parts)
        + "."
        + (f" {histology_not_assessed}" if histology_not_assessed else "")
    )


def cad_summary(result: StudyResult) -> Code:
    """CAD Processing and Findings Summary (CID 6047) of the whole run: a CT refused as not a
    whole chest is "not all algorithms succeeded", never "all succeeded; without findings"."""
    if result.refusal is not None:
        return codes.NOT_ALL_SUCCEEDED_WITHOUT_FINDINGS
    if not result.analysed:
        return codes.NONE_SUCCEEDED_WITHOUT_FINDINGS
    if not result.lesions:
        return codes.ALL_SUCCEEDED_WITHOUT_FINDINGS
    return codes.ALL_SUCCEEDED_WITH_FINDINGS


def qualitative_evaluations(
    result: StudyResult, histology_not_assessed: str | None = None
) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": the CAD summary, reasons skipped (histology not
    assessed among them, when lesions were found), a summary text."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(
            name=codes.CAD_SUMMARY,
            value=cad_summary(result),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    ]
    reasons = list(result.skipped)
    if histology_not_assessed and result.analysed and result.lesions:
        reasons.append(histology_not_assessed)
    if not result.analysed and not reasons:
        reasons = ["No CT series of this study could be analysed (no reason was recorded)."]
    for reason in reasons:
        items.append(
            hd.sr.TextContentItem(
                name=codes.REASON_SKIPPED,
                value=_short_text(reason),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    items.append(
        hd.sr.TextContentItem(
            name=codes.COMMENT,
            value=_short_text(summary_text(result, histology_not_assessed)),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _short_text(text: str) -> str:
    # UT has no practical limit, but a reason that long is a bug upstream; keep it readable.
    text = " ".join(str(text).split())
    return text if len(text) <= 10240 else text[:10237] + "..."


def study_summary_group(result: StudyResult) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The TID 1501 group of a report without lesions: the CAD summary, so the Imaging
    Measurements container is never empty (viewers read its content sequence unchecked)."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=stable_uid("study-summary", result.study_instance_uid),
            identifier=codes.STUDY_SUMMARY,
        ),
        algorithm_id=algorithm_identification(result.model),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.CAD_SUMMARY, value=cad_summary(result))
        ],
    )


def library_images(result: StudyResult, images: Sequence[Dataset]) -> list[Dataset]:
    """The images of the Image Library (TID 1600): every lesion's key slice; without lesions,
    the first image of each analysed series, or the first image received."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in images}
    wanted: list[str] = []
    if result.lesions:
        wanted = [lesion.key_slice.sop_instance_uid for lesion in result.lesions]
    else:
        wanted = [
            refs[0].sop_instance_uid for refs in (result.ct_slices, result.pet_slices) if refs
        ]
    chosen = [by_uid[uid] for uid in dict.fromkeys(wanted) if uid in by_uid]
    if not chosen:
        chosen = [ds for ds in images if "Rows" in ds and "PixelSpacing" in ds][:1]
    return chosen


def separate_containers(dataset: Dataset) -> None:
    """Every CONTAINER item SEPARATE: Weasis prints concept names only for those, and the items
    are separate statements, not one running sentence."""
    if dataset.get("ValueType") == "CONTAINER":
        dataset.ContinuityOfContent = "SEPARATE"
    for item in dataset.get("ContentSequence", []):
        separate_containers(item)


def measurement_report(
    result: StudyResult,
    segmentation: Dataset | None,
    images: Sequence[Dataset] = (),
    *,
    histology_min_probability: float = DEFAULT_HISTOLOGY_MIN_PROBABILITY,
    histology_not_assessed: str | None = None,
) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree; lesion groups reference segments of `segmentation`.

    `images` are the source headers; each lesion's key slice must be among them. With
    `histology_not_assessed` (the reason), no histology is stated and each lesion and the
    qualitative evaluations say it was not assessed.
    """
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    if result.analysed and result.lesions:
        if segmentation is None:
            raise ValueError("lesions can only be reported with their SEG; pass segmentation")
        numbers = segment_numbers(segmentation)
        by_uid = {str(ds.SOPInstanceUID): ds for ds in images}
        for lesion in result.lesions:
            if lesion.tracking_uid not in numbers:
                raise ValueError(
                    f"lesion {lesion.tracking_id} (Tracking UID {lesion.tracking_uid}) has no "
                    "segment in the SEG; build the SEG from the same StudyResult"
                )
            key_image = by_uid.get(lesion.key_slice.sop_instance_uid)
            if key_image is None:
                raise ValueError(
                    f"lesion {lesion.tracking_id}: its key slice "
                    f"{lesion.key_slice.sop_instance_uid} is not among the source images"
                )
            number = numbers[lesion.tracking_uid]
            groups.extend(
                lesion_groups(
                    lesion,
                    result,
                    segmentation,
                    number,
                    key_image,
                    histology_min_probability=histology_min_probability,
                    histology_assessed=histology_not_assessed is None,
                )
            )
    else:
        groups.append(study_summary_group(result))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(result.model),
        procedure_reported=procedures_reported(result),
        imaging_measurements=groups,
        referenced_images=library_images(result, images) or None,
    )
    report[0].ContentSequence.append(qualitative_evaluations(result, histology_not_assessed))
    separate_containers(report[0])
    return report


def segment_numbers(segmentation: Dataset) -> dict[str, int]:
    """Tracking UID -> Segment Number of each segment of a SEG."""
    return {
        str(item.TrackingUID): int(item.SegmentNumber)
        for item in segmentation.SegmentSequence
        if "TrackingUID" in item
    }


def build_sr(
    result: StudyResult,
    evidence: Sequence[Dataset],
    *,
    segmentation: Dataset | None,
    predecessor: Dataset | None,
    series_number: int,
    instance_number: int,
    specific_character_set: str | None,
    histology_min_probability: float = DEFAULT_HISTOLOGY_MIN_PROBABILITY,
    histology_not_assessed: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR of a result; evidence[0] gives the patient and study modules.

    `evidence` lists every instance analysed (the SEG included when there is one); all of it
    goes to the Current Requested Procedure Evidence Sequence.
    """
    content = measurement_report(
        result,
        segmentation,
        evidence,
        histology_min_probability=histology_min_probability,
        histology_not_assessed=histology_not_assessed,
    )
    if predecessor is not None and predecessor.StudyInstanceUID != result.study_instance_uid:
        raise ValueError(
            f"predecessor SR {predecessor.SOPInstanceUID} belongs to study "
            f"{predecessor.StudyInstanceUID}, not {result.study_instance_uid}; pass the previous "
            "SR of the same study or None"
        )
    kwargs: dict[str, Any] = {}
    if specific_character_set is not None:
        kwargs["specific_character_set"] = specific_character_set
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=content,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        is_complete=True,
        is_final=False,
        is_verified=False,
        performed_procedure_codes=procedures_reported(result),
        previous_versions=[predecessor] if predecessor is not None else None,
        contributing_equipment=[codes.algorithm_equipment(result.model)],
        series_description=codes.series_description("lesion report", result.model),
        coding_schemes=codes.coding_schemes(),
        **codes.equipment(result.model),
        **kwargs,
    )
    return sr
