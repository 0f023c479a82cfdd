"""PET activity concentration (Bq/ml) to body-weight SUV (g/ml), after the QIBA vendor-neutral
SUV pseudo-code (Units BQML; DecayCorrection START or ADMIN).

SUVbw = C(Bq/ml) * PatientWeight(g) / decayed dose(Bq), with the injected dose decayed from the
injection time to the decay-correction reference: the series time, or the earliest acquisition
time when the series time lies after it (the series was re-saved). A missing or impossible tag
raises `SUVError` naming the tag, so the PET is skipped with that reason and analysis goes on
with CT only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from classifier.imaging.volume import PixelSource, Volume, VolumeError, load_volume


class SUVError(VolumeError):
    """PET values cannot be converted to SUVbw; str() names the missing or bad tag."""


@dataclass(frozen=True)
class SUVFactor:
    """How SUVbw was obtained from Bq/ml, for the record: SUV = Bq/ml * factor."""

    factor: float
    decay_correction: str
    injection: datetime | None
    reference: datetime | None
    decay_seconds: float
    decayed_dose_bq: float
    weight_g: float


def parse_da_tm(date: Any, time: Any) -> datetime | None:
    """A DICOM DA + TM pair as a datetime, None when either is missing; ValueError when bad."""
    date_text, time_text = str(date or "").strip(), str(time or "").strip()
    if not date_text or not time_text:
        return None
    base = datetime.strptime(date_text, "%Y%m%d")
    if ":" in time_text:  # ACR-NEMA style HH:MM:SS
        time_text = time_text.replace(":", "")
    whole, _, fraction = time_text.partition(".")
    hours = int(whole[0:2])
    minutes = int(whole[2:4]) if len(whole) >= 4 else 0
    seconds = int(whole[4:6]) if len(whole) >= 6 else 0
    micro = int((fraction + "000000")[:6]) if fraction else 0
    return base + timedelta(hours=hours, minutes=minutes, seconds=seconds, microseconds=micro)


def parse_dt(value: Any) -> datetime | None:
    """A DICOM DT (YYYYMMDDHHMMSS.FFFFFF, offset ignored) as a datetime; None when empty."""
    text = str(value or "").strip()
    if not text:
        return None
    for sign in "+-":
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    return parse_da_tm(text[:8], text[8:] or "000000")


def _positive(item: Dataset, keyword: str, label: str, upper: float) -> float:
    raw = item.get(keyword)
    if raw is None or str(raw).strip() == "":
        raise SUVError(f"PET {label} ({keyword}) is missing; SUV cannot be computed")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise SUVError(f"PET {label} ({keyword}) {raw!r} is not a number") from None
    if not 0 < value < upper:
        raise SUVError(
            f"PET {label} ({keyword}) {value:g} is not plausible (expected 0 to {upper:g})"
        )
    return value


def _when(label: str, getter: Any) -> datetime | None:
    try:
        return getter()
    except ValueError as exc:
        raise SUVError(f"PET {label} is not a valid date/time ({exc})") from None


def suv_factor(datasets: Sequence[Dataset]) -> SUVFactor:
    """The Bq/ml -> SUVbw factor of one PET series; raises SUVError naming the bad tag."""
    if not datasets:
        raise SUVError("the PET series holds no images")
    first = datasets[0]
    units = str(first.get("Units", "") or "").upper()
    if units != "BQML":
        raise SUVError(f"PET Units (0054,1001) is {units or 'missing'}, SUV needs BQML")
    corrected = first.get("CorrectedImage")
    if corrected is not None:
        flags = {
            str(v).upper() for v in (corrected if not isinstance(corrected, str) else [corrected])
        }
        missing = {"ATTN", "DECY"} - flags
        if missing:
            raise SUVError(
                f"PET Corrected Image (0028,0051) lacks {', '.join(sorted(missing))}; "
                "SUV needs attenuation- and decay-corrected images"
            )
    decay = str(first.get("DecayCorrection", "") or "").upper()
    if decay not in {"START", "ADMIN"}:
        raise SUVError(
            f"PET Decay Correction (0054,1102) is {decay or 'missing'}; SUV needs START or ADMIN"
        )
    weight_g = _positive(first, "PatientWeight", "Patient's Weight", 500.0) * 1000.0
    info = first.get("RadiopharmaceuticalInformationSequence")
    if not info:
        raise SUVError(
            "PET Radiopharmaceutical Information Sequence (0054,0016) is missing; "
            "SUV needs the dose"
        )
    drug = info[0]
    dose = _positive(drug, "RadionuclideTotalDose", "Radionuclide Total Dose", 1e11)
    if decay == "ADMIN":
        return SUVFactor(weight_g / dose, decay, None, None, 0.0, dose, weight_g)

    half_life = _positive(drug, "RadionuclideHalfLife", "Radionuclide Half Life", 1e9)
    series = _when(
        "Series Date/Time", lambda: parse_da_tm(first.get("SeriesDate"), first.get("SeriesTime"))
    )
    if series is None:
        raise SUVError("PET Series Date (0008,0021) / Series Time (0008,0031) is missing")
    acquisitions = []
    for ds in datasets:
        when = _when(
            "Acquisition Date/Time",
            lambda ds=ds: parse_da_tm(
                ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime")
            ),
        )
        if when is not None:
            acquisitions.append(when)
    earliest = min(acquisitions) if acquisitions else None
    reference = earliest if earliest is not None and series > earliest else series

    injection = _when(
        "Radiopharmaceutical Start DateTime",
        lambda: parse_dt(drug.get("RadiopharmaceuticalStartDateTime")),
    )
    if injection is None:
        start_time = drug.get("RadiopharmaceuticalStartTime")
        if not start_time:
            raise SUVError(
                "PET Radiopharmaceutical Start Time (0018,1072) and DateTime (0018,1078) are "
                "missing; the injection time is needed for decay correction"
            )
        injection = _when(
            "Radiopharmaceutical Start Time",
            lambda: parse_da_tm(first.get("SeriesDate"), start_time),
        )
        assert injection is not None
    decay_seconds = (reference - injection).total_seconds()
    if decay_seconds < 0:
        raise SUVError(
            f"PET Radiopharmaceutical Start Time {injection:%H:%M:%S} is after the scan "
            f"({reference:%H:%M:%S}); the injection time is wrong"
        )
    if decay_seconds > 24 * 3600:
        raise SUVError(
            f"PET scan {decay_seconds / 3600:.1f} h after the injection time; the "
            "Radiopharmaceutical Start Time or Series Time is wrong"
        )
    decayed = dose * 2.0 ** (-decay_seconds / half_life)
    return SUVFactor(
        weight_g / decayed, decay, injection, reference, decay_seconds, decayed, weight_g
    )


def load_pet_suv_volume(
    datasets: Sequence[Dataset],
    frame_subset: Sequence[Sequence[int] | None] | None = None,
    *,
    pixels: PixelSource | None = None,
) -> Volume:
    """A PET series as a float32 volume of SUVbw (g/ml); raises VolumeError, or SUVError naming
    the tag. `frame_subset` and `pixels` as for `load_volume` (headers and a pixel reader)."""
    factor = suv_factor(datasets)
    volume = load_volume(datasets, {"PT"}, frame_subset, pixels=pixels)
    array = volume.array
    array *= np.float32(factor.factor)
    return volume
