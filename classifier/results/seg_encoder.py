"""StudyResult -> DICOM Segmentation: one binary segment per lesion on the CT geometry.

Each lesion's cropped mask is placed at its mask_origin in a volume of the CT's shape; only
frames where a segment is non-empty are stored. Segment label, Tracking ID and Tracking UID are
the lesion's, so the SR's measurement groups and the SEG's segments pair up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.valuerep import PersonName, format_number_as_ds

from classifier.results import codes, geometry
from classifier.types import Lesion, ModelInfo, StudyResult


def _placed_mask(
    lesion: Lesion, shape: tuple[int, int, int]
) -> tuple[np.ndarray, tuple[int, int, int], tuple[int, int, int]]:
    """The lesion's bool mask with its origin and end in a volume of `shape`, checked."""
    mask = np.asarray(lesion.mask).astype(bool)
    if mask.ndim != 3:
        raise ValueError(
            f"lesion {lesion.tracking_id}: mask has {mask.ndim} dimensions, expected 3 "
            "([slice, row, column] cropped at mask_origin)"
        )
    if not mask.any():
        raise ValueError(f"lesion {lesion.tracking_id}: mask is empty; a segment needs a voxel")
    origin = tuple(int(v) for v in lesion.mask_origin)
    end = tuple(o + n for o, n in zip(origin, mask.shape, strict=True))
    if min(origin) < 0 or any(e > s for e, s in zip(end, shape, strict=True)):
        raise ValueError(
            f"lesion {lesion.tracking_id}: mask of shape {mask.shape} at origin {origin} "
            f"does not fit in the CT volume of shape {shape}"
        )
    # mask.ndim == 3 is checked above and zip(strict=True) makes origin and end 3 long too;
    # a tuple comprehension cannot say so.
    return mask, origin, end  # type: ignore[return-value]


def lesion_volume(lesion: Lesion, shape: tuple[int, int, int]) -> np.ndarray:
    """The lesion's mask placed into a bool volume of `shape` ([slice, row, column])."""
    mask, origin, end = _placed_mask(lesion, shape)
    volume = np.zeros(shape, dtype=bool)
    volume[origin[0] : end[0], origin[1] : end[1], origin[2] : end[2]] = mask
    return volume


def lesion_frames(
    lesions: Sequence[Lesion], shape: tuple[int, int, int]
) -> tuple[list[int], np.ndarray]:
    """The CT slices that hold a voxel of any lesion, and there the stacked segments
    (slices, rows, columns, lesions) as uint8: what the SEG stores, without the empty slices
    of a full-size array.
    """
    placed = [_placed_mask(lesion, shape) for lesion in lesions]
    filled = [origin[0] + np.flatnonzero(mask.any(axis=(1, 2))) for mask, origin, _ in placed]
    slices = sorted({int(s) for f in filled for s in f})
    index = {s: i for i, s in enumerate(slices)}
    pixels = np.zeros((len(slices), shape[1], shape[2], len(lesions)), dtype=np.uint8)
    for k, ((mask, origin, end), on) in enumerate(zip(placed, filled, strict=True)):
        for s in on:
            plane = pixels[index[int(s)], origin[1] : end[1], origin[2] : end[2], k]
            plane[mask[s - origin[0]]] = 1
    return slices, pixels


def segment_description(
    lesion: Lesion, number: int, result: StudyResult
) -> hd.seg.SegmentDescription:
    """Segment Description macro of one lesion: finding codes, algorithm, tracking IDs, its
    recommended display colour, and the disclaimer in label and description (viewers show those
    next to the segment)."""
    site, _ = codes.finding_site_codes(lesion.side, None)
    model = result.model
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment_label(lesion, model),
        segmented_property_category=codes.FINDING_CATEGORY,
        segmented_property_type=codes.finding_type(lesion.long_axis_mm),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model.name,
            family=codes.ARTIFICIAL_INTELLIGENCE,
            version=model.version,
            source=codes.MANUFACTURER,
            parameters={"weights_sha256": model.sha256, "certainty": model.certainty},
        ),
        tracking_uid=lesion.tracking_uid,
        tracking_id=lesion.tracking_id,
        anatomic_regions=[site],
        display_color=hd.color.CIELabColor.from_rgb(*geometry.lesion_colour(number)),
    )
    text = (
        f"{lesion.tracking_id}: lung lesion found by {model.name} {model.version}, "
        f"{lesion.long_axis_mm:.1f} mm long axis, "
        f"certainty {100 * lesion.certainty_of_finding:.0f}%"
    )
    if not model.clinical_use:
        text = f"{codes.NOT_CLINICAL} {text}"
    description.SegmentDescription = codes.clip_at_word(text, 64)
    return description


