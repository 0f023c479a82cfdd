"""A CT series as a scanner would reconstruct it with a smaller field of view: each axial image
cut to a square window around a point of the patient, its geometry kept exact (Image Position
moved to the window's first pixel). For tests and phantoms of studies the node must refuse (a
chest cut by the field of view), from phantoms or from real CT."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pydicom.uid
from pydicom.dataset import Dataset

Window = tuple[int, int, int, int]  # row start, row stop, column start, column stop


def crop_window(ds: Dataset, centre_mm: tuple[float, float], size_mm: float) -> Window:
    """The window of `size_mm` square centred on patient point (x, y) in an axial image,
    clipped to the image; ValueError when the point lies outside it."""
    if size_mm <= 0:
        raise ValueError(f"field of view {size_mm!r} mm: expected a positive size")
    position = np.array([float(v) for v in ds.ImagePositionPatient])
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    offset = np.array([centre_mm[0], centre_mm[1], position[2]]) - position
    col = float(offset @ orientation[:3]) / col_mm
    row = float(offset @ orientation[3:]) / row_mm
    rows, cols = int(ds.Rows), int(ds.Columns)
    if not (0 <= row < rows and 0 <= col < cols):
        raise ValueError(
            f"centre {centre_mm} mm lies outside image {ds.SOPInstanceUID} "
            f"({rows}x{cols} pixels); choose a point inside the field of view"
        )
    half_r, half_c = size_mm / row_mm / 2.0, size_mm / col_mm / 2.0
    r0, c0 = max(0, round(row - half_r)), max(0, round(col - half_c))
    return r0, min(rows, round(row + half_r)), c0, min(cols, round(col + half_c))


def crop_image(ds: Dataset, window: Window) -> Dataset:
    """A copy of an image holding only `window`, uncompressed (Explicit VR Little Endian)."""
    r0, r1, c0, c1 = window
    pixels = ds.pixel_array[r0:r1, c0:c1]
    out = copy.deepcopy(ds)
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    position = np.array([float(v) for v in ds.ImagePositionPatient])
    moved = position + c0 * col_mm * orientation[:3] + r0 * row_mm * orientation[3:]
    out.ImagePositionPatient = [f"{v:.4f}" for v in moved]
    out.Rows, out.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    out.PixelData = np.ascontiguousarray(pixels).tobytes()
    out.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in out:
            del out[keyword]
    return out


def crop_series(
    datasets: Sequence[Dataset], centre_mm: tuple[float, float], size_mm: float
) -> tuple[list[Dataset], Window]:
    """Every image of an axial series cut to the same window (that of its first image)."""
    if not datasets:
        raise ValueError("crop_series needs at least one image")
    window = crop_window(datasets[0], centre_mm, size_mm)
    return [crop_image(ds, window) for ds in datasets], window
