"""A series of DICOM images as one 3-D volume with its patient geometry.

Slices are ordered by the projection of Image Position (Patient) on the normal of Image
Orientation (Patient), never by Instance Number or file name. Classic single-frame series and
Enhanced (multi-frame) CT/PET with per-frame functional groups give the same `Volume`. A series
that cannot become a volume (localizer, derived image, mixed orientations, duplicate or
non-uniform positions, a single slice, ...) raises `VolumeError` with a reason a technologist
understands.

Geometry convention (LPS millimetres, as DICOM):
  array[s, r, c] is slice s, row r, column c.
  direction[:, 0] = unit vector of increasing column index c (the first triplet of IOP),
  direction[:, 1] = unit vector of increasing row index r (the second triplet of IOP),
  direction[:, 2] = unit vector of increasing slice index s (the IOP normal, row x column).
  spacing = (slice step along the normal, PixelSpacing[0] row spacing, PixelSpacing[1] column
  spacing); origin = ImagePositionPatient of slice 0 (centre of voxel [0, 0, 0]).
  point(s, r, c) = origin + direction @ (c * spacing[2], r * spacing[1], s * spacing[0]).
This is the ITK/SimpleITK (x, y, z) direction matrix with the array axes reversed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from classifier.types import ImageReference

ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
ENHANCED_PET_STORAGE = "1.2.840.10008.5.1.4.1.1.130"
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_ORIENTATION_TOLERANCE = 1e-3
_DUPLICATE_MM = 1e-3
_INT16 = np.iinfo(np.int16)

# The pixels of datasets[k]: (rows, columns), or (frames, rows, columns) of a multi-frame image.
PixelSource = Callable[[int], np.ndarray]


class VolumeError(ValueError):
    """A series that cannot become a volume; str() is a reason a technologist understands."""


@dataclass(frozen=True)
class Volume:
    """A 3-D image in patient space: HU for CT, SUVbw g/ml for PET (see module doc for axes).

    `array` is float32, or int16 for a CT whose rescaled values are whole Hounsfield units
    (slope and intercept integers, every value within int16), half the memory for the same
    values. An SUV volume on the CT grid from `resample_to(..., lazy=True)` holds a
    `classifier.imaging.resample.LazyResampled` instead: it is indexed like an array and
    computes only what is asked for (np.asarray gives the whole array).
    """

    array: np.ndarray = field(repr=False)
    origin: np.ndarray
    spacing: tuple[float, float, float]
    direction: np.ndarray
    frame_of_reference_uid: str
    series_instance_uid: str
    modality: str
    slices: tuple[ImageReference, ...] = field(repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        # A Volume is 3-D by construction (load_volume stacks >= 2 slices); the length 3 of
        # the tuple is not expressible in a tuple comprehension.
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def index_matrix(self) -> np.ndarray:
        """(3,3) matrix M with point = origin + M @ [s, r, c]."""
        scaled = self.direction * np.array([self.spacing[2], self.spacing[1], self.spacing[0]])
        return scaled[:, ::-1].copy()

    def index_to_patient(self, idx: np.ndarray) -> np.ndarray:
        """(..., 3) [slice, row, col] indices (may be fractional) -> (..., 3) LPS mm."""
        idx = np.asarray(idx, dtype=np.float64)
        return self.origin + idx @ self.index_matrix().T

    def patient_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """(..., 3) LPS mm -> (..., 3) fractional [slice, row, col] indices."""
        xyz = np.asarray(xyz, dtype=np.float64)
        return (xyz - self.origin) @ np.linalg.inv(self.index_matrix()).T

    def with_array(self, array: np.ndarray, modality: str | None = None) -> Volume:
        """The same geometry holding another array (same shape)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from volume shape {self.shape}")
        return Volume(
            array=array,
            origin=self.origin,
            spacing=self.spacing,
            direction=self.direction,
            frame_of_reference_uid=self.frame_of_reference_uid,
            series_instance_uid=self.series_instance_uid,
            modality=modality or self.modality,
            slices=self.slices,
        )


@dataclass(frozen=True)
class _Frame:
    """One 2-D image (a single-frame instance or one frame of a multi-frame one)."""

    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    shape: tuple[int, int]
    source: int  # index of the dataset among those loaded
    frame: int | None  # index of the frame in a multi-frame dataset's pixels; None: single frame
    reference: ImageReference


