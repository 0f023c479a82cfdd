"""StudyResult -> IHE AI Results (AIR) Comprehensive 3D SR with a TID 1500 Measurement Report.

Each lesion gets two measurement groups with the same Tracking Identifier and Tracking UID:
a TID 1411 volumetric group that references the lesion's segment in the SEG and carries every
measurement, probability and the most probable histologic type, and a TID 1410 planar group
with the lesion's box on its key CT slice (TID 1411 admits one kind of ROI reference only).
A study with no lesion, or one that could not be analysed, says so in the TID 1500
"Qualitative Evaluations" container, in words a technologist understands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes as dicom_codes

from classifier.results import codes
from classifier.types import Lesion, ModelInfo, StudyResult


def algorithm_identification(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification: name, version and the weights' SHA-256 as parameter."""
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"weights_sha256={model.sha256}"],
        manufacturer=codes.MANUFACTURER,
    )


def observation_context(model: ModelInfo) -> hd.sr.ObservationContext:
    """TID 1001 with the algorithm as the device observer (TID 1004)."""
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=dicom_codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=codes.device_uid(model),
                name=model.name,
                manufacturer_name=codes.MANUFACTURER,
                model_name=model.name,
            ),
        )
    )


def procedures_reported(result: StudyResult) -> list:
    """Procedure Reported: CT, or PET/CT when a PET series was used."""
    if result.pet_series_uid is not None:
        return [codes.PROCEDURE_PET_CT]
    return [codes.PROCEDURE_CT]


def _finding_sites(lesion: Lesion) -> list[hd.sr.FindingSite]:
    site, laterality = codes.finding_site_codes(lesion.side, lesion.lobe)
    return [hd.sr.FindingSite(anatomic_location=site, laterality=laterality)]


def _num(name, value: float, unit, derivation=None) -> hd.sr.Measurement:
    if not np.isfinite(value):
        raise ValueError(
            f"measurement {name.meaning!r} is {value!r}; only finite numbers can go in"
        )
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, derivation=derivation)


def lesion_measurements(lesion: Lesion) -> list[hd.sr.Measurement]:
    """Size, volume, PET uptake (when measured) and the CNN's probabilities of one lesion."""
    items = [
        _num(codes.LONG_AXIS, lesion.long_axis_mm, codes.UNIT_MM),
        _num(codes.SHORT_AXIS, lesion.short_axis_mm, codes.UNIT_MM),
        _num(codes.VOLUME, lesion.volume_ml, codes.UNIT_ML),
    ]
    if lesion.suv_max is not None:
        items.append(_num(codes.SUV_BW, lesion.suv_max, codes.UNIT_SUV_BW, codes.MAXIMUM))
    if lesion.suv_mean is not None:
        items.append(_num(codes.SUV_BW, lesion.suv_mean, codes.UNIT_SUV_BW, codes.MEAN))
    if lesion.mtv_ml is not None:
        items.append(_num(codes.METABOLIC_VOLUME, lesion.mtv_ml, codes.UNIT_ML))
    if lesion.tlg is not None:
        items.append(_num(codes.TOTAL_LESION_GLYCOLYSIS, lesion.tlg, codes.UNIT_SUV_BW_GRAM))
    items.append(_num(codes.PROBABILITY_OF_LESION, lesion.lesion_probability, codes.UNIT_NONE))
    for cls, probability in sorted(lesion.histology.items()):
        if cls not in codes.PROBABILITY_OF_HISTOLOGY:
            raise ValueError(
                f"lesion {lesion.tracking_id}: histology class {cls!r} is not one of "
                f"{sorted(codes.PROBABILITY_OF_HISTOLOGY)}"
            )
        items.append(_num(codes.PROBABILITY_OF_HISTOLOGY[cls], probability, codes.UNIT_NONE))
    return items


def box_corners_px(lesion: Lesion) -> np.ndarray:
    """The lesion's key-slice box as a closed ring of (column, row) pixel-edge coordinates.

    box_rc holds inclusive pixel indices; the ring runs along the outer pixel edges, so it
    encloses exactly the boxed pixels (pixel (r, c) covers [c, c+1] x [r, r+1]).
    """
    r0, c0, r1, c1 = lesion.box_rc
    if r1 < r0 or c1 < c0 or min(r0, c0) < 0:
        raise ValueError(f"lesion {lesion.tracking_id}: box_rc {lesion.box_rc} is not a box")
    x0, y0, x1, y1 = float(c0), float(r0), float(c1 + 1), float(r1 + 1)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


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
        graphic_data=box_corners_px(lesion),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=lesion.key_slice.sop_class_uid,
            referenced_sop_instance_uid=lesion.key_slice.sop_instance_uid,
        ),
    )


def referenced_segment(
    lesion: Lesion, result: StudyResult, segmentation: Dataset, segment_number: int
) -> hd.sr.ReferencedSegment:
    """The lesion's segment in the SEG, with the CT slices it lies on as source images.

    Built from the lesion rather than with ReferencedSegment.from_segmentation, which fails on
    a one-segment SEG (highdicom puts its Segment Identification in the shared groups).
    """
    mask = np.asarray(lesion.mask).astype(bool)
    first = int(lesion.mask_origin[0])
    slices = [first + i for i in np.flatnonzero(mask.any(axis=(1, 2)))]
    return hd.sr.ReferencedSegment(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        segment_number=segment_number,
        source_images=[
            hd.sr.SourceImageForSegmentation(
                referenced_sop_class_uid=result.ct_slices[i].sop_class_uid,
                referenced_sop_instance_uid=result.ct_slices[i].sop_instance_uid,
            )
            for i in slices
        ],
    )


