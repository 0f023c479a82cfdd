"""DICOMweb destinations: results by STOW-RS to the real Orthanc with its DICOMweb plugin
(Debian orthanc-dicomweb), over HTTP on loopback with basic auth and over HTTPS with the test CA
(TLS terminated in front of Orthanc, see tests/support/tls_forwarder.py), through the same outbox as
DIMSE destinations."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from in_process import BASIC_TEXT_SR, NOW, Outbox, result_dataset, sender_config
from orthanc import (
    DICOMWEB_PASSWORD,
    DICOMWEB_USER,
    Orthanc,
    dicomweb_config,
    require_dicomweb,
)
from ports import free_port
from tls_certificates import Certificates
from tls_forwarder import TlsForwarder

from scp_node.config import ConfigError
from scp_node.pipeline.dicomweb_sender import session_for
from scp_node.pipeline.sender import Sender

USER, PASSWORD = DICOMWEB_USER, DICOMWEB_PASSWORD


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    require_dicomweb()
    with Orthanc(
        tmp_path / "orthanc", extra_config=dicomweb_config(), rest_auth=(USER, PASSWORD)
    ) as pacs:
        yield pacs


def outbox_to(tmp_path: Path, line: str, **overrides: object) -> Outbox:
    return Outbox(tmp_path, sender_config(tmp_path, 104, destinations__pacs=line, **overrides))


def stored_sop_uids(orthanc: Orthanc) -> set[str]:
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("/instances?expand")}


def test_results_are_stored_by_stow_rs_with_basic_auth(tmp_path: Path, orthanc: Orthanc) -> None:
    box = outbox_to(tmp_path, f"{orthanc.url}/dicom-web basic={USER}:{PASSWORD}")
    try:
        datasets = box.add_results([result_dataset(BASIC_TEXT_SR) for _ in range(3)])
        assert Sender(box.config, box.index).deliver_due(NOW) == 3
        assert {r["state"] for r in box.index.status()["outbox"]} == {"SENT"}
        assert box.study_state() == "DELIVERED"
        assert stored_sop_uids(orthanc) == {str(ds.SOPInstanceUID) for ds in datasets}
    finally:
        box.database.close()


def test_wrong_password_is_retried_with_a_hint(tmp_path: Path, orthanc: Orthanc) -> None:
    box = outbox_to(tmp_path, f"{orthanc.url}/dicom-web basic={USER}:wrong")
    try:
        box.add_result()
        Sender(box.config, box.index).deliver_due(NOW)
        row = box.row()
        assert row["state"] == "PENDING" and row["attempts"] == 1, row
        assert "HTTP 401" in str(row["last_error"]) and "basic=" in str(row["last_error"])
        assert "wrong" not in str(row["last_error"])
        assert stored_sop_uids(orthanc) == set()
    finally:
        box.database.close()


def test_a_path_that_is_no_dicomweb_service_is_a_dead_letter(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    box = outbox_to(tmp_path, f"{orthanc.url}/no-such-service basic={USER}:{PASSWORD}")
    try:
        box.add_result()
        Sender(box.config, box.index).deliver_due(NOW)
        row = box.row()
        assert row["state"] == "DEAD" and "HTTP 404" in str(row["last_error"]), row
    finally:
        box.database.close()


def test_service_not_listening_is_retried(tmp_path: Path) -> None:
    box = outbox_to(tmp_path, f"http://127.0.0.1:{free_port()}/dicom-web")
    try:
        box.add_result()
        Sender(box.config, box.index).deliver_due(NOW)
        row = box.row()
        assert row["state"] == "PENDING" and row["attempts"] == 1, row
        assert "STOW-RS" in str(row["last_error"]) and "refused" in str(row["last_error"])
        assert len(box.index.due_outbox(NOW + 126)) == 1, "backoff as for C-STORE"
    finally:
        box.database.close()


# --- HTTPS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpsPacs:
    """Orthanc with DICOMweb behind a TLS forwarder (tests/support/tls_forwarder.py says why)."""

    orthanc: Orthanc
    url: str  # https://127.0.0.1:<port>, served with the test CA's peer certificate


@pytest.fixture
def https_pacs(orthanc: Orthanc, certs: Certificates) -> Iterator[HttpsPacs]:
    with TlsForwarder(certs.peer_cert, certs.peer_key, orthanc.http_port) as forwarder:
        yield HttpsPacs(orthanc, f"https://127.0.0.1:{forwarder.port}")


def _https_box(tmp_path: Path, pacs: HttpsPacs, ca: Path, options: str = "") -> Outbox:
    return outbox_to(
        tmp_path,
        f"{pacs.url}/dicom-web basic={USER}:{PASSWORD} {options}".strip(),
        security__tls_ca_certificates=ca,
    )


@pytest.mark.parametrize("options", ["", "verify_hostname", "pin"])
def test_https_destination_trusts_the_configured_ca(
    tmp_path: Path, https_pacs: HttpsPacs, certs: Certificates, options: str
) -> None:
    if options == "pin":
        der = ssl.PEM_cert_to_DER_cert(certs.peer_cert.read_text())
        options = f"sha256={hashlib.sha256(der).hexdigest()}"
    box = _https_box(tmp_path, https_pacs, certs.ca, options)
    try:
        (ds,) = box.add_results([result_dataset(BASIC_TEXT_SR)])
        Sender(box.config, box.index).deliver_due(NOW)
        assert box.row()["state"] == "SENT", box.row()
        assert stored_sop_uids(https_pacs.orthanc) == {str(ds.SOPInstanceUID)}
    finally:
        box.database.close()


@pytest.mark.parametrize(
    ("pin", "trusted", "words"),
    [("ab" * 32, "ca", "pinned"), ("", "rogue_ca", "CERTIFICATE_VERIFY_FAILED")],
)
def test_https_certificate_not_trusted_is_retried(
    tmp_path: Path,
    https_pacs: HttpsPacs,
    certs: Certificates,
    pin: str,
    trusted: str,
    words: str,
) -> None:
    options = f"sha256={pin}" if pin else ""
    box = _https_box(tmp_path, https_pacs, getattr(certs, trusted), options)
    try:
        box.add_result()
        Sender(box.config, box.index).deliver_due(NOW)
        row = box.row()
        assert row["state"] == "PENDING" and words in str(row["last_error"]), row
        assert stored_sop_uids(https_pacs.orthanc) == set()
    finally:
        box.database.close()


# --- configuration ---------------------------------------------------------------------------


def test_dicomweb_line_is_parsed_and_its_secrets_never_shown(tmp_path: Path) -> None:
    line = "https://pacs.example:8443/dicom-web/ bearer=tok.en-1 verify_hostname ae_title=PACS"
    config = sender_config(tmp_path, 104, destinations__pacs=line)
    pacs = config.destinations["pacs"]
    assert (pacs.url, pacs.host, pacs.port, pacs.ae_title) == (
        "https://pacs.example:8443/dicom-web",
        "pacs.example",
        8443,
        "PACS",
    )
    assert pacs.protocol == "DICOMweb" and pacs.tls_verify_hostname
    assert "tok.en-1" not in str(pacs) + repr(pacs)
    session = session_for(config, pacs)
    assert session.headers["Authorization"] == "Bearer tok.en-1"
    assert not session.trust_env

    bad = {
        "http://pacs.example/dicom-web bearer=secret1": "https://",
        "https://pacs.example/dicom-web basic=nopassword": "basic=USER:PASSWORD",
        "https://pacs.example/dicom-web bearer=secret1 basic=a:secret2": "DICOMweb base URL",
        "https://pacs.example/dicom-web?x=1": "DICOMweb base URL",
        "https://pacs.example/dicom-web sha256=12": "64 hex digits",
    }
    for value, words in bad.items():
        with pytest.raises(ConfigError, match=words) as info:
            sender_config(tmp_path, 104, destinations__pacs=value)
        assert "secret" not in str(info.value), info.value


def test_check_config_probes_a_dicomweb_destination(tmp_path: Path, orthanc: Orthanc) -> None:
    from scp_node.app.check_config import echo

    good = sender_config(
        tmp_path, 104, destinations__pacs=f"{orthanc.url}/dicom-web basic={USER}:{PASSWORD}"
    )
    assert echo(good, good.destinations["pacs"], 5) is None
    bad = sender_config(tmp_path, 104, destinations__pacs=f"{orthanc.url}/dicom-web")
    assert echo(bad, bad.destinations["pacs"], 5) == "QIDO-RS answered HTTP 401"
