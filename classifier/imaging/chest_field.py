"""Is the CT a whole chest the detector can read? Anatomical checks on the lung mask, made
before lesions are sought, so that a study that is not a chest CT (head, abdomen), a chest cut
by a small reconstruction field of view, or a scan that stops inside the lungs is refused with
the reason instead of being reported "without findings" (or with noise as findings).

The criteria follow anatomy, not a file: both lungs are present; each is the size of a lung
(its largest axial cross-section, 100-200 cm2 in an adult at the level of the hilum, is at
least MIN_LUNG_AREA_CM2, a quarter of the smallest: what bowel gas or a lung tip at the edge of
an abdominal scan is not); the scan reaches past each lung's widest level on both sides (a
scan that stops inside the lungs shows them widest at its first or last slice); and at that
level the body outline lies inside the image beside each lung (outside air lateral to it, and
in front of or behind it: the side the patient lies on may rest on the table).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from classifier.imaging.lung_mask import AIR_HU, IN_PLANE, LEFT, RIGHT, LungMask
from classifier.imaging.volume import Volume

MIN_LUNG_AREA_CM2 = 30.0
MIN_LUNG_SLICES = 3
_SIDES = {RIGHT: "right", LEFT: "left"}
# LPS: patient right is -x, patient left is +x.
_OUTWARD_X = {RIGHT: -1.0, LEFT: 1.0}


def chest_refusal(ct: Volume, lungs: LungMask) -> str | None:
    """Why the CT cannot be analysed as a chest, in words a technologist understands; None
    when both lungs are wholly in view (see the module doc for the criteria)."""
    present = [label for label in (RIGHT, LEFT) if np.any(lungs.labels == label)]
    if not present:
        return (
            "No lung was found inside the body in the CT images: they do not show a chest, or "
            "the lungs lie outside the field of view. Lung lesions were not looked for; send "
            "a CT of the whole chest."
        )
    if len(present) == 1:
        found = _SIDES[present[0]]
        return (
            f"Only one lung (the {found} lung as seen) was found in the CT images: the other "
            "lies outside the field of view or is missing. Lung lesions were not looked for; "
            "send a CT with both lungs in the field of view."
        )
    slice_area_cm2 = lungs.spacing[1] * lungs.spacing[2] / 100.0
    for label in (RIGHT, LEFT):
        lung = lungs.labels == label
        areas = np.count_nonzero(lung, axis=(1, 2)) * slice_area_cm2
        side = _SIDES[label]
        widest = int(np.argmax(areas))
        if areas[widest] < MIN_LUNG_AREA_CM2:
            return (
                f"The {side} lung found in the CT images is at most {areas[widest]:.0f} cm2 in "
                f"any slice, less than a lung at its widest (at least {MIN_LUNG_AREA_CM2:.0f} "
                "cm2): the images do not show the chest. Lung lesions were not looked for; "
                "send a CT of the whole chest."
            )
        if np.count_nonzero(areas) < MIN_LUNG_SLICES or widest in (0, len(areas) - 1):
            end = "first" if widest == 0 else "last"
            return (
                f"The {side} lung is widest at the {end} slice of the CT series: the scan stops "
                "inside the lungs (it shows only their apices or bases), not the whole chest. "
                "Lung lesions were not looked for; send a CT that covers both lungs from apex "
                "to base."
            )
        cut = _body_cut_beside(ct, lungs, lung[widest], widest, label)
        if cut is not None:
            rows, columns = ct.shape[1:]
            fov = (columns * ct.spacing[2], rows * ct.spacing[1])
            return (
                f"The body is cut by the edge of the image {cut} of the {side} lung (field of "
                f"view {fov[0]:.0f} x {fov[1]:.0f} mm): the field of view is too small to show "
                "the whole chest. Lung lesions were not looked for; send a CT reconstructed "
                "with the whole body cross-section in the field of view."
            )
    return None


def _outside_air(ct: Volume, lungs: LungMask, index: int) -> np.ndarray:
    """Air connected to the image border on one slice of the working grid."""
    start = lungs.factor // 2
    plane = np.asarray(ct.array[index, start :: lungs.factor, start :: lungs.factor])
    plane = plane[: lungs.labels.shape[1], : lungs.labels.shape[2]]
    labels, _ = ndimage.label(plane < AIR_HU, structure=IN_PLANE[1])
    border = np.unique(np.concatenate([labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, border[border > 0])


def _body_cut_beside(
    ct: Volume, lungs: LungMask, lung: np.ndarray, index: int, label: int
) -> str | None:
    """Where, on the lung's widest slice, no outside air lies beyond the lung: "lateral",
    or "in front and behind"; None when the body outline is in the image on those sides."""
    outside = _outside_air(ct, lungs, index)
    rows, cols = np.nonzero(lung)
    row, col = round(float(rows.mean())), round(float(cols.mean()))
    # In-plane axis 1 (rows) or 2 (columns) of the volume that runs most along patient x.
    x_of = {2: float(ct.direction[0, 0]), 1: float(ct.direction[0, 1])}
    lateral_axis = max(x_of, key=lambda a: abs(x_of[a]))
    outward = 1 if x_of[lateral_axis] * _OUTWARD_X[label] > 0 else -1

    def air_beyond(axis: int, step: int) -> bool:
        if axis == 2:
            line, own, at = outside[row, :], lung[row, :], col
        else:
            line, own, at = outside[:, col], lung[:, col], row
        on = np.flatnonzero(own)
        if on.size == 0:  # the centroid of a crescent may lie outside it
            edge = at
        else:
            edge = int(on.max()) if step > 0 else int(on.min())
        beyond = line[edge + 1 :] if step > 0 else line[:edge]
        return bool(beyond.any())

    if not air_beyond(lateral_axis, outward):
        return "lateral"
    ap_axis = 1 if lateral_axis == 2 else 2
    if not (air_beyond(ap_axis, 1) or air_beyond(ap_axis, -1)):
        return "in front and behind"
    return None
