"""StudyResult -> Secondary Capture key images with the findings burned in.

For viewers and PACS that show nothing but images: one image per finding (its key CT slice in
lung window with its outline and box in the finding's colour and a legend), and one summary image
with the table of findings, the model's name and version and the disclaimer. They form a new
series of the same study; Burned In Annotation is YES and the Series Description says what they
are and that they are not for clinical use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from classifier.results import codes, geometry
from classifier.results.overlay import LUNG_WINDOW
from classifier.results.pr_encoder import lesion_label
from classifier.types import HISTOLOGY_NAMES, Lesion, StudyResult

_DPI = 100
_SIZE_PX = 768  # width of every key image


def _canvas(width_px: int, height_px: int) -> Figure:
    figure = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, facecolor="black")
    FigureCanvasAgg(figure)
    return figure


def _rgb(figure: Figure) -> np.ndarray:
    canvas = figure.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[:, :, :3])


def warm_up_rendering() -> None:
    """Render a line of text once, so matplotlib's font cache is loaded before the first key
    image is needed."""
    figure = _canvas(64, 16)
    figure.text(0.5, 0.5, "lungnode", color="white", ha="center", va="center", fontsize=8)
    _rgb(figure)


def _colour(number: int) -> tuple[float, float, float]:
    r, g, b = geometry.lesion_colour(number)
    return (r / 255, g / 255, b / 255)


def render_finding(
    lesion: Lesion,
    number: int,
    hu: np.ndarray,
    spacing_rc: tuple[float, float],
    result: StudyResult,
) -> np.ndarray:
    """The key slice `hu` (HU) in lung window with the finding's outline, box and legend, RGB."""
    rows, cols = hu.shape
    aspect = spacing_rc[0] / spacing_rc[1]
    image_h = int(round(_SIZE_PX * rows * aspect / cols))
    legend_h = 120
    figure = _canvas(_SIZE_PX, image_h + legend_h)
    axes = figure.add_axes(
        (0.0, legend_h / (image_h + legend_h), 1.0, image_h / (image_h + legend_h))
    )
    axes.set_axis_off()
    width, level = LUNG_WINDOW
    shown = np.clip((hu.astype(np.float32) - (level - width / 2)) / width, 0.0, 1.0)
    axes.imshow(
        shown,
        cmap="gray",
        vmin=0,
        vmax=1,
        extent=(0, cols, rows, 0),
        aspect=aspect,
        interpolation="bilinear",
    )
    colour = _colour(number)
    for ring in geometry.outlines_px(geometry.key_slice_mask(lesion, (rows, cols))):
        axes.plot(ring[:, 0], ring[:, 1], color=colour, linewidth=1.2)
    r0, c0, r1, c1 = lesion.box_rc
    pad = 4
    axes.add_patch(
        Rectangle(
            (c0 - pad, r0 - pad),
            c1 - c0 + 1 + 2 * pad,
            r1 - r0 + 1 + 2 * pad,
            fill=False,
            edgecolor=colour,
            linewidth=1.0,
            linestyle="--",
        )
    )
    axes.text(c1 + pad + 2, r0 - pad, str(number), color=colour, fontsize=14, va="bottom")
    axes.set_xlim(0, cols)
    axes.set_ylim(rows, 0)
    lines = [
        lesion_label(lesion, number, clinical_use=result.model.clinical_use),
        f"{lesion.side} lung"
        + (f" ({lesion.lobe})" if lesion.lobe else "")
        + f", {lesion.long_axis_mm:.1f} x {lesion.short_axis_mm:.1f} mm, {lesion.volume_ml:.2f} ml"
        + (f", SUVmax {lesion.suv_max:.1f}" if lesion.suv_max is not None else ""),
        f"{result.model.name} {result.model.version}, window W{width:.0f} L{level:.0f}",
    ]
    if not result.model.clinical_use:
        lines.append(f"AI RESULT - {codes.NOT_CLINICAL}")
    figure.text(
        0.01,
        (legend_h - 8) / (image_h + legend_h),
        "\n".join(lines),
        color="white",
        fontsize=10,
        va="top",
        family="DejaVu Sans",
        wrap=True,
    )
    return _rgb(figure)


