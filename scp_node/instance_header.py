"""The few header elements the node indexes for a received instance, read without Pixel Data.

Shared by the C-STORE handler (on the streamed file) and the start-up re-indexing of store files
(index_recovery), so both derive exactly the same index row from the same file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from storage.records import InstanceRecord
from storage.uids import require_uid

# The only elements read; everything else, Pixel Data above all, stays on disk unread.
HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "NumberOfSlices",  # (0054,0081): expected count of a PET series
]


class HeaderError(ValueError):
    """The file does not parse as a DICOM dataset; the message names the file and the error."""


@dataclass(frozen=True)
class InstanceHeader:
    """Raw header values (None when absent); callers validate UIDs before using them."""

    sop_class_uid: object
    sop_instance_uid: object
    study_instance_uid: object
    series_instance_uid: object
    modality: str
    number_of_slices: object

    def record(self, path: Path, calling_aet: str, received_at: float) -> InstanceRecord:
        """The index row for this instance stored at `path`; raises InvalidUIDError naming the
        first of SOP Class, SOP Instance, Study and Series Instance UID that is not a UID."""
        sop_class_uid = require_uid("SOP Class UID", self.sop_class_uid)
        sop_uid = require_uid("SOP Instance UID", self.sop_instance_uid)
        study_uid = require_uid("Study Instance UID", self.study_instance_uid)
        series_uid = require_uid("Series Instance UID", self.series_instance_uid)
        return InstanceRecord(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            sop_class_uid=sop_class_uid,
            modality=self.modality,
            path=path,
            calling_aet=calling_aet,
            received_at=received_at,
        )

    def expected_in_series(self) -> int | None:
        """PET Number of Slices (0054,0081) as the series' expected instance count, if sane."""
        if self.modality != "PT" or self.number_of_slices is None:
            return None
        try:
            # whatever pydicom parsed (object); int() refuses a bad one with the errors below
            value = int(self.number_of_slices)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return None
        return value if value > 0 else None


def read_header(path: Path) -> InstanceHeader:
    """Read the indexed elements of the DICOM file at `path`; raises HeaderError."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        return InstanceHeader(
            sop_class_uid=ds.get("SOPClassUID"),
            sop_instance_uid=ds.get("SOPInstanceUID"),
            study_instance_uid=ds.get("StudyInstanceUID"),
            series_instance_uid=ds.get("SeriesInstanceUID"),
            modality=str(ds.get("Modality") or "").strip(),
            number_of_slices=ds.get("NumberOfSlices"),
        )
    except (InvalidDicomError, ValueError, KeyError, EOFError, OSError, TypeError) as exc:
        raise HeaderError(f"{path.name} does not parse as DICOM: {exc}") from None
