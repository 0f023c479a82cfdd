"""Group the DICOM files of a folder into studies and series (for offline `lungnode predict`)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from storage.study_files import InstanceFile, SeriesFiles, StudyFiles

_HEADER_TAGS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
]


def scan_folder(folder: Path) -> tuple[list[StudyFiles], list[str]]:
    """Read the headers of every file below `folder`; returns the studies and skipped-file notes."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"DICOM folder {folder}: not a directory; pass a folder of .dcm files"
        )
    series: dict[tuple[str, str], dict[str, InstanceFile]] = defaultdict(dict)
    modality: dict[tuple[str, str], str] = {}
    notes: list[str] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            key = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
            sop_uid, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
        except (InvalidDicomError, AttributeError, OSError) as exc:
            notes.append(f"{path}: not a DICOM image file ({type(exc).__name__})")
            continue
        series[key].setdefault(sop_uid, InstanceFile(path, sop_uid, sop_class))
        modality[key] = str(ds.get("Modality", ""))
    studies: dict[str, list[SeriesFiles]] = defaultdict(list)
    for (study_uid, series_uid), instances in sorted(series.items()):
        studies[study_uid].append(
            SeriesFiles(series_uid, modality[(study_uid, series_uid)], tuple(instances.values()))
        )
    return [StudyFiles(uid, tuple(s)) for uid, s in studies.items()], notes
