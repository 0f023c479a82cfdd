"""The audit trail: JSON lines per association and per instance, in IHE ATNA vocabulary, no PHI."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from audit_reading import audit_events
from dcmtk import run_echoscu, run_storescu
from in_process import RunningNode, make_ct
from pydicom import dcmread

from scp_node.ops.audit import (
    OUTCOME_MINOR_FAILURE,
    OUTCOME_SERIOUS_FAILURE,
    OUTCOME_SUCCESS,
    AuditLog,
    Party,
    outcome_of_status,
)

PARTY = Party("a1", "STORESCU", "LUNGNODE", "127.0.0.1:40000")


def _events(receiver_node: RunningNode) -> list[dict[str, Any]]:
    path = receiver_node.config.security.audit_log
    assert path is not None and path.is_file(), f"no audit log at {path}"
    return audit_events(path)


def _one(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [e for e in events if e["Event"] == name]
    assert len(found) == 1, (name, events)
    return found[0]


def test_audit_log_is_in_the_store_root_by_default(receiver_node: RunningNode) -> None:
    assert receiver_node.config.security.audit_log == receiver_node.store.root / "audit.log"


def test_allowed_association_and_stored_instance(
    receiver_node: RunningNode, tmp_path: Path
) -> None:
    sent = make_ct(tmp_path / "ct.dcm")
    ds = dcmread(sent)
    result = run_storescu([sent], receiver_node.port, called_ae=receiver_node.ae_title)
    assert result.returncode == 0, result.stderr + result.stdout
    receiver_node.close()  # every event of the association is written once the receiver stopped
    events = _events(receiver_node)

    accepted = _one(events, "association-accepted")
    assert accepted["EventID"] == {
        "code": "110102",
        "codeSystemName": "DCM",
        "displayName": "Begin Transferring DICOM Instances",
    }
    assert accepted["EventOutcomeIndicator"] == OUTCOME_SUCCESS
    assert accepted["CallingAETitle"] == "STORESCU"
    assert accepted["CalledAETitle"] == "LUNGNODE"
    host, port = accepted["Peer"].rsplit(":", 1)
    assert host == "127.0.0.1" and 0 < int(port) < 65536
    assert accepted["EventDateTime"].endswith("Z") and accepted["AuditSourceID"] == "LUNGNODE"

    stored = _one(events, "instance-stored")
    assert stored["EventID"]["displayName"] == "DICOM Instances Transferred"
    assert stored["EventActionCode"] == "C"
    assert stored["EventOutcomeIndicator"] == OUTCOME_SUCCESS
    assert stored["Status"] == "0x0000"
    assert stored["StudyInstanceUID"] == ds.StudyInstanceUID
    assert stored["SOPClassUID"] == ds.SOPClassUID
    assert stored["SOPInstanceUID"] == ds.SOPInstanceUID
    assert stored["AssociationID"] == accepted["AssociationID"]
    assert stored["Peer"] == accepted["Peer"] and stored["CallingAETitle"] == "STORESCU"

    released = _one(events, "association-released")
    assert released["EventID"]["displayName"] == "DICOM Instances Transferred"
    assert released["AssociationID"] == accepted["AssociationID"]
    assert (released["InstancesStored"], released["InstancesRefused"]) == (1, 0)
    assert released["EventOutcomeIndicator"] == OUTCOME_SUCCESS
    assert [e["Event"] for e in events] == [
        "association-accepted",
        "instance-stored",
        "association-released",
    ]


def test_rejected_association_is_a_security_alert(receiver_node: RunningNode) -> None:
    result = run_echoscu(
        receiver_node.port, calling_ae="INTRUDER", called_ae=receiver_node.ae_title
    )
    assert result.returncode != 0
    receiver_node.close()
    events = _events(receiver_node)
    rejected = _one(events, "association-rejected")
    assert rejected["EventID"] == {
        "code": "110113",
        "codeSystemName": "DCM",
        "displayName": "Security Alert",
    }
    assert rejected["EventTypeCode"]["displayName"] == "Node Authentication"
    assert rejected["EventOutcomeIndicator"] == OUTCOME_MINOR_FAILURE
    assert rejected["CallingAETitle"] == "INTRUDER"
    assert rejected["CalledAETitle"] == "LUNGNODE"
    assert rejected["Peer"].startswith("127.0.0.1:")
    assert "calling AE title not recognised" in rejected["EventOutcomeDescription"]
    assert [e["Event"] for e in events] == ["association-rejected"]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_refused_instance_and_resend_are_audited(
    receiver_node: RunningNode, tmp_path: Path
) -> None:
    good = make_ct(tmp_path / "good.dcm")
    bad = make_ct(tmp_path / "bad.dcm", study_uid="1.2.3/../../escape")
    for files in ([good, bad], [good]):
        run_storescu(files, receiver_node.port, called_ae=receiver_node.ae_title)
    receiver_node.close()
    events = _events(receiver_node)
    refused = _one(events, "instance-refused")
    assert refused["Status"] == "0xC210"
    assert refused["EventOutcomeIndicator"] == OUTCOME_MINOR_FAILURE
    assert "Study Instance UID" in refused["EventOutcomeDescription"]
    assert refused["StudyInstanceUID"] is None  # never a value that is not a UID
    stored = [e for e in events if e["Event"] == "instance-stored"]
    assert [e["EventActionCode"] for e in stored] == ["C", "U"]  # U: the same instance again
    ends = [e for e in events if e["Event"] == "association-released"]
    assert [(e["InstancesStored"], e["InstancesRefused"]) for e in ends] == [(1, 1), (1, 0)]
    assert [e["EventOutcomeIndicator"] for e in ends] == [OUTCOME_MINOR_FAILURE, OUTCOME_SUCCESS]


def test_no_patient_identifiers_in_the_audit_log(
    receiver_node: RunningNode, tmp_path: Path
) -> None:
    sent = make_ct(tmp_path / "ct.dcm")
    ds = dcmread(sent)
    ds.PatientName = "Audit^Recognisable"
    ds.PatientID = "AUD-PID-77"
    ds.PatientBirthDate = "19230405"
    ds.save_as(sent, enforce_file_format=True)
    assert (
        run_storescu([sent], receiver_node.port, called_ae=receiver_node.ae_title).returncode == 0
    )
    receiver_node.close()
    text = receiver_node.config.security.audit_log.read_text()  # type: ignore[union-attr]
    assert ds.SOPInstanceUID in text
    for phi in ("Recognisable", "AUD-PID-77", "19230405", "Patient"):
        assert phi not in text


def test_lines_stay_whole_under_concurrent_writers(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "sub" / "audit.log", "LUNGNODE")

    def write(n: int) -> None:
        for i in range(200):
            audit.instance_transferred(
                Party(f"t{n}", "STORESCU", "LUNGNODE", "127.0.0.1:1"),
                status=0,
                study_uid="1.2.3",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                sop_instance_uid=f"1.2.3.{n}.{i}",
            )

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    audit.close()
    lines = (tmp_path / "sub" / "audit.log").read_text().splitlines()
    assert len(lines) == 1600
    uids = {json.loads(line)["SOPInstanceUID"] for line in lines}
    assert len(uids) == 1600


def test_a_write_after_close_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(tmp_path / "audit.log", "LUNGNODE")
    audit.close()
    audit.association_rejected(PARTY, "test")
    assert "audit log" in caplog.text and "not written" in caplog.text


def test_a_full_disk_at_close_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # /dev/full: every flush fails with ENOSPC, as on a full disk; the lines a failed write left
    # in the buffer are flushed again by close().
    audit = AuditLog(tmp_path / "audit.log", "LUNGNODE")
    audit._file.close()
    audit._file = open("/dev/full", "a", encoding="utf-8")  # noqa: SIM115
    audit.association_rejected(PARTY, "test")
    assert "No space left on device" in caplog.text
    audit.close()
    assert "last lines not written at close" in caplog.text
    assert audit._file.closed


def test_unopenable_audit_log_names_the_file_and_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"audit log .*file/audit.log.*\[security\] audit_log"):
        AuditLog(blocker / "audit.log", "LUNGNODE")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, OUTCOME_SUCCESS),
        (0xB000, OUTCOME_SUCCESS),
        (0xC210, OUTCOME_MINOR_FAILURE),
        (0xA900, OUTCOME_MINOR_FAILURE),
        (0xA700, OUTCOME_SERIOUS_FAILURE),
        (0x0110, OUTCOME_SERIOUS_FAILURE),
    ],
)
def test_outcome_of_status(status: int, outcome: int) -> None:
    assert outcome_of_status(status) == outcome


def test_association_end_must_be_released_or_aborted(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log", "LUNGNODE")
    with pytest.raises(ValueError, match="released or aborted"):
        audit.association_ended(PARTY, "vanished", 0, 0)
    audit.association_ended(PARTY, "aborted", 2, 0)
    audit.close()
    (event,) = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert event["Event"] == "association-aborted"
    assert event["EventOutcomeIndicator"] == OUTCOME_SERIOUS_FAILURE
