"""PNG pictures of lesions for people: the key CT slice in lung window with the SUV, the box and
the mask contour, annotated-versus-detected boxes for checking the detector on real data, and a
CT slice shown through a presentation state (render_presentation_state), as a viewer would.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no display, no global
backend switch); every picture says NOT FOR CLINICAL USE.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from highdicom.color import CIELabColor
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from pydicom import Dataset

from classifier.imaging.volume import Volume
from classifier.types import HISTOLOGY_NAMES, Lesion

LUNG_WINDOW = (1500.0, -600.0)  # (width, level) in HU
NOT_CLINICAL = "NOT FOR CLINICAL USE"
_SUV_DISPLAY_MAX = 10.0
_DPI = 100


def _windowed(ct: Volume, slice_index: int) -> np.ndarray:
    width, level = LUNG_WINDOW
    image = ct.array[slice_index].astype(np.float32)
    return np.clip((image - (level - width / 2)) / width, 0.0, 1.0)


def _check_slice(ct: Volume, slice_index: int) -> None:
    if not 0 <= slice_index < ct.shape[0]:
        raise ValueError(
            f"slice index {slice_index} is outside the CT volume of {ct.shape[0]} slices; "
            "pass an index in [0, number of slices)"
        )


def _figure(ct: Volume) -> tuple[Figure, Axes]:
    rows, cols = ct.shape[1:]
    # Pixel aspect from the spacing, so anisotropic pixels are not distorted.
    aspect = ct.spacing[1] / ct.spacing[2]
    height = 7.0
    width = max(4.0, height * cols / (rows * aspect))
    figure = Figure(figsize=(width, height + 0.9), dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.0, 0.0, 1.0, height / (height + 0.9)))
    axes.set_axis_off()
    return figure, axes


def _box_patch(r0: int, c0: int, r1: int, c1: int, colour: str) -> Rectangle:
    return Rectangle(
        (c0 - 0.5, r0 - 0.5), c1 - c0 + 1, r1 - r0 + 1, fill=False, edgecolor=colour, linewidth=1.2
    )


def _title(lesion: Lesion) -> str:
    facts = [
        lesion.tracking_id,
        lesion.side,
        f"{lesion.long_axis_mm:.1f} x {lesion.short_axis_mm:.1f} mm",
        f"{lesion.volume_ml:.2f} ml",
    ]
    if lesion.suv_max is not None:
        facts.append(f"SUVmax {lesion.suv_max:.1f}")
    if lesion.certainty is None:
        second = [f"lesion score {lesion.lesion_probability:.2f} (uncalibrated)"]
    else:
        second = [f"certainty of finding {lesion.certainty:.2f} (calibrated probability)"]
    if lesion.histology:
        kind = lesion.most_probable_type
        name = HISTOLOGY_NAMES.get(kind, kind)
        second.append(f"most probable type {name} ({kind}) {lesion.histology[kind]:.2f}")
    return ", ".join(facts) + "\n" + ", ".join(second) + f"\n{NOT_CLINICAL}"


def render_lesion_png(ct: Volume, suv: Volume | None, lesion: Lesion, path: Path) -> None:
    """Write the lesion's key CT slice (lung window, W1500/L-600) with the SUV as a translucent
    hot overlay, its box (yellow) and mask contour (cyan), titled with its measurements.
    """
    s = lesion.key_slice_index
    _check_slice(ct, s)
    if suv is not None and suv.shape != ct.shape:
        raise ValueError(
            f"SUV volume shape {suv.shape} differs from CT shape {ct.shape}; "
            "resample the SUV onto the CT grid first (classifier.imaging.resample.resample_to)"
        )
    figure, axes = _figure(ct)
    aspect = ct.spacing[1] / ct.spacing[2]
    axes.imshow(
        _windowed(ct, s), cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest"
    )
    if suv is not None:
        values = np.ma.masked_less(suv.array[s].astype(np.float32), 1.0)
        axes.imshow(
            values,
            cmap="hot",
            vmin=0,
            vmax=_SUV_DISPLAY_MAX,
            alpha=0.45,
            aspect=aspect,
            interpolation="bilinear",
        )
    axes.add_patch(_box_patch(*lesion.box_rc, colour="yellow"))
    local = s - lesion.mask_origin[0]
    if 0 <= local < lesion.mask.shape[0] and lesion.mask[local].any():
        full = np.zeros(ct.shape[1:], dtype=np.float32)
        r, c = lesion.mask_origin[1], lesion.mask_origin[2]
        h, w = lesion.mask.shape[1:]
        full[r : r + h, c : c + w] = lesion.mask[local]
        axes.contour(full, levels=[0.5], colors="cyan", linewidths=1.0)
    figure.suptitle(_title(lesion), fontsize=10, y=0.995, va="top")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=_DPI)


def render_annotated_slice_png(
    ct: Volume,
    slice_index: int,
    annotation_boxes: Sequence[tuple[int, int, int, int]],
    detected_boxes: Sequence[tuple[int, int, int, int]],
    path: Path,
    title: str = "",
) -> None:
    """Write one CT slice (lung window) with reference boxes (xmin, ymin, xmax, ymax) in green
    and detections (row_min, col_min, row_max, col_max) in red: for checking the detector.
    """
    _check_slice(ct, slice_index)
    figure, axes = _figure(ct)
    aspect = ct.spacing[1] / ct.spacing[2]
    axes.imshow(
        _windowed(ct, slice_index),
        cmap="gray",
        vmin=0,
        vmax=1,
        aspect=aspect,
        interpolation="nearest",
    )
    for x0, y0, x1, y1 in annotation_boxes:
        axes.add_patch(_box_patch(y0, x0, y1, x1, colour="lime"))
    for r0, c0, r1, c1 in detected_boxes:
        axes.add_patch(_box_patch(r0, c0, r1, c1, colour="red"))
    heading = title or f"slice {slice_index}"
    figure.suptitle(
        f"{heading}: annotation green, detection red\n{NOT_CLINICAL}",
        fontsize=10,
        y=0.995,
        va="top",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=_DPI)


def render_presentation_state(image: Dataset, state: Dataset) -> np.ndarray:
    """Apply a Grayscale Softcopy Presentation State to one referenced image as a viewer does,
    and return the RGB picture (uint8): the stored pixels through the state's Modality LUT
    (rescale) and its VOI window, then each graphic layer in Graphic Layer Order, drawn in its
    recommended display colour: POLYLINE graphic objects in PIXEL units and text objects in
    their bounding boxes. Only what lungnode's GSPS uses is supported (no LUT tables, no
    rotation, no shutters, no DISPLAY units)."""
    uid = str(image.SOPInstanceUID)
    pixels = image.pixel_array.astype(np.float64)
    slope = float(state.get("RescaleSlope", image.get("RescaleSlope", 1)) or 1)
    intercept = float(state.get("RescaleIntercept", image.get("RescaleIntercept", 0)) or 0)
    values = pixels * slope + intercept
    (voi,) = state.SoftcopyVOILUTSequence
    centre, width = float(voi.WindowCenter), float(voi.WindowWidth)
    # PS3.3 C.11.2.1.2.1, the LINEAR function
    grey = np.clip(((values - (centre - 0.5)) / (width - 1) + 0.5), 0.0, 1.0)
    rows, cols = grey.shape
    figure = Figure(figsize=(cols / _DPI, rows / _DPI), dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_axis_off()
    axes.imshow(
        grey, cmap="gray", vmin=0, vmax=1, extent=(0, cols, rows, 0), interpolation="nearest"
    )
    layers = {
        str(layer.GraphicLayer): layer
        for layer in sorted(state.GraphicLayerSequence, key=lambda x: int(x.GraphicLayerOrder))
    }
    order = list(layers)
    annotations = [
        a
        for a in state.get("GraphicAnnotationSequence", [])
        if any(str(r.ReferencedSOPInstanceUID) == uid for r in a.ReferencedImageSequence)
    ]
    annotations.sort(key=lambda a: order.index(str(a.GraphicLayer)))
    for annotation in annotations:
        layer = layers[str(annotation.GraphicLayer)]
        colour: tuple[float, ...] = (1.0, 1.0, 0.0)
        if "GraphicLayerRecommendedDisplayCIELabValue" in layer:
            lab = CIELabColor.from_dicom_value(layer.GraphicLayerRecommendedDisplayCIELabValue)
            colour = tuple(c / 255 for c in lab.to_rgb(clip=True))
        for graphic in annotation.get("GraphicObjectSequence", []):
            if graphic.GraphicType != "POLYLINE" or graphic.GraphicAnnotationUnits != "PIXEL":
                continue
            points = np.asarray(graphic.GraphicData, dtype=float).reshape(-1, 2)
            axes.plot(points[:, 0], points[:, 1], color=colour, linewidth=1.0)
        for text in annotation.get("TextObjectSequence", []):
            left, top = (float(v) for v in text.BoundingBoxTopLeftHandCorner)
            right, _ = (float(v) for v in text.BoundingBoxBottomRightHandCorner)
            axes.text(
                left,
                top,
                str(text.UnformattedTextValue),
                color=colour,
                fontsize=7,
                va="top",
                ha="left",
                wrap=True,
                clip_on=True,
            ).set_in_layout(False)
            del right
    axes.set_xlim(0, cols)
    axes.set_ylim(rows, 0)
    canvas = figure.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[:, :, :3])
