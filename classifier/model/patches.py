"""2.5-D patches for the CNN: a fixed physical field around a point, CT windows, SUV and a PET flag.

The field is fixed in millimetres (not voxels) so that 0.65-mm clinical CT and coarse phantoms
look alike to the network. Channel layout (last axis of a patch):
  0-2  CT slices at -SLAB_OFFSET_MM, 0, +SLAB_OFFSET_MM in the lung window (W1500/L-600)
  3-5  the same three slices in the mediastinal window (W400/L40)
  6    SUV / 10 clipped to [0, 1] on the centre slice (zeros without PET)
  7    PET-present flag: all ones with PET, all zeros without
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from classifier.imaging.volume import Volume

PATCH_SHAPE: tuple[int, int, int] = (64, 64, 8)
FIELD_MM: float = 96.0
SLAB_OFFSET_MM: float = 5.0
LUNG_WINDOW: tuple[float, float] = (1500.0, -600.0)  # width, level
MEDIASTINAL_WINDOW: tuple[float, float] = (400.0, 40.0)
SUV_SCALE: float = 10.0
CH_LUNG: tuple[int, int, int] = (0, 1, 2)
CH_MEDIASTINAL: tuple[int, int, int] = (3, 4, 5)
CH_SUV: int = 6
CH_PET_FLAG: int = 7
AIR_HU: float = -1024.0


def window(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map HU to [0, 1] through a display window (width, level)."""
    low = level - width / 2.0
    return np.clip((hu - low) / width, 0.0, 1.0).astype(np.float32)


def _validate(ct: Volume, center_index: Sequence[int], suv: Volume | None) -> tuple[int, int, int]:
    array = np.asarray(ct.array)
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError(
            f"CT volume must be a non-empty 3-D [slice,row,col] array, got shape {array.shape}"
        )
    if len(center_index) != 3:
        raise ValueError(f"center_index must be (slice, row, col), got {tuple(center_index)}")
    center = tuple(round(float(c)) for c in center_index)
    if any(c < 0 or c >= n for c, n in zip(center, array.shape, strict=True)):
        raise ValueError(
            f"center_index {center} lies outside the CT volume of shape {array.shape}; "
            "pass an index inside the volume"
        )
    if any(float(s) <= 0 for s in ct.spacing):
        raise ValueError(f"CT spacing must be positive (slice,row,col) mm, got {tuple(ct.spacing)}")
    if suv is not None and np.shape(suv.array) != array.shape:
        raise ValueError(
            f"SUV volume shape {np.shape(suv.array)} differs from the CT shape "
            f"{array.shape}; "
            "resample the PET onto the CT grid first (classifier.imaging.resample.resample_to)"
        )
    return center[0], center[1], center[2]  # len(center_index) == 3 checked above


def _sample_planes(
    array: np.ndarray,
    spacing: Sequence[float],
    center: tuple[int, int, int],
    slice_offsets_mm: Sequence[float],
    fill: float,
) -> np.ndarray:
    """Sample len(slice_offsets_mm) planes of PATCH_SHAPE[:2] pixels covering FIELD_MM around
    the centre.

    In-plane, the source is low-pass filtered first when it is finer than the patch grid, so
    sub-millimetre CT does not alias; along the slice axis the offsets are interpolated linearly
    and clamped at the ends of the volume.
    """
    rows, cols = PATCH_SHAPE[:2]
    dz, dr, dc = (float(s) for s in spacing)
    step_r, step_c = FIELD_MM / rows, FIELD_MM / cols
    half_r = int(np.ceil(FIELD_MM / 2 / dr)) + 3
    half_c = int(np.ceil(FIELD_MM / 2 / dc)) + 3
    z_coords = [
        min(max(center[0] + off / dz, 0.0), array.shape[0] - 1.0) for off in slice_offsets_mm
    ]
    z_lo, z_hi = int(np.floor(min(z_coords))), int(np.ceil(max(z_coords)))
    r0, c0 = center[1] - half_r, center[2] - half_c
    # Crop with padding so that filtering and sampling never read outside the volume.
    block = np.full((z_hi - z_lo + 1, 2 * half_r + 1, 2 * half_c + 1), fill, dtype=np.float32)
    sr = slice(max(r0, 0), min(center[1] + half_r + 1, array.shape[1]))
    sc = slice(max(c0, 0), min(center[2] + half_c + 1, array.shape[2]))
    block[:, sr.start - r0 : sr.stop - r0, sc.start - c0 : sc.stop - c0] = array[
        z_lo : z_hi + 1, sr, sc
    ]
    sigma_r = 0.4 * (step_r / dr) if step_r > dr * 1.2 else 0.0
    sigma_c = 0.4 * (step_c / dc) if step_c > dc * 1.2 else 0.0
    if sigma_r or sigma_c:
        block = ndimage.gaussian_filter(block, sigma=(0.0, sigma_r, sigma_c), mode="nearest")
    offs_r = ((np.arange(rows) - (rows - 1) / 2.0) * step_r / dr) + half_r
    offs_c = ((np.arange(cols) - (cols - 1) / 2.0) * step_c / dc) + half_c
    grid_r, grid_c = np.meshgrid(offs_r, offs_c, indexing="ij")
    planes = np.empty((len(z_coords), rows, cols), dtype=np.float32)
    for i, z in enumerate(z_coords):
        coords = np.stack([np.full_like(grid_r, z - z_lo), grid_r, grid_c])
        planes[i] = ndimage.map_coordinates(block, coords, order=1, mode="constant", cval=fill)
    return planes


def _indexable(array: np.ndarray) -> np.ndarray:
    """The array itself when it has a shape and can be sliced (an ndarray of any dtype, a lazily
    resampled volume), else as a float32 array."""
    if hasattr(array, "shape") and hasattr(array, "__getitem__"):
        return array
    return np.asarray(array, dtype=np.float32)


def extract_patch(ct: Volume, center_index: tuple[int, int, int], suv: Volume | None) -> np.ndarray:
    """Return the float32 PATCH_SHAPE patch centred at center_index (slice, row, col) of `ct`.

    `suv` must already be resampled onto the CT grid (same shape), or None when there is no PET.
    """
    center = _validate(ct, center_index, suv)
    # Only the crop around the centre is read (into float32): no copy of an int16 CT or of a
    # lazily resampled SUV volume.
    planes = _sample_planes(
        _indexable(ct.array), ct.spacing, center, (-SLAB_OFFSET_MM, 0.0, SLAB_OFFSET_MM), AIR_HU
    )
    patch = np.zeros(PATCH_SHAPE, dtype=np.float32)
    for i, plane in enumerate(planes):
        patch[..., CH_LUNG[i]] = window(plane, *LUNG_WINDOW)
        patch[..., CH_MEDIASTINAL[i]] = window(plane, *MEDIASTINAL_WINDOW)
    if suv is not None:
        suv_plane = _sample_planes(_indexable(suv.array), ct.spacing, center, (0.0,), 0.0)[0]
        patch[..., CH_SUV] = np.clip(suv_plane / SUV_SCALE, 0.0, 1.0)
        patch[..., CH_PET_FLAG] = 1.0
    return patch


def extract_patches(
    ct: Volume, center_indices: Sequence[tuple[int, int, int]], suv: Volume | None
) -> np.ndarray:
    """Stack extract_patch for several centres: float32 (n, *PATCH_SHAPE); n == 0 works."""
    out = np.zeros((len(center_indices), *PATCH_SHAPE), dtype=np.float32)
    for i, center in enumerate(center_indices):
        out[i] = extract_patch(ct, center, suv)
    return out
