"""What a client certificate proves (issue 11, items 2 and 7): with [security]
tls_client_ae_titles, a certificate may present only the AE titles mapped to its subject, and
every association's audit names the certificate subject."""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from audit_reading import audit_events
from dcmtk import run_echoscu
from in_process import RunningNode
from pynetdicom import AE
from tls_certificates import Certificates, dcmtk_tls, tls_overrides

from scp_node.app.check_config import echo
from scp_node.config import ConfigError, Destination, load_config
from scp_node.dicom.tls import client_context, server_context


@pytest.fixture
def mapped_node(tmp_path: Path, certs: Certificates) -> Iterator[RunningNode]:
    running = RunningNode(
        tmp_path,
        **tls_overrides(
            certs,
            security__allowed_calling_aets="STORESCU,ECHOSCU,CT1",
            # the peer certificate may be STORESCU only; the node's own certificate CT1
            security__tls_client_ae_titles=(
                "CN=peer,O=lungnode tests => STORESCU; O=lungnode tests,CN=node => CT1"
            ),
        ),
    )
    yield running
    running.close()


def _audit(node: RunningNode) -> list[dict[str, object]]:
    return audit_events(node.config.security.audit_log)


def test_certificate_may_present_only_its_mapped_ae_titles(
    mapped_node: RunningNode,
    certs: Certificates,
) -> None:
    peer = dcmtk_tls(certs.peer_key, certs.peer_cert, certs.ca)
    node_cert = dcmtk_tls(certs.node_key, certs.node_cert, certs.ca)
    port = mapped_node.port
    own = run_echoscu(port, calling_ae="STORESCU", called_ae="LUNGNODE", extra_args=peer)
    assert own.returncode == 0, own.stderr + own.stdout
    for calling, tls in (("ECHOSCU", peer), ("CT1", peer), ("STORESCU", node_cert)):
        other = run_echoscu(port, calling_ae=calling, called_ae="LUNGNODE", extra_args=tls)
        assert other.returncode != 0, f"a certificate presented {calling}, not mapped to it"
        assert "Calling AE Title Not Recognized" in other.stderr + other.stdout
    events = _audit(mapped_node)
    accepted = [e for e in events if e["Event"] == "association-accepted"]
    rejected = [e for e in events if e["Event"] == "association-rejected"]
    assert [e["CertificateSubject"] for e in accepted] == ["O=lungnode tests,CN=peer"]
    assert [(e["CallingAETitle"], e["CertificateSubject"]) for e in rejected] == [
        ("ECHOSCU", "O=lungnode tests,CN=peer"),
        ("CT1", "O=lungnode tests,CN=peer"),
        ("STORESCU", "O=lungnode tests,CN=node"),
    ]
    for event in rejected:
        assert "tls_client_ae_titles" in str(event["EventOutcomeDescription"])
        assert event["EventID"]["displayName"] == "Security Alert"  # type: ignore[index]


def test_without_a_mapping_the_subject_is_still_audited(
    tmp_path: Path,
    certs: Certificates,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="lungnode.receiver"):
        running = RunningNode(tmp_path, **tls_overrides(certs))
    assert "tls_client_ae_titles is empty" in caplog.text  # said at start-up
    try:
        tls = dcmtk_tls(certs.peer_key, certs.peer_cert, certs.ca)
        echo = run_echoscu(running.port, calling_ae="ECHOSCU", called_ae="LUNGNODE", extra_args=tls)
        assert echo.returncode == 0, echo.stderr + echo.stdout
        (accepted,) = [e for e in _audit(running) if e["Event"] == "association-accepted"]
        assert accepted["CertificateSubject"] == "O=lungnode tests,CN=peer"
    finally:
        running.close()


# --- item 7: cipher suites, host name check and pinning on the sending side ----------------

VERIFICATION = "1.2.840.10008.1.1"


