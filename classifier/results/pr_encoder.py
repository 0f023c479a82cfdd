"""StudyResult -> Grayscale Softcopy Presentation State on the analysed CT series.

Every viewer that opens a CT with a GSPS shows its graphics, even one that cannot read an SR or
overlay a SEG. The presentation state references every slice of the analysed CT series, sets a
lung window (W1500/L-600) with the series' own rescale as Modality LUT, and draws each finding in
its own graphic layer (one colour per finding, the SEG's): the outline of its mask on every slice
it spans, and on its key slice also its box and a text label with the finding number, the long
axis, the certainty of the finding, the most probable histologic type and NOT FOR CLINICAL USE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset

from classifier.results import codes, geometry
from classifier.results.overlay import LUNG_WINDOW
from classifier.types import HISTOLOGY_NAMES, Lesion, StudyResult


def lesion_label(lesion: Lesion, number: int, *, clinical_use: bool) -> str:
    """The text a reader sees next to a finding (GSPS label, key image legend)."""
    parts = [
        f"{number}: {lesion.tracking_id}",
        f"long axis {lesion.long_axis_mm:.1f} mm",
        f"p(lesion) {lesion.certainty_of_finding:.2f}",
    ]
    if lesion.histology:
        kind = lesion.most_probable_type
        name = HISTOLOGY_NAMES.get(kind, kind)
        parts.append(f"most probable type {name} {lesion.histology[kind]:.2f}")
    if not clinical_use:
        parts.append(codes.NOT_CLINICAL)
    return ", ".join(parts)


def _layer_name(number: int) -> str:
    return f"FINDING {number}"[:16]


def _annotations(
    lesion: Lesion, number: int, result: StudyResult, ct_sources: Sequence[Dataset]
) -> list[hd.pr.GraphicAnnotation]:
    layer = hd.pr.GraphicLayer(layer_name=_layer_name(number), order=number)
    shape = (int(ct_sources[0].Rows), int(ct_sources[0].Columns))
    mask = np.asarray(lesion.mask).astype(bool)
    first = int(lesion.mask_origin[0])
    out = []
    for local in np.flatnonzero(mask.any(axis=(1, 2))):
        index = first + int(local)
        shifted = replace(lesion, key_slice_index=index)
        rings = geometry.outlines_px(geometry.key_slice_mask(shifted, shape))
        graphics = [
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=ring,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                tracking_id=lesion.tracking_id,
                tracking_uid=lesion.tracking_uid,
            )
            for ring in rings
        ]
        texts = []
        if index == lesion.key_slice_index:
            graphics.append(
                hd.pr.GraphicObject(
                    graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                    graphic_data=geometry.box_corners_px(lesion),
                    units=hd.pr.AnnotationUnitsValues.PIXEL,
                    tracking_id=lesion.tracking_id,
                    tracking_uid=lesion.tracking_uid,
                )
            )
            r0, c0, r1, c1 = lesion.box_rc
            above = r0 > shape[0] // 8
            anchor = (float(c0 + c1 + 1) / 2, float(r0 if above else r1 + 1))
            top = max(0.0, r0 - 0.12 * shape[0]) if above else min(r1 + 2.0, shape[0] - 2.0)
            bottom = min(top + 0.1 * shape[0], float(shape[0]))
            texts.append(
                hd.pr.TextObject(
                    text_value=lesion_label(lesion, number, clinical_use=result.model.clinical_use),
                    units=hd.pr.AnnotationUnitsValues.PIXEL,
                    bounding_box=(
                        max(0.0, anchor[0] - 0.3 * shape[1]),
                        top,
                        min(float(shape[1]), anchor[0] + 0.3 * shape[1]),
                        max(bottom, top + 1.0),
                    ),
                    text_justification=hd.pr.TextJustificationValues.LEFT,
                    tracking_id=lesion.tracking_id,
                    tracking_uid=lesion.tracking_uid,
                )
            )
        if not graphics and not texts:
            continue
        out.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[ct_sources[index]],
                graphic_layer=layer,
                graphic_objects=graphics or None,
                text_objects=texts or None,
            )
        )
    return out


def build_gsps(
    result: StudyResult,
    ct_sources: Sequence[Dataset],
    *,
    series_number: int,
    instance_number: int,
    specific_character_set: str | None,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The GSPS of every lesion of `result`; ct_sources are in result.ct_slices order and the
    first one carries the (cleaned) patient and study modules."""
    if not result.lesions:
        raise ValueError("a presentation state of findings needs at least one lesion")
    if len(ct_sources) != len(result.ct_slices):
        raise ValueError(
            f"{len(ct_sources)} CT source datasets for {len(result.ct_slices)} CT slices; pass "
            "the header of every slice in result.ct_slices"
        )
    model = result.model
    layers = []
    annotations = []
    for number, lesion in enumerate(result.lesions, start=1):
        r, g, b = geometry.lesion_colour(number)
        layers.append(
            hd.pr.GraphicLayer(
                layer_name=_layer_name(number),
                order=number,
                description=codes.clip_at_word(f"{lesion.tracking_id} ({codes.NOT_CLINICAL})"),
                display_color=hd.color.CIELabColor.from_rgb(r, g, b),
            )
        )
        annotations.extend(_annotations(lesion, number, result, ct_sources))
    width, level = LUNG_WINDOW
    first = ct_sources[0]
    modality_lut = hd.ModalityLUTTransformation(
        rescale_intercept=float(first.get("RescaleIntercept", 0) or 0),
        rescale_slope=float(first.get("RescaleSlope", 1) or 1),
        rescale_type=hd.RescaleTypeValues.HU,
    )
    kwargs: dict[str, Any] = {}
    if specific_character_set is not None:
        kwargs["specific_character_set"] = specific_character_set
    description = "AI lung lesion outlines" + (
        "" if model.clinical_use else f", {codes.NOT_CLINICAL}"
    )
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=list(ct_sources),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        **codes.equipment(model),
        content_label="AI_FINDINGS",
        content_description=description,
        graphic_annotations=annotations,
        graphic_layers=layers,
        modality_lut_transformation=modality_lut,
        voi_lut_transformations=[
            hd.pr.SoftcopyVOILUTTransformation(
                window_center=level, window_width=width, window_explanation="LUNG"
            )
        ],
        contributing_equipment=[codes.algorithm_equipment(model)],
        series_description=codes.series_description("lesion outlines", model),
        **kwargs,
    )
    # The chest is not a paired body part, so General Series Laterality (2C) is absent.
    gsps.BodyPartExamined = "CHEST"
    return gsps
