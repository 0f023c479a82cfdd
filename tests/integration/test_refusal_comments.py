"""Every C-STORE the node refuses is answered with an Error Comment (0000,0902) saying why,
beside the status code (issue 18, item 4): checked for each refusal with pynetdicom as the SCU,
and for intake paused and the new-study quota with DCMTK storescu, whose log shows it. Each
comment is listed in docs/CONFORMANCE.md."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest
from dcmtk import run_storescu
from in_process import CT_IMAGE_STORAGE, RunningNode, make_ct
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

from scp_node.dicom.sop_classes import STORAGE_SOP_CLASSES
from scp_node.dicom.status import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    INSTANCE_IN_OTHER_STUDY,
    OUT_OF_RESOURCES,
    PATIENT_MISMATCH,
    PROCESSING_FAILURE,
    error_comment,
    refusal,
)

CONFORMANCE = Path(__file__).resolve().parents[2] / "docs" / "CONFORMANCE.md"
PET_IMAGE_STORAGE = STORAGE_SOP_CLASSES["Positron Emission Tomography Image Storage"]


def _send(
    node: RunningNode, paths: list[Path | Dataset], calling: str = "STORESCU"
) -> list[Dataset]:
    """C-STORE each of `paths` (a file's bytes as they are, or a dataset) over one association;
    the status datasets pynetdicom returns."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(p) for p in paths]
    finally:
        assoc.release()


def _refused(answer: Dataset) -> tuple[int, str]:
    return int(answer.Status), str(answer.get("ErrorComment", ""))


def _with(path: Path, **values: str) -> Path:
    """The file at `path` with dataset elements set to `values` (file meta unchanged)."""
    ds = dcmread(path)
    meta = ds.file_meta
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)  # enforce_file_format would copy the UIDs into the file meta
    assert dcmread(path).file_meta == meta
    return path


# --- each refusal, pynetdicom as the SCU ---------------------------------------------------


def test_intake_paused(tmp_path: Path) -> None:
    node = RunningNode(tmp_path, intake_paused=lambda: True)
    try:
        (answer,) = _send(node, [make_ct(tmp_path / "ct.dcm")])
        assert _refused(answer) == (OUT_OF_RESOURCES, "intake is paused on the node")
    finally:
        node.close()


def test_store_below_min_free_mb(tmp_path: Path) -> None:
    node = RunningNode(tmp_path, storage__min_free_mb=10**9)
    try:
        (answer,) = _send(node, [make_ct(tmp_path / "ct.dcm")])
        assert _refused(answer) == (
            OUT_OF_RESOURCES,
            "free space on the node is below min_free_mb (1000000000 MiB)",
        )
    finally:
        node.close()


def test_instance_over_max_instance_mb(tmp_path: Path) -> None:
    node = RunningNode(tmp_path, storage__max_instance_mb=1)
    try:
        (answer,) = _send(node, [make_ct(tmp_path / "big.dcm", size=1024)])
        status, comment = _refused(answer)
        assert status == OUT_OF_RESOURCES
        assert comment == "the dataset grew past max_instance_mb (1 MiB)", comment
    finally:
        node.close()


def test_disk_full_while_storing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import storage.data_sync as data_sync

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_sync.os, "fdatasync", full)
    node = RunningNode(tmp_path)
    # the data is synced early (one association: on any file system), and fails
    try:
        (answer,) = _send(node, [make_ct(tmp_path / "ct.dcm")])
        assert _refused(answer) == (OUT_OF_RESOURCES, "disk full on the node while storing")
    finally:
        node.close()


def test_new_study_quota(tmp_path: Path) -> None:
    node = RunningNode(tmp_path, security__max_new_studies_per_hour=1)
    try:
        files = [make_ct(tmp_path / f"{n}.dcm", study_uid=generate_uid()) for n in range(2)]
        first, second = _send(node, list(files))
        assert int(first.Status) == 0 and "ErrorComment" not in first
        assert _refused(second) == (
            OUT_OF_RESOURCES,
            "calling AE reached max_new_studies_per_hour (1)",
        )
    finally:
        node.close()


def test_patient_mismatch_and_instance_in_another_study(tmp_path: Path) -> None:
    node = RunningNode(tmp_path)
    try:
        first = make_ct(tmp_path / "first.dcm")
        other_patient = _with(make_ct(tmp_path / "other.dcm"), PatientID="SOMEONE-ELSE")
        moved = _with(
            make_ct(tmp_path / "moved.dcm", sop_uid=str(dcmread(first).SOPInstanceUID)),
            StudyInstanceUID=generate_uid(),
        )
        _, patient, study = _send(node, [first, other_patient, moved])
        assert _refused(patient) == (
            PATIENT_MISMATCH,
            "patient differs from the study's (one patient per study)",
        )
        assert _refused(study) == (
            INSTANCE_IN_OTHER_STUDY,
            "SOP Instance UID already stored in another study",
        )
    finally:
        node.close()


