"""The C-ECHO/C-STORE SCP against the real DCMTK echoscu and storescu on loopback."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dcmtk import dcmtk_env, require_tool, run_echoscu, run_storescu
from in_process import CT_IMAGE_STORAGE, RunningNode, make_ct
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE

from scp_node.dicom.sop_classes import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from scp_node.receive.lazy_index import LazyIndexing, read_mark, remember_calling_aet
from storage.database import Database
from storage.index import Index, InstanceRecord
from storage.instance_store import InstanceStore


def dcmtk_convert(tool: str, args: list[str], src: Path, dst: Path) -> Path:
    """Transcode a file with a DCMTK tool (dcmcjpeg, dcmcjpls, dcmcrle, dcmconv)."""
    exe = require_tool(tool)
    subprocess.run([exe, *args, str(src), str(dst)], check=True, env=dcmtk_env(), timeout=60)
    return dst


def test_logs_name_instances_by_uid_never_the_patient(
    receiver_node: RunningNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sent = make_ct(tmp_path / "ct.dcm")
    result = run_storescu([sent], receiver_node.port, called_ae=receiver_node.ae_title)
    assert result.returncode == 0, result.stderr + result.stdout
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    ours = [line for line in info if "sop_instance_uid=" in line or "association" in line]
    assert any(dcmread(sent).SOPInstanceUID in line for line in ours), info
    assert any("association accepted calling_ae=STORESCU" in line for line in ours), info
    for line in info:
        assert "Test^Receiver" not in line and "RCV-1" not in line, line


def test_dataset_streams_into_the_store_incoming_folder(
    receiver_node: RunningNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's temp file is created in <store>/.incoming, so committing is a rename."""
    folders: list[Path | None] = []
    real = tempfile.NamedTemporaryFile

    def spy(*args: Any, **kwargs: Any) -> Any:
        folders.append(kwargs.get("dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", spy)
    result = run_storescu(
        [make_ct(tmp_path / "ct.dcm")], receiver_node.port, called_ae=receiver_node.ae_title
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert folders == [receiver_node.store.incoming]
    assert len(receiver_node.files()) == 1


def test_c_echo_with_echoscu(receiver_node: RunningNode) -> None:
    result = run_echoscu(receiver_node.port, calling_ae="ECHOSCU", called_ae=receiver_node.ae_title)
    assert result.returncode == 0, result.stderr + result.stdout


def _compressed(kind: str, tmp: Path) -> Path:
    """A CT file in the transfer syntax named by `kind`, made by DCMTK or pydicom."""
    base = make_ct(tmp / "base.dcm", sop_uid=generate_uid())
    out = tmp / f"{kind}.dcm"
    if kind == "explicit":
        return base
    if kind == "implicit":
        return dcmtk_convert("dcmconv", ["+ti"], base, out)
    if kind == "deflated":
        return dcmtk_convert("dcmconv", ["+td"], base, out)
    if kind == "jpeg-lossless-sv1":
        return dcmtk_convert("dcmcjpeg", ["+e1"], base, out)
    if kind == "jpeg-ls-lossless":
        return dcmtk_convert("dcmcjpls", ["+el"], base, out)
    if kind == "rle":
        return dcmtk_convert("dcmcrle", [], base, out)
    if kind == "jpeg2000-lossless":
        ds = dcmread(base)
        ds.compress(JPEG2000Lossless)
        ds.save_as(out, enforce_file_format=True)
        return out
    raise AssertionError(kind)


EXPECTED_SYNTAX = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "jpeg-lossless-sv1": JPEGLosslessSV1,
    "jpeg-ls-lossless": JPEGLSLossless,
    "rle": RLELossless,
    "jpeg2000-lossless": JPEG2000Lossless,
}
# storescu proposes the file's own syntax when told which family to propose.
_STORESCU_PROPOSE = {
    "explicit": [],
    "implicit": ["-xi"],
    "deflated": ["-xd"],
    "jpeg-lossless-sv1": ["-xs"],
    "jpeg-ls-lossless": ["-xt"],
    "rle": ["-xr"],
    "jpeg2000-lossless": ["-xv"],
}


@pytest.mark.parametrize("kind", list(EXPECTED_SYNTAX))
def test_c_store_is_stored_as_received(
    receiver_node: RunningNode, tmp_path: Path, kind: str
) -> None:
    sent_path = _compressed(kind, tmp_path)
    sent = dcmread(sent_path)
    assert sent.file_meta.TransferSyntaxUID == EXPECTED_SYNTAX[kind]
    result = run_storescu(
        [sent_path],
        receiver_node.port,
        called_ae=receiver_node.ae_title,
        extra_args=_STORESCU_PROPOSE[kind],
    )
    assert result.returncode == 0, result.stderr + result.stdout

    stored_path = receiver_node.store.path_for(
        sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID
    )
    assert receiver_node.files() == [stored_path]
    stored = dcmread(stored_path)
    assert stored.file_meta.TransferSyntaxUID == EXPECTED_SYNTAX[kind]
    assert stored.PixelData == sent.PixelData  # compressed fragments byte for byte
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "Rows", "BitsStored", "PatientID"):
        assert stored[keyword].value == sent[keyword].value
    assert np.array_equal(stored.pixel_array, sent.pixel_array)
    assert receiver_node.stored == [sent.SOPInstanceUID]
    assert list(receiver_node.store.incoming.iterdir()) == []


