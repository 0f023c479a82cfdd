"""Reading DICOM files for analysis: headers for series selection, full datasets for volumes.

Compressed transfer syntaxes (JPEG, JPEG 2000, JPEG-LS, RLE) are decoded by pydicom through the
installed pylibjpeg and pyjpegls plugins; a file that cannot be read or decoded becomes a
`DicomReadError` naming the file and the reason, never a crash of the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

# pydicom logs every failed decoder attempt at ERROR with a traceback; read_dataset reports the
# failure itself in one DicomReadError, so the node's log keeps one line per bad file.
logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)


class DicomReadError(ValueError):
    """A file that is not readable DICOM, or whose pixel data cannot be decoded."""


def read_header(path: Path) -> Dataset:
    """Read one file's header without pixel data (fast; for series selection)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom on broken bytes raises many types (struct.error, ...)
        raise DicomReadError(f"file {path}: not readable as DICOM ({_short(exc)})") from None


def read_headers(paths: Sequence[Path]) -> list[Dataset]:
    """Headers of every file, in the given order."""
    return [read_header(Path(p)) for p in paths]


def read_dataset(path: Path) -> Dataset:
    """Read one file completely and decode its pixel data now, so later access cannot fail."""
    ds = _read_image(path)
    _decode(ds, path)
    return ds


def read_pixels(path: Path) -> np.ndarray:
    """The decoded pixel data of one file (the dataset is not kept): what a volume loader
    copies into its slice, so a series is never held as datasets and pixels at once."""
    return _decode(_read_image(Path(path)), Path(path))


def _read_image(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom on broken bytes raises many types (struct.error, ...)
        raise DicomReadError(f"file {path}: not readable as DICOM ({_short(exc)})") from None
    if "PixelData" not in ds:
        raise DicomReadError(f"file {path}: has no Pixel Data (7FE0,0010); it is not an image")
    return ds


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    """The dataset's pixel array, decoded and cached on it; DicomReadError when it cannot be."""
    try:
        return ds.pixel_array
    except BaseException as exc:  # decoders raise many unrelated types, Rust panics included
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise DicomReadError(
            f"file {path}: pixel data in transfer syntax {name} could not be decoded ({exc}); "
            "send it uncompressed or install the matching pylibjpeg/pyjpegls decoder"
        ) from None


def _short(exc: BaseException) -> str:
    # RecursionError: a dataset nested deeper than Python's stack (a hostile or broken file).
    if isinstance(exc, RecursionError):
        return "sequences nested too deeply to parse"
    return str(exc)


def read_series(paths: Sequence[Path]) -> list[Dataset]:
    """Read every file of a series with decoded pixels, in the given order.

    Raises DicomReadError for the first file that cannot be read or decoded.
    """
    return [read_dataset(Path(p)) for p in paths]