def lesion_groups(
    lesion: Lesion,
    result: StudyResult,
    segmentation: Dataset,
    segment_number: int,
    key_image: Dataset,
) -> list[
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
]:
    """The TID 1411 (segment, measurements) and TID 1410 (key-slice box) groups of a lesion."""
    model = result.model
    tracking = hd.sr.TrackingIdentifier(uid=lesion.tracking_uid, identifier=lesion.tracking_id)
    evaluations = []
    if lesion.histology:
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=codes.ASSOCIATED_MORPHOLOGY,
                value=codes.HISTOLOGY_CODES[lesion.most_probable_type],
            )
        )
    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=referenced_segment(lesion, result, segmentation, segment_number),
        finding_category=codes.FINDING_CATEGORY,
        finding_type=codes.FINDING_TYPE,
        algorithm_id=algorithm_identification(model),
        finding_sites=_finding_sites(lesion),
        measurements=lesion_measurements(lesion),
        qualitative_evaluations=evaluations or None,
    )
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=lesion.tracking_uid, identifier=lesion.tracking_id
        ),
        referenced_region=key_slice_region(lesion, key_image),
        finding_category=codes.FINDING_CATEGORY,
        finding_type=codes.FINDING_TYPE,
        algorithm_id=algorithm_identification(model),
        finding_sites=_finding_sites(lesion),
    )
    return [volumetric, planar]


def summary_text(result: StudyResult) -> str:
    """One paragraph a technologist can read in the viewer's SR pane."""
    disclaimer = "" if result.model.clinical_use else "NOT FOR CLINICAL USE. "
    model = f"{result.model.name} {result.model.version}"
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
        "images: " + "; ".join(parts) + "."
    )


def qualitative_evaluations(result: StudyResult) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": the no-lesion finding, reasons skipped, a summary."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    items: list[hd.sr.ContentItem] = []
    if not result.analysed:
        items.append(
            hd.sr.CodeContentItem(
                name=codes.FINDING,
                value=codes.NOT_ANALYSED,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    elif not result.lesions:
        items.append(
            hd.sr.CodeContentItem(
                name=codes.FINDING,
                value=codes.NO_ABNORMALITY_DETECTED,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    reasons = list(result.skipped)
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
            value=_short_text(summary_text(result)),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _short_text(text: str) -> str:
    # UT has no practical limit, but a reason that long is a bug upstream; keep it readable.
    text = " ".join(str(text).split())
    return text if len(text) <= 10240 else text[:10237] + "..."


def measurement_report(
    result: StudyResult, segmentation: Dataset | None, images: Sequence[Dataset] = ()
) -> hd.sr.MeasurementReport | hd.sr.ContainerContentItem:
    """The TID 1500 content tree; lesion groups reference segments of `segmentation`.

    `images` are the source headers; each lesion's key slice must be among them.
    """
    context = observation_context(result.model)
    procedures = procedures_reported(result)
    if result.analysed and result.lesions:
        if segmentation is None:
            raise ValueError("lesions can only be reported with their SEG; pass segmentation")
        numbers = segment_numbers(segmentation)
        by_uid = {str(ds.SOPInstanceUID): ds for ds in images}
        groups = []
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
            groups.extend(lesion_groups(lesion, result, segmentation, number, key_image))
        report = hd.sr.MeasurementReport(
            observation_context=context,
            procedure_reported=procedures,
            imaging_measurements=groups,
        )
        report[0].ContentSequence.append(qualitative_evaluations(result))
        return report
    # highdicom's MeasurementReport insists on measurement groups; build the same root by hand.
    root = hd.sr.ContainerContentItem(
        name=dicom_codes.cid7021.ImagingMeasurementReport, template_id="1500"
    )
    content = hd.sr.ContentSequence()
    content.extend(
        hd.sr.LanguageOfContentItemAndDescendants(
            hd.sr.CodedConcept(
                value="en-US", scheme_designator="RFC5646", meaning="English (United States)"
            )
        )
    )
    content.extend(context)
    for procedure in procedures:
        content.append(
            hd.sr.CodeContentItem(
                name=dicom_codes.DCM.ProcedureReported,
                value=procedure,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
            )
        )
    content.append(qualitative_evaluations(result))
    root.ContentSequence = content
    return root


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
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR of a result; evidence[0] gives the patient and study modules.

    `evidence` lists every instance analysed (the SEG included when there is one); all of it
    goes to the Current Requested Procedure Evidence Sequence.
    """
    content = measurement_report(result, segmentation, evidence)
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
        manufacturer=codes.MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        performed_procedure_codes=procedures_reported(result),
        previous_versions=[predecessor] if predecessor is not None else None,
        contributing_equipment=[codes.algorithm_equipment(result.model)],
        series_description=codes.series_description("lesion report", result.model),
        coding_schemes=codes.coding_schemes(),
        manufacturer_model_name=result.model.name,
        software_versions=result.model.version,
        **kwargs,
    )
    return sr