def render_summary(result: StudyResult) -> np.ndarray:
    """The table of findings, the model and the disclaimer, RGB."""
    header = [
        "#",
        "Finding",
        "Side",
        "Long mm",
        "Short mm",
        "Vol ml",
        "p(lesion)",
        "Most probable type",
    ]
    rows = []
    for number, lesion in enumerate(result.lesions, start=1):
        kind = ""
        if lesion.histology:
            cls = lesion.most_probable_type
            kind = f"{HISTOLOGY_NAMES.get(cls, cls)} {lesion.histology[cls]:.2f}"
        rows.append(
            [
                str(number),
                lesion.tracking_id,
                lesion.side,
                f"{lesion.long_axis_mm:.1f}",
                f"{lesion.short_axis_mm:.1f}",
                f"{lesion.volume_ml:.2f}",
                f"{lesion.certainty_of_finding:.2f}",
                kind,
            ]
        )
    shown = rows[:40]
    height = 220 + 22 * (len(shown) + 1)
    figure = _canvas(_SIZE_PX + 256, height)
    title = (
        f"AI lung lesion result: {len(result.lesions)} finding(s)\n"
        f"Model {result.model.name} {result.model.version} "
        f"(weights SHA-256 {result.model.sha256[:16]})"
    )
    figure.text(0.02, 1 - 12 / height, title, color="white", fontsize=12, va="top")
    y = 1 - 80 / height
    widths = [0.04, 0.14, 0.08, 0.1, 0.1, 0.09, 0.1, 0.33]
    for line_number, line in enumerate([header, *shown]):
        x = 0.02
        for text, w in zip(line, widths, strict=True):
            colour: Any = "white"
            if line_number > 0 and text == line[0]:
                colour = _colour(line_number)
            figure.text(x, y, text, color=colour, fontsize=10, va="top", family="DejaVu Sans")
            x += w
        y -= 22 / height
    if len(rows) > len(shown):
        figure.text(0.02, y, f"... and {len(rows) - len(shown)} more (see the SR)", color="white")
        y -= 22 / height
    footer = "See the structured report (SR) for every measurement."
    if not result.model.clinical_use:
        footer = f"{codes.NOT_CLINICAL}: research result, not a diagnosis. " + footer
    figure.text(0.02, 30 / height, footer, color="yellow", fontsize=11, va="bottom")
    return _rgb(figure)


def _orientation(ct: Dataset) -> tuple[str, str]:
    """Patient Orientation (row, column direction) of an axial-ish slice."""
    iop = [float(v) for v in ct.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]

    def letter(vector: Sequence[float]) -> str:
        axis = int(np.argmax(np.abs(vector)))
        positive = vector[axis] >= 0
        return ("L" if positive else "R", "P" if positive else "A", "H" if positive else "F")[axis]

    return letter(iop[:3]), letter(iop[3:])


def _key_image(
    pixels: np.ndarray,
    ref: Dataset,
    result: StudyResult,
    *,
    series_uid: str,
    series_number: int,
    instance_number: int,
    specific_character_set: str | None,
    source: Dataset | None,
) -> hd.sc.SCImage:
    kwargs: dict[str, Any] = {}
    if specific_character_set is not None:
        kwargs["specific_character_set"] = specific_character_set
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        patient_orientation=_orientation(source if source is not None else ref),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=codes.series_description("key images", result.model),
        **codes.equipment(result.model),
        **kwargs,
    )
    # The chest is not a paired body part, so General Series Laterality (2C) is absent.
    image.BodyPartExamined = "CHEST"
    image.BurnedInAnnotation = "YES"
    image.RecognizableVisualFeatures = "NO"
    image.ContributingEquipmentSequence = [codes.algorithm_equipment(result.model)]
    if source is not None:
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        image.SourceImageSequence = [item]
        image.DerivationDescription = "Key slice with AI lesion outline and legend burned in"
    else:
        del image.PatientOrientation  # not an image of the patient
        image.add_new(0x00200020, "CS", None)
    image.ImageComments = codes.NOT_CLINICAL if not result.model.clinical_use else "AI result"
    return image


def build_key_images(
    result: StudyResult,
    ref: Dataset,
    key_slices: dict[str, tuple[Dataset, np.ndarray]],
    *,
    series_number: int,
    instance_number: int,
    specific_character_set: str | None,
) -> list[hd.sc.SCImage]:
    """One SC per finding (from `key_slices`: key slice SOP Instance UID -> (its header, its
    pixels in HU)) and a summary SC; `ref` gives the (cleaned) patient and study modules."""
    if not result.lesions:
        raise ValueError("key images need at least one lesion")
    series_uid = hd.UID()
    images = []
    common = {
        "series_uid": series_uid,
        "series_number": series_number,
        "specific_character_set": specific_character_set,
    }
    images.append(
        _key_image(
            render_summary(result),
            ref,
            result,
            instance_number=instance_number * 1000,
            source=None,
            **common,  # type: ignore[arg-type]
        )
    )
    for number, lesion in enumerate(result.lesions, start=1):
        header, hu = key_slices[lesion.key_slice.sop_instance_uid]
        spacing = [float(v) for v in header.get("PixelSpacing", [1.0, 1.0])]
        pixels = render_finding(lesion, number, hu, (spacing[0], spacing[1]), result)
        images.append(
            _key_image(
                pixels,
                ref,
                result,
                instance_number=instance_number * 1000 + number,
                source=header,
                **common,  # type: ignore[arg-type]
            )
        )
    return images
