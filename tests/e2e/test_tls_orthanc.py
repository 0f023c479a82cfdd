"""DICOM TLS between the node and Orthanc with DicomTlsEnabled, both ways, on loopback with
throw-away certificates (support/tls_certificates.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from in_process import NOW, Outbox, RunningNode, make_ct, sender_config
from orthanc import Orthanc, require_orthanc
from pydicom import dcmread
from tls_certificates import Certificates, tls_outbox, tls_overrides

from scp_node.pipeline.sender import Sender


class TlsOrthanc(Orthanc):
    """Orthanc whose DICOM port speaks TLS only and which reaches `tls_modalities` over TLS."""

    def __init__(
        self, workdir: Path, certs: Certificates, tls_modalities: dict[str, tuple[str, int]]
    ) -> None:
        super().__init__(workdir)
        self.certs = certs
        self.tls_modalities = tls_modalities

    def _write_config(self) -> Path:
        path = super()._write_config()
        config = json.loads(path.read_text())
        config.update(
            {
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(self.certs.peer_cert),
                "DicomTlsPrivateKey": str(self.certs.peer_key),
                "DicomTlsTrustedCertificates": str(self.certs.ca),
                "DicomTlsRemoteCertificateRequired": True,
            }
        )
        config["DicomModalities"].update(
            {
                name: {"AET": ae, "Host": "127.0.0.1", "Port": port, "UseDicomTls": True}
                for name, (ae, port) in self.tls_modalities.items()
            }
        )
        path.write_text(json.dumps(config, indent=2))
        return path


@dataclass
class OrthancAndNode:
    orthanc: TlsOrthanc
    node: RunningNode
    workdir: Path


@pytest.fixture(scope="module")
def orthanc_and_node(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[OrthancAndNode]:
    require_orthanc()
    workdir = tmp_path_factory.mktemp("orthanc-tls")
    node = RunningNode(
        workdir / "node",
        **tls_overrides(certs, security__allowed_calling_aets="ORTHANC"),
    )
    orthanc = TlsOrthanc(workdir / "orthanc", certs, {"lungnode": ("LUNGNODE", node.port)})
    try:
        orthanc.start()  # Orthanc is installed (TlsOrthanc skips otherwise): failing is loud
    except BaseException:
        node.close()
        raise
    try:
        yield OrthancAndNode(orthanc, node, workdir)
    finally:
        orthanc.stop()
        node.close()


@pytest.mark.slow
def test_orthanc_pushes_a_study_to_the_node_over_tls(orthanc_and_node: OrthancAndNode) -> None:
    orthanc, node = orthanc_and_node.orthanc, orthanc_and_node.node
    study_uid = "1.2.826.0.1.3680043.8.498.31"
    sent = [make_ct(orthanc_and_node.workdir / f"ct{i}.dcm", study_uid=study_uid) for i in range(2)]
    for path in sent:
        orthanc.upload(path)
    orthanc.store_study_to("lungnode", study_uid)
    assert sorted(node.stored) == sorted(str(dcmread(p).SOPInstanceUID) for p in sent)


@pytest.mark.slow
def test_node_sends_its_result_to_orthanc_over_tls(
    orthanc_and_node: OrthancAndNode, certs: Certificates
) -> None:
    orthanc = orthanc_and_node.orthanc
    box = tls_outbox(orthanc_and_node.workdir / "sender", certs, orthanc.dicom_port, ae=orthanc.aet)
    try:
        ds = box.add_result()
        assert Sender(box.config, box.index).deliver_due(NOW) == 1
        assert box.row()["state"] == "SENT", box.row()
    finally:
        box.database.close()
    found = orthanc.request("POST", "/tools/lookup", str(ds.SOPInstanceUID).encode(), "text/plain")
    assert [item["Type"] for item in found] == ["Instance"], found


@pytest.mark.slow
def test_orthanc_refuses_a_node_certificate_it_does_not_trust(
    orthanc_and_node: OrthancAndNode, certs: Certificates
) -> None:
    """The node presenting a certificate from another CA is refused by Orthanc (transient)."""
    orthanc = orthanc_and_node.orthanc
    workdir = orthanc_and_node.workdir / "rogue-sender"
    overrides = tls_overrides(
        certs,
        security__tls_certificate=str(certs.rogue_cert),
        security__tls_private_key=str(certs.rogue_key),
        destinations__pacs=f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port} tls",
    )
    workdir.mkdir()
    box = Outbox(workdir, sender_config(workdir, orthanc.dicom_port, **overrides))
    try:
        box.add_result()
        Sender(box.config, box.index).deliver_due(NOW)
        row = box.row()
        assert row["state"] == "PENDING" and row["attempts"] == 1, row
    finally:
        box.database.close()
