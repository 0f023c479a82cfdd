"""2-D geometry of a lesion on its key CT slice, in the image-relative pixel coordinates the SR
(SCOORD) and the presentation state (Graphic Data, PIXEL units) share: (column, row), with
0.0\\0.0 at the top left corner of the top left pixel, so pixel (r, c) covers [c, c+1] x [r, r+1]
and its centre is (c + 0.5, r + 0.5) (PS3.3 C.10.5.1.2, C.18.6.1.2).

The colours of the lesions are here too, so the SEG, the presentation state and the key images
draw lesion N in the same colour.
"""

from __future__ import annotations

import contourpy
import numpy as np

from classifier.types import Lesion

# Distinct on a grey CT in lung window, and in CIELab for the SEG (RGB 0..255).
LESION_COLOURS_RGB: tuple[tuple[int, int, int], ...] = (
    (255, 215, 0),  # yellow
    (0, 229, 255),  # cyan
    (255, 64, 255),  # magenta
    (255, 140, 0),  # orange
    (118, 255, 3),  # lime
    (255, 82, 82),  # red
    (68, 138, 255),  # blue
    (255, 255, 255),  # white
)


def lesion_colour(number: int) -> tuple[int, int, int]:
    """RGB of lesion `number` (1-based), cycling through LESION_COLOURS_RGB."""
    return LESION_COLOURS_RGB[(number - 1) % len(LESION_COLOURS_RGB)]


def box_corners_px(lesion: Lesion) -> np.ndarray:
    """The lesion's key-slice box as a closed ring of (column, row) pixel-edge coordinates.

    box_rc holds inclusive pixel indices; the ring runs along the outer pixel edges, so it
    encloses exactly the boxed pixels.
    """
    r0, c0, r1, c1 = lesion.box_rc
    if r1 < r0 or c1 < c0 or min(r0, c0) < 0:
        raise ValueError(f"lesion {lesion.tracking_id}: box_rc {lesion.box_rc} is not a box")
    x0, y0, x1, y1 = float(c0), float(r0), float(c1 + 1), float(r1 + 1)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


def key_slice_mask(lesion: Lesion, shape: tuple[int, int]) -> np.ndarray:
    """The lesion's mask on its key slice, as a bool image of `shape` (rows, columns); the box
    when the mask has no voxel there."""
    full = np.zeros(shape, dtype=bool)
    local = lesion.key_slice_index - int(lesion.mask_origin[0])
    mask = np.asarray(lesion.mask).astype(bool)
    if 0 <= local < mask.shape[0] and mask[local].any():
        r, c = int(lesion.mask_origin[1]), int(lesion.mask_origin[2])
        h, w = mask.shape[1:]
        full[r : r + h, c : c + w] = mask[local][: shape[0] - r, : shape[1] - c]
    else:
        r0, c0, r1, c1 = lesion.box_rc
        full[r0 : r1 + 1, c0 : c1 + 1] = True
    return full


def outlines_px(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2-D mask as (column, row) rings in image-relative pixel coordinates
    (the 0.5 iso-line of the mask through the pixel edges), longest first."""
    padded = np.pad(np.asarray(mask2d, dtype=np.float64), 1)
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    rings = []
    for line in generator.lines(0.5):
        ring = np.asarray(line, dtype=float)  # (x=column, y=row) of the padded grid
        ring = ring - 1.0 + 0.5  # undo the padding; pixel centres sit at +0.5
        if len(ring) >= 3:
            if not np.array_equal(ring[0], ring[-1]):
                ring = np.vstack([ring, ring[:1]])
            rings.append(ring)
    rings.sort(key=len, reverse=True)
    return rings


def axis_endpoints_px(
    mask2d: np.ndarray, spacing_rc: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The end points ((column, row) pairs) of the long axis (maximum Feret diameter over pixel
    corners) and of the longest chord perpendicular to it, as `feret_axes` of the lesion
    detector measures them; None for an empty mask."""
    rows, cols = np.nonzero(mask2d)
    if rows.size == 0:
        return None
    dr, dc = spacing_rc
    # pixel corners in mm: (row, column)
    corners = np.concatenate(
        [np.stack([(rows + a) * dr, (cols + b) * dc], axis=1) for a in (0, 1) for b in (0, 1)]
    )
    corners = np.unique(corners, axis=0)
    if len(corners) > 400:  # the extreme points lie on the convex hull
        from scipy.spatial import ConvexHull

        corners = corners[ConvexHull(corners).vertices]
    d = corners[:, None, :] - corners[None, :, :]
    dist = np.sqrt((d**2).sum(-1))
    i, j = np.unravel_index(np.argmax(dist), dist.shape)
    a, b = corners[i], corners[j]
    length = float(dist[i, j])
    u = (b - a) / length
    v = np.array([-u[1], u[0]])
    centres = np.stack([(rows + 0.5) * dr, (cols + 0.5) * dc], axis=1)
    pos_u = (centres - a) @ u
    pos_v = (centres - a) @ v
    step = min(dr, dc)
    bins = np.round(pos_u / step).astype(np.int64)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    half = (abs(v[0]) * dr + abs(v[1]) * dc) / 2
    for value in np.unique(bins):
        on = bins == value
        lo, hi = pos_v[on].min() - half, pos_v[on].max() + half
        if best is None or hi - lo > best[0]:
            at = a + u * float(np.mean(pos_u[on]))
            best = (hi - lo, at + v * lo, at + v * hi)
    assert best is not None
    _, p, q = best

    def to_px(point_mm: np.ndarray) -> np.ndarray:
        return np.array([point_mm[1] / dc, point_mm[0] / dr])  # (column, row)

    long_axis = np.stack([to_px(a), to_px(b)])
    short_axis = np.stack([to_px(p), to_px(q)])
    return long_axis, short_axis