def test_second_send_of_same_instance_is_stored_once(
    receiver_node: RunningNode, tmp_path: Path
) -> None:
    sent = make_ct(tmp_path / "ct.dcm")
    for _ in range(2):
        result = run_storescu([sent], receiver_node.port, called_ae=receiver_node.ae_title)
        assert result.returncode == 0, result.stderr + result.stdout
    assert len(receiver_node.files()) == 1
    study = receiver_node.index.study_files("1.2.826.0.1.3680043.8.498.1")
    assert len(study.paths) == 1


def _reject_reason(port: int, calling: str, called: str) -> tuple[int, int, int]:
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_rejected
    rsp = assoc.acceptor.primitive
    return rsp.result, rsp.result_source, rsp.diagnostic


def test_calling_ae_not_on_allow_list_is_rejected(
    receiver_node: RunningNode, tmp_path: Path
) -> None:
    sent = make_ct(tmp_path / "ct.dcm")
    result = run_storescu(
        [sent], receiver_node.port, calling_ae="INTRUDER", called_ae=receiver_node.ae_title
    )
    assert result.returncode != 0
    assert "Rejected" in result.stderr + result.stdout
    assert receiver_node.files() == []
    # A-ASSOCIATE-RJ: rejected-permanent, service-user, calling AE title not recognised
    assert _reject_reason(receiver_node.port, "INTRUDER", receiver_node.ae_title) == (1, 1, 3)


def test_wrong_called_ae_is_rejected(receiver_node: RunningNode, tmp_path: Path) -> None:
    sent = make_ct(tmp_path / "ct.dcm")
    result = run_storescu([sent], receiver_node.port, called_ae="NOT-THE-NODE")
    assert result.returncode != 0
    assert receiver_node.files() == []
    # called AE title not recognised
    assert _reject_reason(receiver_node.port, "STORESCU", "NOT-THE-NODE") == (1, 1, 7)


def test_empty_allow_list_admits_nobody(tmp_path: Path) -> None:
    running = RunningNode(tmp_path, security__allowed_calling_aets="")
    try:
        result = run_echoscu(running.port, calling_ae="ECHOSCU", called_ae=running.ae_title)
        assert result.returncode != 0
    finally:
        running.close()


