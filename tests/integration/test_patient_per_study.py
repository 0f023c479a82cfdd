"""One patient per study, one study per SOP Instance (issue 11, item 3), against a running
receiver: an instance of another patient in a study, or a SOP Instance UID already stored under
another study, is refused (0xC221, 0xC222), not stored, and audited without the identifiers."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_reading import audit_events
from header_constructs import OTHER_PATIENT, hidden_patient
from in_process import CT_IMAGE_STORAGE, RunningNode, make_ct
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

from scp_node.dicom.instance_header import patient_digest
from scp_node.dicom.status import (
    CANNOT_UNDERSTAND,
    INSTANCE_IN_OTHER_STUDY,
    PATIENT_MISMATCH,
    SUCCESS,
)
from storage.index import InstanceRecord, StudyConflict

STUDY = "1.2.826.0.1.3680043.8.498.71"
SERIES = f"{STUDY}.1"


def _instance(
    tmp: Path,
    *,
    patient_id: str = "PAT-A",
    birth_date: str | None = None,
    study: str = STUDY,
    sop_uid: str | None = None,
) -> Path:
    path = make_ct(
        tmp / f"{generate_uid()}.dcm", study_uid=study, series_uid=f"{study}.1", sop_uid=sop_uid
    )
    ds = dcmread(path)
    ds.PatientID = patient_id
    if birth_date is not None:
        ds.PatientBirthDate = birth_date
    ds.save_as(path, enforce_file_format=True)
    return path


def _send(node: RunningNode, paths: list[Path]) -> list[int]:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def _audit(node: RunningNode) -> list[dict[str, object]]:
    return audit_events(node.config.security.audit_log)


def test_instance_of_another_patient_is_refused_and_audited(
    receiver_node: RunningNode, tmp_path: Path
) -> None:
    first = _instance(tmp_path, patient_id="PAT-A", birth_date="19600101")
    same = _instance(tmp_path, patient_id="PAT-A")  # no birth date: only the ID is compared
    other_id = _instance(tmp_path, patient_id="PAT-INTRUDER", birth_date="19600101")
    other_birth = _instance(tmp_path, patient_id="PAT-A", birth_date="19991231")
    statuses = _send(receiver_node, [first, same, other_id, other_birth])
    assert statuses == [SUCCESS, SUCCESS, PATIENT_MISMATCH, PATIENT_MISMATCH]
    assert len(receiver_node.files()) == 2, "the other patient's instances are not stored"
    assert list(receiver_node.store.incoming.iterdir()) == []
    study = receiver_node.index.study_files(STUDY)
    assert sorted(f.sop_instance_uid for s in study.series for f in s.instances) == sorted(
        str(dcmread(p).SOPInstanceUID) for p in (first, same)
    )
    refused = [e for e in _audit(receiver_node) if e["Event"] == "instance-refused"]
    assert [e["Status"] for e in refused] == ["0xC221", "0xC221"]
    assert all(e["EventOutcomeIndicator"] == 4 for e in refused)
    assert "Patient ID differs" in str(refused[0]["EventOutcomeDescription"])
    assert "Birth Date differs" in str(refused[1]["EventOutcomeDescription"])
    audit_text = receiver_node.config.security.audit_log.read_text()  # type: ignore[union-attr]
    assert "PAT-INTRUDER" not in audit_text and "19991231" not in audit_text


def test_sop_instance_uid_reused_under_another_study_is_refused(
    receiver_node: RunningNode, tmp_path: Path
) -> None:
    sop = generate_uid()
    original = _instance(tmp_path, sop_uid=sop)
    reused = _instance(tmp_path, sop_uid=sop, study=f"{STUDY}.2")
    assert _send(receiver_node, [original, reused, original]) == [
        SUCCESS,
        INSTANCE_IN_OTHER_STUDY,
        SUCCESS,  # the same instance again in its own study: idempotent
    ]
    assert len(receiver_node.files()) == 1, "no orphan file under the other study"
    assert not (receiver_node.store.root / f"{STUDY}.2").exists()
    (refused,) = [e for e in _audit(receiver_node) if e["Event"] == "instance-refused"]
    assert refused["Status"] == "0xC222" and refused["SOPInstanceUID"] == sop
    assert f"already stored under study {STUDY}" in str(refused["EventOutcomeDescription"])


def _record(sop: str, study: str, patient: str, birth: str | None = None) -> InstanceRecord:
    return InstanceRecord(
        study_uid=study,
        series_uid=f"{study}.1",
        sop_uid=sop,
        sop_class_uid=CT_IMAGE_STORAGE,
        modality="CT",
        path=Path(f"/store/{sop}.dcm"),
        calling_aet="STORESCU",
        received_at=1.0,
        patient_digest=patient_digest("id", patient),
        birth_date_digest=None if birth is None else patient_digest("birth-date", birth),
    )


def test_index_refuses_a_conflict_in_the_same_transaction(receiver_node: RunningNode) -> None:
    """The check inside record_instance (two instances racing past the receiver's pre-check):
    nothing of the refused instance is written."""
    index = receiver_node.index
    assert index.record_instance(_record("1.2.3.1", "1.2.3", "A", "19600101"))
    with pytest.raises(StudyConflict) as patient:
        index.record_instance(_record("1.2.3.2", "1.2.3", "B"))
    assert patient.value.kind == StudyConflict.PATIENT
    with pytest.raises(StudyConflict) as birth:
        index.record_instance(_record("1.2.3.3", "1.2.3", "A", "20000101"))
    assert birth.value.kind == StudyConflict.PATIENT
    with pytest.raises(StudyConflict) as other:
        index.record_instance(_record("1.2.3.1", "1.2.4", "A"))
    assert other.value.kind == StudyConflict.OTHER_STUDY
    assert index.record_instance(_record("1.2.3.4", "1.2.3", "A"))
    (study,) = index.status()["studies"]
    assert study["instances"] == 2
    assert [f.sop_instance_uid for f in index.study_files("1.2.3").series[0].instances] == [
        "1.2.3.1",
        "1.2.3.4",
    ]
    assert index.instance_conflict("1.2.3", "1.2.3.9", patient_digest("id", "A"), None) is None


def test_a_second_patient_id_after_pixel_data_is_refused(
    receiver_node: RunningNode, tmp_path: Path, chunked_send: None
) -> None:
    """Issue 17: the header read while the dataset streams holds only for a file that ends
    with its Pixel Data; one with a Patient ID after it (which the analysis, reading headers up
    to Pixel Data, and a whole read see differently) is read again and refused."""
    path = _instance(tmp_path, patient_id="PAT-A")
    path.write_bytes(path.read_bytes() + hidden_patient(False))
    assert dcmread(path).PatientID == OTHER_PATIENT
    plain = _instance(tmp_path, patient_id="PAT-A")
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate("127.0.0.1", receiver_node.port, ae_title=receiver_node.ae_title)
    assert assoc.is_established
    try:
        statuses = [int(assoc.send_c_store(p).Status) for p in (path, plain)]
    finally:
        assoc.release()
    assert statuses == [CANNOT_UNDERSTAND, SUCCESS]
    refused = [e for e in _audit(receiver_node) if e["Event"] == "instance-refused"]
    assert "after Pixel Data" in str(refused[0]["EventOutcomeDescription"])
