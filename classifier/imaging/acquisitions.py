"""Acquisitions inside one series, and bolus-tracking (monitoring) series, from headers only.

A scanner may send several acquisitions under one Series Instance UID: GE multi-phase studies
put the non-contrast and the portal-venous phase of the same table positions in one series and
tell them apart by Acquisition Number. Stacked as one volume they give every position twice;
`split_acquisitions` turns them into one group of images per acquisition instead.

Real scanner output is often not conformant, so the headers are read leniently (numbers as
strings, "2.0", missing values) and the acquisitions are told apart by the first of these that
works:

1. Acquisition Number (per frame: Frame Content > Frame Acquisition Number of Enhanced CT),
2. Temporal Position Identifier (per frame: Frame Content > Temporal Position Index),

where "works" means every image has a value, there are at least two values, and no position
repeats inside one value's images. Otherwise (no number, the same number on all images, or
numbers that do not separate the repeats) the k-th image at each position, in order of
acquisition time (Acquisition DateTime, Acquisition Date/Time, Content Date/Time; per frame
Frame Acquisition DateTime), then Instance Number, then file order, belongs to acquisition k,
provided every such repeat covers at least a quarter of the positions: a few repeated slices are
duplicates, and the series is refused as before.

A series whose positions never repeat is one acquisition whatever its numbers say (GE axial
scans number every rotation), so ordinary series are never split.

A bolus-tracking (monitoring) series is a few images at one or a few table positions taken
again and again over time to see the contrast arrive; `monitoring_reason` recognises it by Image
Type (BOLUS, MONITOR, SMARTPREP, SURESTART) or by its geometry: every position imaged twice or
more on average, at no more than 3 positions or over less than 30 mm.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from classifier.imaging.suv import parse_da_tm, parse_dt

_POSITION_DECIMALS = 2  # positions closer than 0.01 mm are the same position
_ORIENTATION_TOLERANCE = 1e-3  # as the volume loader
# Repeats without numbers are acquisitions only when each covers this share of the positions
# (and _MIN_REPEAT_IMAGES images); a few repeated slices are duplicates, refused as such.
_MIN_REPEAT_SHARE = 0.25
_MIN_REPEAT_IMAGES = 3
_MONITORING_MAX_POSITIONS = 3
_MONITORING_MAX_EXTENT_MM = 30.0
_MONITORING_IMAGE_TYPES = ("BOLUS", "MONITOR", "SMARTPREP", "SURESTART")


@dataclass(frozen=True)
class FrameInfo:
    """The facts of one 2-D image that tell acquisitions apart (no pixel data)."""

    header: int  # index of its instance in the series' headers
    frame: int | None  # 0-based frame of a multi-frame instance; None for a single-frame one
    position: float | None  # mm along the slice normal; None when it cannot be placed
    acquisition_number: str  # "" when absent
    temporal_position: str  # "" when absent
    time: datetime | None  # when it was acquired, None when unknown
    instance_number: int | None


@dataclass(frozen=True)
class Acquisition:
    """The images of one acquisition of a series.

    `label` is how it is named to people ("acquisition 2", "temporal position 3", "repeat 2 of
    the positions"); `order` is its place in time (0 = earliest)."""

    label: str
    order: int
    frames: tuple[FrameInfo, ...]

    @property
    def headers(self) -> tuple[int, ...]:
        """Indices of the instances it uses, in series order, each once."""
        return tuple(sorted({f.header for f in self.frames}))

    def frames_of(self, header: int) -> tuple[int, ...] | None:
        """0-based frames of instance `header` it uses; None for a single-frame instance."""
        picked = sorted(f.frame for f in self.frames if f.header == header and f.frame is not None)
        return tuple(picked) if picked else None

    @property
    def coverage_mm(self) -> float:
        """z extent between its outermost slice positions (0 when unknown)."""
        positions = [f.position for f in self.frames if f.position is not None]
        return float(max(positions) - min(positions)) if positions else 0.0


def _first(value: Any) -> Any:
    """The first value of a multi-valued element (scanners put lists where one is due)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def _number_text(value: Any) -> str:
    """A number as text, leniently: 2, "2", " 2 ", "2.0" -> "2"; other text kept; None -> ""."""
    value = _first(value)
    if value is None:
        return ""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _int_or_none(value: Any) -> int | None:
    text = _number_text(value)
    try:
        return int(text)
    except ValueError:
        return None


def _lenient(parse: Callable[..., datetime | None], *values: Any) -> datetime | None:
    try:
        return parse(*values)
    except (ValueError, TypeError, IndexError):
        return None


def _time(ds: Dataset) -> datetime | None:
    """When a single-frame image was acquired (Acquisition DateTime, Date/Time, Content)."""
    return (
        _lenient(parse_dt, ds.get("AcquisitionDateTime"))
        or _lenient(parse_da_tm, ds.get("AcquisitionDate"), ds.get("AcquisitionTime"))
        or _lenient(parse_da_tm, ds.get("ContentDate"), ds.get("ContentTime"))
    )


def _item(groups: Dataset | None, keyword: str) -> Dataset | None:
    if groups is not None and keyword in groups:
        value = groups[keyword].value
        if value is not None and len(value):
            first: Dataset = value[0]
            return first
    return None


def _floats(value: Any, count: int) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (count,) and np.all(np.isfinite(out)) else None


def _normal(orientation: np.ndarray | None) -> np.ndarray | None:
    if orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    return normal / length if length > 1e-6 else None


def frame_infos(headers: Sequence[Dataset]) -> list[FrameInfo]:
    """One `FrameInfo` per 2-D image of the series: per instance, per frame for Enhanced ones.

    Positions are measured along the normal of the first orientation found; images whose
    position or orientation is unreadable, or whose orientation differs, get None (the volume
    loader names the fault).
    """
    raw: list[tuple[int, int | None, np.ndarray | None, np.ndarray | None, Dataset]] = []
    frame_content: list[Dataset | None] = []
    for h, ds in enumerate(headers):
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if per_frame:
            shared = _item(ds, "SharedFunctionalGroupsSequence")
            for f, groups in enumerate(per_frame):
                position = _item(groups, "PlanePositionSequence") or _item(
                    shared, "PlanePositionSequence"
                )
                orientation = _item(groups, "PlaneOrientationSequence") or _item(
                    shared, "PlaneOrientationSequence"
                )
                raw.append(
                    (
                        h,
                        f,
                        _floats(position.get("ImagePositionPatient"), 3) if position else None,
                        _floats(orientation.get("ImageOrientationPatient"), 6)
                        if orientation
                        else None,
                        ds,
                    )
                )
                frame_content.append(_item(groups, "FrameContentSequence"))
        else:
            raw.append(
                (
                    h,
                    None,
                    _floats(ds.get("ImagePositionPatient"), 3),
                    _floats(ds.get("ImageOrientationPatient"), 6),
                    ds,
                )
            )
            frame_content.append(None)
    reference = next((r[3] for r in raw if _normal(r[3]) is not None), None)
    normal = _normal(reference)
    out = []
    for (index, frame, place, plane, image), content in zip(raw, frame_content, strict=True):
        same_plane = (
            plane is not None
            and reference is not None
            and float(np.abs(plane - reference).max()) <= _ORIENTATION_TOLERANCE
        )
        along = (
            round(float(place @ normal), _POSITION_DECIMALS)
            if place is not None and normal is not None and same_plane
            else None
        )
        acquisition = _number_text(image.get("AcquisitionNumber"))
        temporal = _number_text(image.get("TemporalPositionIdentifier"))
        time = _time(image)
        if content is not None:
            acquisition = _number_text(content.get("FrameAcquisitionNumber")) or acquisition
            temporal = _number_text(content.get("TemporalPositionIndex")) or temporal
            time = (
                _lenient(parse_dt, content.get("FrameAcquisitionDateTime"))
                or _lenient(parse_dt, content.get("FrameReferenceDateTime"))
                or time
            )
        out.append(
            FrameInfo(
                header=index,
                frame=frame,
                position=along,
                acquisition_number=acquisition,
                temporal_position=temporal,
                time=time,
                instance_number=_int_or_none(image.get("InstanceNumber")),
            )
        )
    return out


def _readable_frames(headers: Sequence[Dataset]) -> list[FrameInfo] | None:
    """`frame_infos`, or None for headers too broken to read (the loader names the fault)."""
    try:
        return frame_infos(headers)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError):
        return None


def _repeats(frames: Sequence[FrameInfo]) -> bool:
    counts = Counter(f.position for f in frames)
    return any(n > 1 for n in counts.values())


def _acquisition_order(frames: Sequence[FrameInfo]) -> tuple:
    """Sort key of a group of images in time: earliest time, then lowest instance number."""
    times = [f.time for f in frames if f.time is not None]
    numbers = [f.instance_number for f in frames if f.instance_number is not None]
    first_time = min(times).timestamp() if times else float("inf")
    return (first_time, min(numbers) if numbers else float("inf"), min(f.header for f in frames))


def _value_key(text: str) -> tuple:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def _by_value(
    frames: Sequence[FrameInfo], value: Callable[[FrameInfo], str], name: str
) -> list[Acquisition] | None:
    """Groups by a header value, when it separates every repeated position; else None."""
    if any(not value(f) for f in frames):
        return None
    groups: dict[str, list[FrameInfo]] = defaultdict(list)
    for f in frames:
        groups[value(f)].append(f)
    if len(groups) < 2 or any(_repeats(g) for g in groups.values()):
        return None
    ordered = sorted(groups.items(), key=lambda kv: (_acquisition_order(kv[1]), _value_key(kv[0])))
    return [
        Acquisition(f"{name} {key}", order, tuple(group))
        for order, (key, group) in enumerate(ordered)
    ]


def _by_repeat(frames: Sequence[FrameInfo]) -> list[Acquisition]:
    """The k-th image at each position (in time, then instance number, then file order)."""

    def when(f: FrameInfo) -> tuple:
        return (
            f.time.timestamp() if f.time is not None else float("inf"),
            f.instance_number if f.instance_number is not None else float("inf"),
            f.header,
            f.frame or 0,
        )

    seen: Counter[float | None] = Counter()
    groups: dict[int, list[FrameInfo]] = defaultdict(list)
    for f in sorted(frames, key=when):
        groups[seen[f.position]].append(f)
        seen[f.position] += 1
    return [
        Acquisition(f"repeat {k + 1} of the positions", k, tuple(groups[k])) for k in sorted(groups)
    ]


def split_acquisitions(headers: Sequence[Dataset]) -> list[Acquisition]:
    """The acquisitions of a series, in time order (see the module doc for how).

    One acquisition (label "") when no position repeats, positions are unknown or the images
    lie in different planes, or when, without numbers to go by, some repeat holds fewer than a
    quarter of the positions (duplicated slices, not an acquisition): the volume loader then
    refuses the series with its reason.
    """
    frames = _readable_frames(headers)
    if frames is None:
        frames = [FrameInfo(h, None, None, "", "", None, None) for h in range(len(headers))]
    if not frames or any(f.position is None for f in frames) or not _repeats(frames):
        return [Acquisition("", 0, tuple(frames))]
    for value, name in (
        (lambda f: f.acquisition_number, "acquisition"),
        (lambda f: f.temporal_position, "temporal position"),
    ):
        groups = _by_value(frames, value, name)
        if groups is not None:
            return groups
    repeats = _by_repeat(frames)
    distinct = len({f.position for f in frames})
    if all(len(a.frames) >= max(_MIN_REPEAT_IMAGES, _MIN_REPEAT_SHARE * distinct) for a in repeats):
        return repeats
    return [Acquisition("", 0, tuple(frames))]


def monitoring_reason(headers: Sequence[Dataset]) -> str | None:
    """Why a CT series is a bolus-tracking (monitoring) series, or None when it is not one."""
    if not headers:
        return None
    image_type = [str(v).upper() for v in (headers[0].get("ImageType") or [])]
    marked = next((v for v in image_type if any(t in v for t in _MONITORING_IMAGE_TYPES)), None)
    frames = _readable_frames(headers) or []
    positions = [f.position for f in frames if f.position is not None]
    times = [f.time for f in frames if f.time is not None]
    span = (
        f" over {(max(times) - min(times)).total_seconds():.0f} s"
        if len(times) > 1 and max(times) > min(times)
        else ""
    )
    what = (
        f"{len(frames)} image(s) at {len(set(positions))} table position(s){span}"
        if positions
        else f"{len(headers)} image(s)"
    )
    explanation = "taken to time the contrast injection, not a diagnostic volume of the chest"
    if marked is not None:
        shown = "\\".join(image_type)
        return f"bolus-tracking (monitoring) series: Image Type {shown}; {what}, {explanation}"
    if len(positions) != len(frames) or not positions:
        return None
    distinct = len(set(positions))
    extent = max(positions) - min(positions)
    if len(positions) >= 2 * distinct and (
        distinct <= _MONITORING_MAX_POSITIONS or extent < _MONITORING_MAX_EXTENT_MM
    ):
        return (
            f"bolus-tracking (monitoring) series: {what} (z extent {extent:.0f} mm), {explanation}"
        )
    return None
