"""PNG pictures of lesions for people: the key CT slice in lung window with the SUV, the box and
the mask contour, and annotated-versus-detected boxes for checking the detector on real data.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no display, no global
backend switch); every picture says NOT FOR CLINICAL USE.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

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
    second = [f"lesion probability {lesion.lesion_probability:.2f}"]
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