def _floats(value: Any, count: int, name: str, where: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise VolumeError(f"{where}: {name} {value!r} is not {count} numbers") from None
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise VolumeError(f"{where}: {name} {value!r} is not {count} finite numbers")
    return out


def _describe(ds: Dataset) -> str:
    return f"image {ds.get('SOPInstanceUID', '?')} (instance {ds.get('InstanceNumber', '?')})"


def _check_image_kind(ds: Dataset, modalities: set[str]) -> None:
    where = _describe(ds)
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class.startswith(_SECONDARY_CAPTURE_PREFIX):
        raise VolumeError(f"{where}: is a secondary capture (screenshot), not an acquired image")
    modality = str(ds.get("Modality", ""))
    if modality not in modalities:
        raise VolumeError(
            f"{where}: Modality {modality or 'missing'}, expected {' or '.join(sorted(modalities))}"
        )
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        raise VolumeError(f"{where}: is a localizer (scout), not a cross-sectional image")
    if image_type[:1] == ["DERIVED"] or image_type[1:2] == ["SECONDARY"]:
        joined = "\\".join(image_type)
        raise VolumeError(
            f"{where}: Image Type {joined} is a derived/secondary image "
            "(reformat, MIP or similar); send the ORIGINAL\\PRIMARY series"
        )
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise VolumeError(f"{where}: has {ds.SamplesPerPixel} samples per pixel (colour)")


def _rescale(item: Dataset | None) -> tuple[float | None, float | None]:
    if item is None:
        return None, None
    slope = item.get("RescaleSlope")
    intercept = item.get("RescaleIntercept")
    return (
        float(slope) if slope is not None else None,
        float(intercept) if intercept is not None else None,
    )


def _group(per_frame: Dataset | None, shared: Dataset | None, keyword: str) -> Dataset | None:
    """The first item of a functional group macro, per-frame first, then shared."""
    for groups in (per_frame, shared):
        if groups is not None and keyword in groups and len(groups[keyword].value):
            return groups[keyword].value[0]
    return None


def _reference(ds: Dataset) -> ImageReference:
    return ImageReference(
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
    )


def _image_shape(ds: Dataset, where: str) -> tuple[int, int]:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise VolumeError(f"{where}: Rows (0028,0010) or Columns (0028,0011) is missing") from None
    if rows < 1 or columns < 1:
        raise VolumeError(f"{where}: image size {rows} x {columns} is empty")
    return rows, columns


def _single_frames(ds: Dataset, source: int) -> list[_Frame]:
    where = _describe(ds)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in ds or ds[keyword].value in (None, ""):
            raise VolumeError(f"{where}: {keyword} is missing, the slice cannot be placed in space")
    shape = _image_shape(ds, where)
    if frames_of(ds) > 1:
        raise VolumeError(
            f"{where}: pixel data has {frames_of(ds)} frames; a multi-frame image needs the "
            "Enhanced CT/PET functional groups"
        )
    slope, intercept = _rescale(ds)
    spacing = _floats(ds.PixelSpacing, 2, "Pixel Spacing", where)
    return [
        _Frame(
            position=_floats(ds.ImagePositionPatient, 3, "Image Position (Patient)", where),
            orientation=_floats(
                ds.ImageOrientationPatient, 6, "Image Orientation (Patient)", where
            ),
            pixel_spacing=(float(spacing[0]), float(spacing[1])),
            slope=1.0 if slope is None else slope,
            intercept=0.0 if intercept is None else intercept,
            shape=shape,
            source=source,
            frame=None,
            reference=_reference(ds),
        )
    ]


def _enhanced_frames(ds: Dataset, source: int) -> list[_Frame]:
    where = _describe(ds)
    n = int(ds.get("NumberOfFrames", 1))
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    shared_seq = ds.get("SharedFunctionalGroupsSequence") or []
    shared = shared_seq[0] if len(shared_seq) else None
    if len(per_frame) != n:
        raise VolumeError(
            f"{where}: Number of Frames {n} but {len(per_frame)} Per-Frame Functional Groups items"
        )
    shape = _image_shape(ds, where)
    top_slope, top_intercept = _rescale(ds)
    frames = []
    for i, groups in enumerate(per_frame):
        here = f"{where} frame {i + 1}"
        position = _group(groups, shared, "PlanePositionSequence")
        orientation = _group(groups, shared, "PlaneOrientationSequence")
        measures = _group(groups, shared, "PixelMeasuresSequence")
        if position is None or "ImagePositionPatient" not in position:
            raise VolumeError(f"{here}: Plane Position Sequence > Image Position (Patient) missing")
        if orientation is None or "ImageOrientationPatient" not in orientation:
            raise VolumeError(
                f"{here}: Plane Orientation Sequence > Image Orientation (Patient) missing"
            )
        if measures is None or "PixelSpacing" not in measures:
            raise VolumeError(f"{here}: Pixel Measures Sequence > Pixel Spacing missing")
        slope, intercept = _rescale(_group(groups, shared, "PixelValueTransformationSequence"))
        slope = slope if slope is not None else top_slope
        intercept = intercept if intercept is not None else top_intercept
        spacing = _floats(measures.PixelSpacing, 2, "Pixel Spacing", here)
        frames.append(
            _Frame(
                position=_floats(
                    position.ImagePositionPatient, 3, "Image Position (Patient)", here
                ),
                orientation=_floats(
                    orientation.ImageOrientationPatient, 6, "Image Orientation (Patient)", here
                ),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                slope=1.0 if slope is None else slope,
                intercept=0.0 if intercept is None else intercept,
                shape=shape,
                source=source,
                frame=i,
                reference=_reference(ds),
            )
        )
    return frames


def frames_of(ds: Dataset) -> int:
    """How many 2-D images a dataset holds (Number of Frames, 1 for single-frame)."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _frames(
    datasets: Sequence[Dataset],
    modalities: set[str],
    subset: Sequence[Sequence[int] | None] | None = None,
) -> list[_Frame]:
    if subset is not None and len(subset) != len(datasets):
        raise ValueError(f"{len(subset)} frame selections for {len(datasets)} images")
    frames: list[_Frame] = []
    for k, ds in enumerate(datasets):
        _check_image_kind(ds, modalities)
        if "PerFrameFunctionalGroupsSequence" in ds:
            found = _enhanced_frames(ds, k)
            picked = subset[k] if subset is not None else None
            if picked is not None:
                if any(not 0 <= i < len(found) for i in picked):
                    raise VolumeError(f"{_describe(ds)}: has no frame {max(picked) + 1}")
                found = [found[i] for i in picked]
            frames.extend(found)
        else:
            frames.extend(_single_frames(ds, k))
    return frames


def _common(datasets: Sequence[Dataset], keyword: str, label: str) -> str:
    values = {str(ds.get(keyword, "") or "") for ds in datasets}
    if len(values) > 1:
        raise VolumeError(f"the images belong to {len(values)} different {label}s")
    value = values.pop() if values else ""
    if not value:
        raise VolumeError(f"{label} ({keyword}) is missing")
    return value


def load_volume(
    datasets: Sequence[Dataset],
    modalities: set[str],
    frame_subset: Sequence[Sequence[int] | None] | None = None,
    *,
    pixels: PixelSource | None = None,
    whole_numbers: bool = False,
) -> Volume:
    """Stack the images of one series into a volume of rescaled values (HU for CT, Bq/ml for PET).

    `frame_subset`, one entry per dataset, keeps only those 0-based frames of a multi-frame image
    (None: all), for one acquisition of an Enhanced series that holds several.
    `pixels(k)` gives the decoded pixels of `datasets[k]`; without it `datasets` must hold their
    pixel data. With a reader, `datasets` may be headers only (`stop_before_pixels`): the
    geometry and slice order come from them, the volume is allocated once, and each image's
    pixels are read, rescaled into their slice and dropped, so no image is held twice.
    `whole_numbers`: keep the volume as int16 when every rescaled value is a whole number within
    int16 (CT in HU: integer slope and intercept), float32 otherwise.
    Raises VolumeError with the reason when the series is not one regular stack of slices.
    """
    if not datasets:
        raise VolumeError("the series holds no images")
    series_uid = _common(datasets, "SeriesInstanceUID", "Series Instance UID")
    frame_of_reference = _common(datasets, "FrameOfReferenceUID", "Frame of Reference UID")
    frames = _frames(datasets, modalities, frame_subset)
    if len(frames) < 2:
        raise VolumeError("the series has a single slice; a volume needs at least 2")

    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise VolumeError(f"the slices have different sizes (rows x columns): {sorted(shapes)}")
    orientation = frames[0].orientation
    if any(np.abs(f.orientation - orientation).max() > _ORIENTATION_TOLERANCE for f in frames):
        count = len({tuple(np.round(f.orientation, 3)) for f in frames})
        raise VolumeError(
            f"the slices have {count} different orientations (Image Orientation (Patient)); "
            "mixed axial/coronal/sagittal images are not one volume"
        )
    pixel_spacing = frames[0].pixel_spacing
    if any(np.abs(np.subtract(f.pixel_spacing, pixel_spacing)).max() > 1e-4 for f in frames):
        raise VolumeError("the slices have different Pixel Spacing values")
    if min(pixel_spacing) <= 0:
        raise VolumeError(f"Pixel Spacing {pixel_spacing} is not positive")

    row_dir = orientation[:3] / np.linalg.norm(orientation[:3])
    col_dir = orientation[3:] / np.linalg.norm(orientation[3:])
    if abs(float(row_dir @ col_dir)) > 1e-3:
        raise VolumeError(f"Image Orientation (Patient) {orientation.tolist()} is not orthogonal")
    normal = np.cross(row_dir, col_dir)
    positions = np.array([f.position for f in frames])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    frames = [frames[i] for i in order]
    positions, along = positions[order], along[order]

    gaps = np.diff(along)
    duplicates = int(np.sum(gaps < _DUPLICATE_MM))
    if duplicates:
        raise VolumeError(
            f"{duplicates} slice(s) share a position with another slice; the series mixes "
            "acquisitions or holds duplicates"
        )
    step = float(np.median(gaps))
    tolerance = max(0.02 * step, 0.05)
    irregular = np.abs(gaps - step) > tolerance
    if irregular.any():
        raise VolumeError(
            f"slice spacing is not uniform: steps from {gaps.min():.2f} to {gaps.max():.2f} mm "
            f"(median {step:.2f} mm); missing slices or a variable-spacing acquisition"
        )
    offsets = positions - positions[0]
    lateral = offsets - np.outer(offsets @ normal, normal)
    if np.linalg.norm(lateral, axis=1).max() > max(0.5, 0.02 * step):
        raise VolumeError(
            "the slice positions do not lie along the slice normal (gantry tilt or a "
            "sheared stack); reconstruct without tilt"
        )

    array = _fill(datasets, frames, pixels, whole_numbers)
    return Volume(
        array=array,
        origin=positions[0].copy(),
        spacing=(step, pixel_spacing[0], pixel_spacing[1]),
        direction=np.column_stack([row_dir, col_dir, normal]),
        frame_of_reference_uid=frame_of_reference,
        series_instance_uid=series_uid,
        modality=str(datasets[0].get("Modality", "")),
        slices=tuple(f.reference for f in frames),
    )


def _fill(
    datasets: Sequence[Dataset],
    frames: Sequence[_Frame],
    pixels: PixelSource | None,
    whole_numbers: bool,
) -> np.ndarray:
    """The frames' rescaled pixels, stacked in the frames' order into one preallocated array:
    int16 while every value is a whole number within int16 (when `whole_numbers`), else float32
    (the array is converted once, at the first frame that needs it)."""
    integral = whole_numbers and all(
        float(f.slope).is_integer() and float(f.intercept).is_integer() for f in frames
    )
    dtype = np.int16 if integral else np.float32
    array = np.empty((len(frames), *frames[0].shape), dtype=dtype)
    slots: dict[int, list[int]] = {}
    for i, f in enumerate(frames):
        slots.setdefault(f.source, []).append(i)
    for k, where in slots.items():
        data = datasets[k].pixel_array if pixels is None else pixels(k)
        first = frames[where[0]]
        if first.frame is None:
            if data.ndim != 2:
                raise VolumeError(
                    f"{_describe(datasets[k])}: pixel data has shape {data.shape}; a multi-frame "
                    "image needs the Enhanced CT/PET functional groups"
                )
        else:
            n = frames_of(datasets[k])
            data = data[np.newaxis] if data.ndim == 2 and n == 1 else data
            if data.ndim != 3 or data.shape[0] != n:
                raise VolumeError(
                    f"{_describe(datasets[k])}: pixel data shape {data.shape} does not hold "
                    f"{n} frames"
                )
        for i in where:
            f = frames[i]
            plane = data if f.frame is None else data[f.frame]
            if plane.shape != f.shape:
                raise VolumeError(
                    f"{_describe(datasets[k])}: pixel data has shape {plane.shape}, Rows and "
                    f"Columns say {f.shape}"
                )
            if array.dtype == np.int16:
                low = int(plane.min()) * int(f.slope) + int(f.intercept)
                high = int(plane.max()) * int(f.slope) + int(f.intercept)
                if f.slope < 0:
                    low, high = high, low
                if low >= _INT16.min and high <= _INT16.max:
                    values = plane.astype(np.int64 if plane.itemsize >= 4 else np.int32)
                    if f.slope != 1:
                        values *= int(f.slope)
                    values += int(f.intercept)
                    array[i] = values
                    continue
                array = array.astype(np.float32)  # a value past int16: float32 from here on
            np.multiply(plane, f.slope, out=array[i], casting="unsafe")
            array[i] += f.intercept
        del data
    return array


def load_ct_volume(
    datasets: Sequence[Dataset],
    frame_subset: Sequence[Sequence[int] | None] | None = None,
    *,
    pixels: PixelSource | None = None,
) -> Volume:
    """A CT series (or one acquisition of it, see `load_volume`) as a volume in Hounsfield
    units, int16 where they are whole numbers; raises VolumeError with the reason."""
    return load_volume(datasets, {"CT"}, frame_subset, pixels=pixels, whole_numbers=True)