def test_destination_ae_titles_may_not_send_unless_allowed(tmp_path: Path) -> None:
    """A destination's AE title is where results go, not a credential to send (issue 11):
    only [security] allowed_calling_aets admits a calling AE."""
    running = RunningNode(
        tmp_path,
        security__allowed_calling_aets="ECHOSCU",
        destinations__pacs="MYPACS@127.0.0.1:4242",
    )
    try:
        result = run_echoscu(running.port, calling_ae="MYPACS", called_ae=running.ae_title)
        assert result.returncode != 0, result.stderr + result.stdout
        assert "Calling AE Title Not Recognized" in result.stderr + result.stdout
        allowed = run_echoscu(running.port, calling_ae="ECHOSCU", called_ae=running.ae_title)
        assert allowed.returncode == 0, allowed.stderr + allowed.stdout
    finally:
        running.close()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("element", ["sop_uid", "study_uid", "series_uid"])
def test_uid_with_path_traversal_is_refused(
    receiver_node: RunningNode, tmp_path: Path, element: str
) -> None:
    bad = make_ct(tmp_path / "bad.dcm", **{element: "1.2.3/../../../escape"})
    result = run_storescu(
        [bad], receiver_node.port, called_ae=receiver_node.ae_title, extra_args=["-v"]
    )
    output = result.stderr + result.stdout
    assert "Error: CannotUnderstand" in output, output  # storescu names 0xC210 so
    assert receiver_node.files() == []
    assert receiver_node.stored == []
    assert list(receiver_node.store.incoming.iterdir()) == []
    # nothing was created next to the store either
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("index.sqlite")) == [
        "bad.dcm",
        "store",
    ]


def test_out_of_space_answers_a700_and_echo_still_works(tmp_path: Path) -> None:
    running = RunningNode(tmp_path, storage__min_free_mb=str(10**9))
    try:
        sent = make_ct(tmp_path / "ct.dcm")
        result = run_storescu([sent], running.port, called_ae=running.ae_title, extra_args=["-d"])
        output = (result.stderr + result.stdout).lower()
        assert "0xa700" in output, output
        assert running.files() == []
        assert running.stored == []
        echo = run_echoscu(running.port, calling_ae="ECHOSCU", called_ae=running.ae_title)
        assert echo.returncode == 0, echo.stderr + echo.stdout
    finally:
        running.close()


def test_disk_full_while_the_data_is_synced_answers_a700(
    receiver_node: RunningNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The streamed file's data is synced while the header is read (storage.data_sync); the
    disk filling then is Out of Resources, and nothing is stored."""
    import errno

    import storage.data_sync as data_sync

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_sync.os, "fdatasync", full)
    sent = make_ct(tmp_path / "ct.dcm")
    result = run_storescu(
        [sent], receiver_node.port, called_ae=receiver_node.ae_title, extra_args=["-d"]
    )
    output = (result.stderr + result.stdout).lower()
    assert "0xa700" in output, output
    assert receiver_node.files() == [] and receiver_node.stored == []
    assert list(receiver_node.store.incoming.iterdir()) == []


def _calls_of(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Path]:
    """The paths `module.name(path)` is called with from now on (it still runs)."""
    calls: list[Path] = []
    real = getattr(module, name)

    def recording(path: Path) -> Any:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(module, name, recording)
    return calls


@pytest.mark.parametrize("one_fsync", [True, False], ids=["journaled-link", "folder-fsync"])
def test_data_is_synced_early_only_while_one_association_is_open(
    receiver_node: RunningNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_fsync: bool
) -> None:
    """Alone on the node, each instance's data sync starts as its last fragment lands (on any
    file system); with another association open, the commit flushes as it does without one."""
    from scp_node.dicom.pynetdicom_adapter import streaming

    started = _calls_of(monkeypatch, streaming, "DataSync")
    monkeypatch.setattr(receiver_node.store, "one_fsync", one_fsync)  # whatever /tmp is
    first = make_ct(tmp_path / "first.dcm")
    result = run_storescu([first], receiver_node.port, called_ae=receiver_node.ae_title)
    assert result.returncode == 0, result.stderr + result.stdout
    assert len(started) == 1
    other = AE(ae_title="STORESCU")
    other.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    held = other.associate("127.0.0.1", receiver_node.port, ae_title=receiver_node.ae_title)
    assert held.is_established
    try:
        second = make_ct(tmp_path / "second.dcm")
        result = run_storescu([second], receiver_node.port, called_ae=receiver_node.ae_title)
        assert result.returncode == 0, result.stderr + result.stdout
    finally:
        held.release()
    assert len(started) == 1
    assert len(receiver_node.stored) == 2


def test_header_is_read_while_streaming_and_from_the_file_when_it_does_not_fit(
    receiver_node: RunningNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header comes from the first bytes while the dataset streams; a header longer than
    the scan (a 70 KB private element before Patient ID) is read from the file instead."""
    import scp_node.receive.receiver as receiver_module

    read_from_file = _calls_of(monkeypatch, receiver_module, "_read_header")
    plain = make_ct(tmp_path / "plain.dcm", size=256)
    long_header = make_ct(tmp_path / "long.dcm", size=256)
    ds = dcmread(long_header)
    ds.add_new(0x00090010, "LO", "LUNGNODE TEST")
    ds.add_new(0x00091010, "OB", bytes(70_000))
    ds.save_as(long_header, enforce_file_format=True)
    for path, expected_reads in ((plain, 0), (long_header, 1)):
        result = run_storescu([path], receiver_node.port, called_ae=receiver_node.ae_title)
        assert result.returncode == 0, result.stderr + result.stdout
        assert len(read_from_file) == expected_reads, path.name
    assert receiver_node.stored == [dcmread(p).SOPInstanceUID for p in (plain, long_header)]
    (row,) = receiver_node.index.status()["studies"]
    assert row["instances"] == 2


