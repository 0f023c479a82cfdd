"""A real CT series (Lung-PET-CT-Dx A0002) given the faults real scanners write, for showing that
every result object the node builds from bad input still passes dciodvfy.

The faults, each seen in real data (issue 10) or common in scanner output:

- Referenced Study Sequence: one item without Referenced SOP Class UID (Type 1), one with the
  retired Detached Study Management SOP Class;
- Procedure Code Sequence item with an empty Code Meaning (Type 1 in a sequence item);
- Type 2 attributes empty (Patient's Birth Date, Referring Physician's Name) or missing (Study
  Time, Accession Number);
- values too long for their VR (Study Description, Study ID, Patient's Age), a malformed date;
- an unknown Specific Character Set ("ISO_IR100") with Latin-1 text in Patient's Name;
- values padded with NUL bytes and blanks (Patient ID, Study Description).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

PATIENT = "Lung_Dx-A0002"
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # retired


def a0002_ct_folder(real_data: Path) -> Path | None:
    """The A0002 CT series folder holding the first annotated slice, or None."""
    annotations = sorted((real_data / "Annotation" / "A0002").glob("*.xml"))
    if not annotations:
        return None
    wanted = {xml.stem for xml in annotations}
    root = real_data / "Lung-PET-CT-Dx" / f"Lung_Dx-{'A0002'}"
    for folder in sorted({p.parent for p in root.rglob("*.dcm")}):
        uids = {
            pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in folder.glob("*.dcm")
        }
        if uids & wanted:
            return folder
    return None


def add_faults(ds: Dataset) -> Dataset:
    """Give `ds` (a CT instance, changed in place and returned) the faults listed above."""
    missing_class = Dataset()
    missing_class.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    retired = Dataset()
    retired.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    retired.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.ReferencedStudySequence = Sequence([missing_class, retired])
    procedure = Dataset()
    procedure.CodeValue = "CTCHEST"
    procedure.CodingSchemeDesignator = "99LOCAL"
    procedure.CodeMeaning = ""
    ds.ProcedureCodeSequence = Sequence([procedure])
    ds.PatientBirthDate = ""
    ds.ReferringPhysicianName = ""
    for keyword in ("StudyTime", "AccessionNumber"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.StudyDescription = (
        "Thorax^AThoraxRoutine (Adult) " + "with a description far too long for LO " * 2
    )
    ds.StudyID = "STUDY-ID-LONGER-THAN-SIXTEEN"
    ds.PatientAge = "053 Y"
    # Not a decimal string; set raw, as pydicom would refuse the value.
    ds[0x00101030] = RawDataElement(Tag(0x00101030), "DS", 8, b"seventy ", 0, False, True)
    ds.SpecificCharacterSet = "ISO_IR 100"  # made "ISO_IR100" in the file, see below
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = PATIENT + "\x00"
    ds.AdmittingDiagnosesDescription = "  lung mass \x00"
    return ds


def write_faulty_series(folder: Path, target: Path) -> list[Path]:
    """Copies of the series in `folder` with the faults, written to `target` as the scanner
    would send them (the bad character set's Latin-1 bytes included)."""
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for path in sorted(folder.glob("*.dcm")):
        ds = add_faults(pydicom.dcmread(path))
        destination = target / path.name
        ds.save_as(destination, enforce_file_format=True)
        # Text written in Latin-1 under a misspelt term (same length, so the file stays valid).
        raw = destination.read_bytes()
        assert raw.count(b"ISO_IR 100") == 1
        destination.write_bytes(raw.replace(b"ISO_IR 100", b"ISO_IR100 "))
        out.append(destination)
    return out
