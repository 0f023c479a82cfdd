"""Defence in depth for one patient per study: before results are encoded, the source
instances as pydicom read them for the analysis must name the patient and study the index holds.

The receiver indexes Patient ID, Patient's Birth Date and Study Instance UID from its own header
read (scp_node.dicom.header_scan, or pydicom); the analysis and the encoders read the same files
with pydicom. Should the two readings ever differ, results would go out under one patient built from
another's images. `source_mismatch` names the first difference (as digests: no identifier leaves
this module) so the worker fails the study with an audited reason instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import Dataset

from scp_node.dicom.instance_header import patient_digest
from scp_node.logs import escape_text


def source_mismatch(
    study_uid: str, indexed: tuple[str | None, str | None] | None, sources: Sequence[Dataset]
) -> str | None:
    """Why `sources` (the headers the encoders will use) do not belong to the indexed study
    `study_uid` whose (Patient ID, Birth Date) digests are `indexed`; None when they do. For a
    study indexed before digests existed (no Patient ID digest) the sources are compared among
    themselves, so they still name one patient; otherwise a birth date the sources name where
    the index holds none is a difference (the receiver read none in any instance)."""
    if indexed is None:
        return f"study {study_uid} is not in the index"
    expected_id, expected_birth = indexed
    indexed_since_digests = expected_id is not None
    for ds in sources:
        sop = escape_text(str(ds.get("SOPInstanceUID", "?")), 64)
        where = f"source instance {sop} of study {study_uid} as read for the analysis"
        if str(ds.get("StudyInstanceUID", "")).strip(" \0") != study_uid:
            return f"{where} names another Study Instance UID than the index holds"
        got_id = patient_digest("id", ds.get("PatientID"))
        expected_id = expected_id or got_id
        if got_id != expected_id:
            return f"{where} names another Patient ID than the index holds for the study"
        birth = ds.get("PatientBirthDate")
        if birth is not None and str(birth).strip(" \0"):
            got_birth = patient_digest("birth-date", birth)
            if not indexed_since_digests:
                expected_birth = expected_birth or got_birth
            if got_birth != expected_birth:
                return f"{where} names another Patient's Birth Date than the index holds"
    return None
