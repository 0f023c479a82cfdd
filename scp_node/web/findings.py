"""What the Findings page shows of a study's result objects: read from the stored SR and SEG.

`measurements(sr_path)`: each measurement group of the TID 1500 SR (one per lesion) as its
tracking identifier and (name, value, unit) rows: sizes, volumes, SUV, TLG, the probability of
a lesion and of each histologic type (unless histology is not to be shown: see
`measurements`). `lesion_picture(seg_path, index, segment)`: a PNG of the
CT slice where a lesion's segment is largest, with the segment's outline drawn in, from the SEG's
own references to its source CT images. Both read only what the node itself wrote.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

DISCLAIMER = (
    "Research software: results of a CNN trained on public and synthetic data. Not for clinical "
    "use; not a medical device. A radiologist reads the images."
)


# What states histology in the node's SRs: the per-type probabilities (99LUNGNODE LN-P-HIST-*)
# and Associated morphology (SCT 116676008).
_HISTOLOGY_PREFIX = "LN-P-HIST-"
_ASSOCIATED_MORPHOLOGY = "116676008"
NOT_ASSESSED_ROW = ("Histologic type assessment", "Not assessed", "")


def _code(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeValue) if seq else ""


def _meaning(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeMeaning) if seq else ""


def _value(item: Dataset) -> tuple[str, str] | None:
    kind = item.get("ValueType", "")
    if kind == "NUM" and item.get("MeasuredValueSequence"):
        mv = item.MeasuredValueSequence[0]
        unit = (
            mv.MeasurementUnitsCodeSequence[0].CodeValue
            if mv.get("MeasurementUnitsCodeSequence")
            else ""
        )
        return f"{float(mv.NumericValue):.3g}", "" if unit == "1" else str(unit)
    if kind == "CODE" and item.get("ConceptCodeSequence"):
        return str(item.ConceptCodeSequence[0].CodeMeaning), ""
    if kind in ("TEXT", "UIDREF") and "TextValue" in item:
        return str(item.TextValue), ""
    return None


def measurements(sr_path: Path, show_histology: bool = True) -> dict[str, Any]:
    """{"title", "description", "groups": [{"name", "rows": [(name, value, unit)]}]}.

    Without `show_histology` ([results] histology and the model: histology_gate), a group's
    histology rows, in an SR written before that rule or under another setting, are replaced by
    one "not assessed" row: the page never shows what the node would not send."""
    ds = pydicom.dcmread(sr_path)
    groups: list[dict[str, Any]] = []

    def walk(items: Any) -> None:
        for item in items or []:
            if item.get("ValueType") == "CONTAINER" and _meaning(item) == "Measurement Group":
                rows: list[tuple[str, str, str]] = []
                name = ""
                for child in item.get("ContentSequence", []):
                    if _meaning(child) == "Tracking Identifier" and "TextValue" in child:
                        name = str(child.TextValue)
                    code = _code(child)
                    if not show_histology and (
                        code.startswith(_HISTOLOGY_PREFIX) or code == _ASSOCIATED_MORPHOLOGY
                    ):
                        if NOT_ASSESSED_ROW not in rows:
                            rows.append(NOT_ASSESSED_ROW)
                        continue
                    value = _value(child)
                    if value is not None and _meaning(child) not in ("Tracking Unique Identifier",):
                        rows.append((_meaning(child), value[0], value[1]))
                groups.append({"name": name or f"group {len(groups) + 1}", "rows": rows})
            walk(item.get("ContentSequence"))

    walk(ds.get("ContentSequence"))
    return {
        "title": _meaning(ds) if "ConceptNameCodeSequence" in ds else "report",
        "description": str(ds.get("SeriesDescription", "")),
        "groups": groups,
    }


def segments(seg_path: Path) -> list[tuple[int, str]]:
    """(Segment Number, Segment Label) of each segment of a SEG."""
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    return [(int(s.SegmentNumber), str(s.get("SegmentLabel", ""))) for s in ds.SegmentSequence]


def lesion_picture(seg_path: Path, ct_path_of: Any, segment: int) -> bytes:
    """PNG: the source CT slice where `segment` covers most pixels, its outline in red.
    `ct_path_of(sop_uid)` gives the stored path of a CT instance (or None)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    seg = pydicom.dcmread(seg_path)
    frames = seg.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    shared = seg.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    best, best_area, source = -1, -1, None
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        # A macro common to every frame (one segment: its identification) sits in the shared
        # functional groups instead of each frame's.
        ident = fg.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        if not ident or int(ident[0].ReferencedSegmentNumber) != segment:
            continue
        area = int(np.count_nonzero(frames[i]))
        if area > best_area:
            refs = fg.get("DerivationImageSequence") or shared.get("DerivationImageSequence")
            src = refs[0].SourceImageSequence[0].ReferencedSOPInstanceUID if refs else None
            best, best_area, source = i, area, src
    if best < 0:
        raise KeyError(f"segment {segment} has no frame")
    mask = frames[best] > 0
    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ct_path = ct_path_of(str(source)) if source else None
    if ct_path is not None:
        ct = pydicom.dcmread(ct_path)
        hu = ct.pixel_array * float(ct.get("RescaleSlope", 1)) + float(
            ct.get("RescaleIntercept", 0)
        )
        ax.imshow(np.clip((hu + 1000.0) / 1400.0, 0, 1), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.zeros(mask.shape), cmap="gray")
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="red", linewidths=1.5)
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