def segment_label(lesion: Lesion, model: ModelInfo) -> str:
    """Segment Label (LO): the lesion's Tracking ID, with NOT FOR CLINICAL USE when so."""
    label = lesion.tracking_id
    if not model.clinical_use:
        label = f"{label} {codes.NOT_CLINICAL}"
    return codes.clip_at_word(label, 64)


def slice_spacing(ct_sources: Sequence[Dataset]) -> float:
    """The CT's step between slices along their normal (mm), for the SEG's Spacing Between
    Slices: readers that stack the frames by it (dcmqi) measure a segment's volume with it."""
    if len(ct_sources) < 2:
        return float(ct_sources[0].SliceThickness)
    orientation = np.asarray([float(v) for v in ct_sources[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [
        float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for ds in ct_sources
    ]
    steps = np.abs(np.diff(positions))
    step = float(np.median(steps))
    if step <= 0:
        raise ValueError(
            f"CT slices share one position along their normal ({positions[0]} mm); "
            "pass the slices of one volume, one header per position"
        )
    return round(step, 6)


def content_creator_name(model: ModelInfo) -> PersonName:
    """Content Creator's Name (Type 2, Content Identification Macro): the algorithm that drew
    the segments, as a one-component name (the trailing "^" says so)."""
    name = model.name.replace("^", " ").replace("=", " ")
    return PersonName(f"{codes.clip_at_word(name, 63)}^")


def build_seg(
    result: StudyResult,
    ct_sources: Sequence[Dataset],
    *,
    series_number: int,
    instance_number: int,
    specific_character_set: str | None,
) -> hd.seg.Segmentation:
    """The SEG of every lesion of `result`; ct_sources are in result.ct_slices order."""
    if not result.lesions:
        raise ValueError("a SEG needs at least one lesion; the result has none")
    if result.ct_shape is None or len(result.ct_shape) != 3:
        raise ValueError(f"StudyResult.ct_shape is {result.ct_shape!r}; the SEG needs (z, y, x)")
    if len(ct_sources) != result.ct_shape[0]:
        raise ValueError(
            f"{len(ct_sources)} CT source datasets for a CT volume of {result.ct_shape[0]} "
            "slices; pass the header of every slice in result.ct_slices"
        )
    rows, cols = int(ct_sources[0].Rows), int(ct_sources[0].Columns)
    if (rows, cols) != tuple(result.ct_shape[1:]):
        raise ValueError(
            f"CT slices are {rows}x{cols} but StudyResult.ct_shape is {result.ct_shape}"
        )
    # Only the slices with a lesion go to highdicom, placed by their source's position: it
    # matches them to those sources, as it would the non-empty planes of a full-size array.
    slices, pixels = lesion_frames(result.lesions, result.ct_shape)
    positions = [
        hd.PlanePositionSequence(
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            image_position=[float(v) for v in ct_sources[s].ImagePositionPatient],
        )
        for s in slices
    ]
    descriptions = [
        segment_description(lesion, number, result)
        for number, lesion in enumerate(result.lesions, start=1)
    ]
    kwargs: dict[str, Any] = {}
    if specific_character_set is not None:
        kwargs["specific_character_set"] = specific_character_set
    model = result.model
    seg = hd.seg.Segmentation(
        source_images=list(ct_sources),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        **codes.equipment(model),
        content_label="LESIONS",
        content_creator_name=content_creator_name(model),
        content_description=(
            "Lung lesions found by the AI algorithm"
            + ("" if model.clinical_use else f", {codes.NOT_CLINICAL}")
        ),
        series_description=codes.series_description("lesion segmentation", model),
        contributing_equipment=[codes.algorithm_equipment(model)],
        coding_schemes=codes.coding_schemes(),
        plane_positions=positions,
        omit_empty_frames=True,
        **kwargs,
    )
    # highdicom puts its own value there (1.0 for one stored frame), whatever it is given.
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.SpacingBetweenSlices = format_number_as_ds(slice_spacing(ct_sources))
    return seg
