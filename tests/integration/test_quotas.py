"""Quotas of the receiver (issue 11, item 8), against a running receiver: a dataset growing past
[storage] max_instance_mb or streaming while free space falls below min_free_mb is stopped
while it streams and refused 0xA700; a calling AE beyond [security] max_new_studies_per_hour
is refused 0xA700 and audited as a Security Alert."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from audit_reading import audit_events
from in_process import CT_IMAGE_STORAGE, RunningNode, make_ct
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dul import DULServiceProvider

from scp_node.dicom.pynetdicom_adapter import streaming
from scp_node.dicom.status import OUT_OF_RESOURCES, SUCCESS


def _send(node: RunningNode, paths: list[Path], calling: str = "STORESCU") -> list[int]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def _audit(node: RunningNode) -> list[dict[str, Any]]:
    return audit_events(node.config.security.audit_log)


def test_instance_larger_than_max_instance_mb_is_refused_while_streaming(tmp_path: Path) -> None:
    node = RunningNode(tmp_path, storage__max_instance_mb=1)
    try:
        big = make_ct(tmp_path / "big.dcm", size=1024)  # 2 MiB of pixels
        small = make_ct(tmp_path / "small.dcm")
        assert _send(node, [big, small]) == [OUT_OF_RESOURCES, SUCCESS]
        assert len(node.files()) == 1
        assert list(node.store.incoming.iterdir()) == []
        (refused,) = [e for e in _audit(node) if e["Event"] == "instance-refused"]
        assert "max_instance_mb" in refused["EventOutcomeDescription"]
    finally:
        node.close()


def test_free_space_is_checked_while_the_dataset_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = RunningNode(tmp_path, storage__min_free_mb=1)
    real = shutil.disk_usage
    calls: list[str] = []

    def disk_usage(path: Any) -> Any:
        usage = real(path)
        if isinstance(threading.current_thread(), DULServiceProvider):  # the streaming check
            calls.append(str(path))
            return usage._replace(free=0)
        return usage

    monkeypatch.setattr(streaming.shutil, "disk_usage", disk_usage)
    try:
        big = make_ct(tmp_path / "big.dcm", size=1024)
        assert _send(node, [big]) == [OUT_OF_RESOURCES]
        assert calls, "free space was not checked while the dataset streamed"
        assert node.files() == [] and list(node.store.incoming.iterdir()) == []
        (refused,) = [e for e in _audit(node) if e["Event"] == "instance-refused"]
        assert "while the dataset was received" in refused["EventOutcomeDescription"]
    finally:
        node.close()


def test_new_studies_per_hour_per_calling_ae(tmp_path: Path) -> None:
    node = RunningNode(tmp_path, security__max_new_studies_per_hour=2)
    try:
        studies = [generate_uid() for _ in range(3)]
        files = [make_ct(tmp_path / f"{n}.dcm", study_uid=uid) for n, uid in enumerate(studies)]
        again = make_ct(tmp_path / "again.dcm", study_uid=studies[0])
        assert _send(node, [*files, again]) == [SUCCESS, SUCCESS, OUT_OF_RESOURCES, SUCCESS]
        assert _send(node, [files[2]], calling="ECHOSCU") == [SUCCESS], "another AE's quota"
        (alert,) = [e for e in _audit(node) if e["Event"] == "study-quota-exceeded"]
        assert alert["EventID"]["displayName"] == "Security Alert"
        assert alert["CallingAETitle"] == "STORESCU" and alert["StudyInstanceUID"] == studies[2]
        assert alert["Peer"].startswith("127.0.0.1:")
    finally:
        node.close()