@pytest.mark.usefixtures("chunked_send")
def test_dataset_that_is_not_the_request(tmp_path: Path) -> None:
    """The request's Affected SOP Class/Instance UID (from the file meta) differ from the
    dataset's; a UID that is not one; bytes that do not parse."""
    node = RunningNode(tmp_path)
    try:
        pet = _with(make_ct(tmp_path / "pet.dcm"), SOPClassUID=PET_IMAGE_STORAGE)
        renamed = _with(make_ct(tmp_path / "renamed.dcm"), SOPInstanceUID=generate_uid())
        bad_uid = _with(make_ct(tmp_path / "bad_uid.dcm"), StudyInstanceUID="1.2/../3")
        garbage = make_ct(tmp_path / "garbage.dcm")
        raw = garbage.read_bytes()
        start = raw.index(b"\x08\x00\x16\x00")  # SOP Class UID, the dataset's first element
        garbage.write_bytes(raw[:start] + b"\x08\x00\x16\x00ZZ\x04\x00abcd")  # no such VR
        answers = [_refused(a) for a in _send(node, [pet, renamed, bad_uid, garbage])]
        assert answers[:3] == [
            (
                DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Class UID is not the request's Affected SOP Class UID",
            ),
            (CANNOT_UNDERSTAND, "SOP Instance UID is not the request's Affected SOP Instance UID"),
            (CANNOT_UNDERSTAND, "Study Instance UID is not a valid UID"),
        ]
        status, comment = answers[3]
        assert status == CANNOT_UNDERSTAND and comment.startswith("dataset does not parse"), comment
    finally:
        node.close()


def test_processing_failure(tmp_path: Path) -> None:
    node = RunningNode(tmp_path)
    try:
        node.database.close()  # the index is unavailable
        (answer,) = _send(node, [make_ct(tmp_path / "ct.dcm")])
        status, comment = _refused(answer)
        assert status == PROCESSING_FAILURE
        assert re.fullmatch(r"processing failure on the node \(\w+\), retry", comment), comment
    finally:
        node.receiver.stop(grace_seconds=2)


# --- the comment as DCMTK storescu shows it --------------------------------------------------


def _storescu_shows(node: RunningNode, files: list[Path], comment: str) -> None:
    result = run_storescu(files, node.port, called_ae=node.ae_title, extra_args=["-d"])
    output = result.stdout + result.stderr
    assert "0xa700" in output.lower(), output
    assert re.search(r"\(0000,0902\) LO \[" + re.escape(comment) + r"\]", output), output


def test_storescu_shows_why_intake_is_paused(tmp_path: Path) -> None:
    node = RunningNode(tmp_path, intake_paused=lambda: True)
    try:
        _storescu_shows(node, [make_ct(tmp_path / "ct.dcm")], "intake is paused on the node")
    finally:
        node.close()


def test_storescu_shows_the_new_study_quota(tmp_path: Path) -> None:
    node = RunningNode(tmp_path, security__max_new_studies_per_hour=1)
    try:
        files = [make_ct(tmp_path / f"{n}.dcm", study_uid=generate_uid()) for n in range(2)]
        _storescu_shows(node, files, "calling AE reached max_new_studies_per_hour (1)")
    finally:
        node.close()


# --- the Error Comment itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "comment"),
    [
        ("intake is paused on the node", "intake is paused on the node"),
        ("below [storage] min_free_mb (5 MiB)", "below min_free_mb (5 MiB)"),
        ("a\\b\nc\x00d\u00e9e", "a b c d e"),
        (
            "free space fell below [storage] min_free_mb (10 MiB) while the dataset was received",
            "free space fell below min_free_mb (10 MiB) while the dataset...",
        ),
        ("x" * 80, "x" * 61 + "..."),
    ],
)
def test_error_comment_is_a_lo_value(reason: str, comment: str) -> None:
    assert error_comment(reason) == comment
    assert len(comment) <= 64 and "\\" not in comment and comment.isprintable()
    answer = refusal(OUT_OF_RESOURCES, reason)
    assert answer.Status == OUT_OF_RESOURCES and answer.ErrorComment == comment


COMMENTS: list[str] = [
    "intake is paused on the node",
    "free space on the node is below min_free_mb",
    "the dataset grew past max_instance_mb",
    "free space fell below min_free_mb",
    "disk full on the node while receiving",
    "disk full on the node while storing",
    "index database full on the node",
    "calling AE reached max_new_studies_per_hour",
    "patient differs from the study's (one patient per study)",
    "SOP Instance UID already stored in another study",
    "SOP Class UID is not the request's Affected SOP Class UID",
    "SOP Instance UID is not the request's Affected SOP Instance UID",
    "is not a valid UID",
    "dataset does not parse",
    "processing failure on the node",
]


@pytest.mark.parametrize("comment", COMMENTS)
def test_the_conformance_statement_lists_each_comment(comment: str) -> None:
    statement = " ".join(CONFORMANCE.read_text().split())
    assert comment in statement, f"docs/CONFORMANCE.md does not list {comment!r}"