def test_unsupported_sop_class_is_not_accepted(receiver_node: RunningNode, tmp_path: Path) -> None:
    sent = make_ct(tmp_path / "mr.dcm")
    ds = dcmread(sent)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR
    ds.save_as(sent, enforce_file_format=True)
    result = run_storescu([sent], receiver_node.port, called_ae=receiver_node.ae_title)
    assert result.returncode != 0
    assert receiver_node.files() == []


def test_accepted_contexts_match_the_tables(receiver_node: RunningNode) -> None:
    supported = {
        cx.abstract_syntax: set(cx.transfer_syntax)
        for cx in receiver_node.receiver.ae.supported_contexts
    }
    for uid in STORAGE_SOP_CLASSES.values():
        assert supported[uid] == set(TRANSFER_SYNTAXES.values())
    # and the Storage Commitment Push Model, for destinations' reports (storage_commitment.py)
    assert set(supported) == set(STORAGE_SOP_CLASSES.values()) | {
        "1.2.840.10008.1.1",
        "1.2.840.10008.1.20.1",
    }
    assert receiver_node.receiver.ae.maximum_pdu_size == receiver_node.config.node.max_pdu_length


def test_stopped_receiver_refuses_connections(tmp_path: Path) -> None:
    running = RunningNode(tmp_path)
    port = running.port
    running.close()
    result = run_echoscu(port, calling_ae="ECHOSCU", called_ae=running.ae_title, timeout=20)
    assert result.returncode != 0


def test_index_failure_answers_processing_failure_and_resend_recovers(tmp_path: Path) -> None:
    sent = make_ct(tmp_path / "ct.dcm")
    broken = RunningNode(tmp_path)
    try:
        broken.database.close()  # the index is unavailable
        result = run_storescu([sent], broken.port, called_ae=broken.ae_title, extra_args=["-d"])
        assert "0x0110" in (result.stderr + result.stdout).lower(), result.stderr + result.stdout
        assert broken.stored == []
    finally:
        broken.receiver.stop(grace_seconds=2)
    # the index is back (same store and database): the peer's resend is indexed although the
    # file already reached the store the first time
    running = RunningNode(tmp_path)
    try:
        result = run_storescu([sent], running.port, called_ae=running.ae_title)
        assert result.returncode == 0, result.stderr + result.stdout
        assert len(running.index.study_files("1.2.826.0.1.3680043.8.498.1").paths) == 1
        assert len(running.files()) == 1
    finally:
        running.close()