def _handshake(port: int, context: ssl.SSLContext) -> tuple[str, str] | None:
    """(version, cipher) of a TLS handshake with the node, or None when it fails."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            cipher = tls.cipher()
            return str(tls.version()), cipher[0] if cipher else ""
    except (ssl.SSLError, OSError):
        return None


def _peer_client(certs: Certificates) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(certs.ca))
    context.load_cert_chain(str(certs.peer_cert), str(certs.peer_key))
    return context


def test_only_aead_suites_on_tls_1_2_and_tls_1_3_preferred(
    tmp_path: Path,
    certs: Certificates,
) -> None:
    running = RunningNode(tmp_path, **tls_overrides(certs))
    try:
        context = server_context(running.config.security)
        assert context is not None
        tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12 and all(c["aead"] for c in tls12), [c["name"] for c in tls12]
        assert all("CBC" not in c["description"] for c in tls12)
        default = _handshake(running.port, _peer_client(certs))
        assert default is not None and default[0] == "TLSv1.3", default
        cbc = _peer_client(certs)
        cbc.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc.set_ciphers("ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA384:AES128-SHA")
        assert _handshake(running.port, cbc) is None, "a CBC suite was accepted on TLS 1.2"
        gcm = _peer_client(certs)
        gcm.maximum_version = ssl.TLSVersion.TLSv1_2
        gcm.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
        assert _handshake(running.port, gcm) == ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")
    finally:
        running.close()


def _echo_as_sender(port: int, context: ssl.SSLContext, host: str) -> bool:
    ae = AE(ae_title="LUNGNODE")
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="LUNGNODE", tls_args=(context, host))
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def test_destination_host_name_check_and_certificate_pinning(
    tmp_path: Path,
    certs: Certificates,
) -> None:
    running = RunningNode(
        tmp_path,
        **tls_overrides(certs, security__allowed_calling_aets="LUNGNODE"),
    )
    try:
        pem = certs.node_cert.read_text()
        right = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
        security = running.config.security

        def context(**options: object) -> ssl.SSLContext:
            destination = Destination("pacs", "LUNGNODE", "127.0.0.1", running.port, True)
            return client_context(security, replace(destination, **options))  # type: ignore[arg-type]

        port = running.port
        assert _echo_as_sender(port, context(), "other.example"), "no check unless asked"
        assert _echo_as_sender(port, context(tls_verify_hostname=True), "localhost")
        assert not _echo_as_sender(port, context(tls_verify_hostname=True), "other.example")
        assert _echo_as_sender(port, context(tls_pin_sha256=right), "127.0.0.1")
        assert not _echo_as_sender(port, context(tls_pin_sha256="0" * 64), "127.0.0.1")
        # check-config's C-ECHO uses the destination's own pin and host-name check, as the sender
        config = running.config

        def checked(**options: object) -> str | None:
            destination = Destination("pacs", "LUNGNODE", "127.0.0.1", running.port, True)
            return echo(config, replace(destination, **options), 5)  # type: ignore[arg-type]

        assert checked(tls_pin_sha256=right) is None
        assert checked(tls_pin_sha256="0" * 64) is not None, "a wrong pin must fail the echo"
        assert checked(host="localhost", tls_verify_hostname=True) is None
        colons = ":".join(right[i : i + 2] for i in range(0, 64, 2))  # as openssl prints it
        with pytest.raises(ConfigError, match="sha256="):
            load_config(None, {"LUNGNODE__DESTINATIONS__PACS": "P@h:104 tls sha256=abc"})
        config = load_config(
            None,
            {
                "LUNGNODE__SECURITY__TLS_CA_CERTIFICATES": str(certs.ca),
                "LUNGNODE__DESTINATIONS__PACS": f"P@h:104 tls verify_hostname sha256={colons}",
            },
        )
        pacs = config.destination("pacs")
        assert (
            pacs is not None
            and pacs.tls
            and pacs.tls_verify_hostname
            and pacs.tls_pin_sha256 == right
        )
    finally:
        running.close()
