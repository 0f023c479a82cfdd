"""Issue 17, item 1, end to end through `lungnode serve` with storescp as the PACS: a 30-slice
study whose slices 16-30 carry a group FFFE element before Pixel Data that hides a second
Patient ID (OTHER-PATIENT) from any reader that does not walk the bytes as pydicom does.

The node must read what pydicom reads: slices 16-30 name another patient, so they are refused
(0xC221) as the same slices written plainly are; the analysis and every result object name the
first patient and only slices 1-15.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from dcmtk import StorescpServer
from header_constructs import OTHER_PATIENT, group_fffe_covering, text
from node_process import NodeProcess, save_datasets
from pynetdicom import AE

from classifier.datasets.phantom import generate_study
from scp_node.dicom.status import PATIENT_MISMATCH, SUCCESS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PIXEL_DATA = b"\xe0\x7f\x10\x00"


def _with_hidden_patient(path: Path) -> None:
    """Rewrite `path` with the construct before its Pixel Data (explicit VR little endian)."""
    raw = path.read_bytes()
    at = raw.index(PIXEL_DATA + b"OW")
    hidden = text(0x00100020, "LO", OTHER_PATIENT, False)
    path.write_bytes(raw[:at] + group_fffe_covering(hidden) + raw[at:])
    assert pydicom.dcmread(path, stop_before_pixels=True).PatientID == OTHER_PATIENT


def _send_files(node: NodeProcess, paths: list[Path]) -> list[int]:
    """C-STORE each file's bytes as they are (pynetdicom sends a file without re-encoding)."""
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(pydicom.dcmread(paths[0], stop_before_pixels=True).SOPClassUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(path).Status) for path in paths]
    finally:
        assoc.release()


def test_hidden_second_patient_is_refused_and_results_name_one_patient(
    tmp_path: Path, node_process: Callable[..., NodeProcess], chunked_send: None
) -> None:
    study = generate_study(seed=17, histology="A", ct_size=64, ct_slices=30, pet=False)
    first_patient = str(study.ct[0].PatientID)
    paths = save_datasets(study.ct, tmp_path / "study")
    for path in paths[15:]:
        _with_hidden_patient(path)
    kept = {str(ds.SOPInstanceUID) for ds in study.ct[:15]}
    with (
        StorescpServer(tmp_path / "archive") as archive,
        node_process(archive_port=archive.port) as node,
    ):
        statuses = _send_files(node, paths)
        assert statuses == [SUCCESS] * 15 + [PATIENT_MISMATCH] * 15, node.log()[-3000:]
        found = archive.wait_for_modalities({"SR"}, node.log)
        node.wait_for(
            lambda s: [x["state"] for x in s["studies"]] == ["DELIVERED"], 120, "DELIVERED"
        )
        (row,) = node.status()["studies"]
        assert row["instances"] == 15
    received = [pydicom.dcmread(p, stop_before_pixels=True) for p in archive.received()]
    assert received and {str(ds.PatientID) for ds in received} == {first_patient}
    assert {str(ds.StudyInstanceUID) for ds in received} == {study.study_instance_uid}
    (sr,) = found["SR"]
    evidence = {
        item.ReferencedSOPInstanceUID
        for study_item in sr.CurrentRequestedProcedureEvidenceSequence
        for series_item in study_item.ReferencedSeriesSequence
        for item in series_item.ReferencedSOPSequence
    }
    assert evidence & {str(ds.SOPInstanceUID) for ds in study.ct} <= kept