# --- lazy index rows and their recovery ---------------------------------------------------


def test_store_file_missing_from_the_index_is_indexed_at_start(tmp_path: Path) -> None:
    """A power cut may lose lazily committed index rows, never the fsynced file: at start the
    receiver indexes any store file the index lacks, with the sender's AE title."""
    store = InstanceStore(tmp_path / "store", 0)
    study, series = "1.2.826.0.1.3680043.8.498.77", "1.2.826.0.1.3680043.8.498.77.1"
    source = make_ct(tmp_path / "lost.dcm", study_uid=study, series_uid=series)
    sop_uid = str(dcmread(source).SOPInstanceUID)
    temp = store.temp_path()
    shutil.copyfile(source, temp)
    remember_calling_aet(temp, "SCANNER")
    store.commit(temp, study, series, sop_uid)  # durable in the store, never indexed
    # the node's own result objects (SR/SEG classes it never receives) are not re-indexed
    sr = Dataset()
    sr.SOPClassUID, sr.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.34", generate_uid()
    sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.Modality = study, generate_uid(), "SR"
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    store.write_dataset(sr)

    running = RunningNode(tmp_path)
    try:
        files = running.index.study_files(study)
        assert [p.name for p in files.paths] == [f"{sop_uid}.dcm"]
        assert running.index.status()["studies"][0]["instances"] == 1
        row = running.database.run(
            lambda cur: cur.execute("SELECT source_aet FROM studies").fetchone(), write=False
        )
        assert row == ("SCANNER",)
    finally:
        running.close()
    # recovery only reads the store: both files are intact, byte for byte
    assert store.path_for(study, series, sop_uid).read_bytes() == source.read_bytes()
    assert dcmread(store.path_for(study, sr.SeriesInstanceUID, sr.SOPInstanceUID)).Modality == "SR"
    # the mark beside the database now excludes the file: the next start scans nothing old
    mark = read_mark(tmp_path / "index.sqlite.durable-through")
    assert mark is not None and mark > time.time() - 60


def test_instance_rows_are_lazy_between_durable_commits(tmp_path: Path) -> None:
    """Rows inside lazy_commits use synchronous=NORMAL; every other commit stays FULL, and a
    durable row moves the mark to no later than the start of any commit still in flight."""
    database = Database.connect(f"sqlite:///{tmp_path / 'index.sqlite'}")
    index = Index(database)
    store = InstanceStore(tmp_path / "store", 0)
    indexing = LazyIndexing(store, index)
    modes: list[int] = []

    def record(n: int) -> None:
        rec = InstanceRecord(
            study_uid="1.2.3",
            series_uid="1.2.3.4",
            sop_uid=f"1.2.3.4.{n}",
            sop_class_uid=CT_IMAGE_STORAGE,
            modality="CT",
            path=tmp_path / f"{n}.dcm",
            calling_aet="PACS",
            received_at=time.time(),
        )
        with indexing.committing():
            indexing.record(rec, None)
        assert database._sqlite is not None
        modes.append(database._sqlite.execute("PRAGMA synchronous").fetchone()[0])

    try:
        before = time.time()
        record(1)  # the first row is durable: it starts the clock
        first_mark = read_mark(indexing.mark_path)
        record(2)  # within DURABLE_EVERY_SECONDS: lazy
        assert modes == [2, 1]  # FULL, then NORMAL
        assert first_mark is not None and before <= first_mark <= time.time()
        with database.transaction() as cur:  # any other commit is FULL again
            assert cur.execute("PRAGMA synchronous").fetchone()[0] == 2
        with indexing.committing():  # an instance in flight holds the mark back
            held = time.time()
            indexing.make_durable()
        assert read_mark(indexing.mark_path) == pytest.approx(held, abs=0.05)
        indexing.make_durable()
        assert read_mark(indexing.mark_path) >= held  # type: ignore[operator]
    finally:
        database.close()
