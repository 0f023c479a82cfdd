"""DICOM TLS on the node's SCP and SCU (in process), against real DCMTK (echoscu, storescu,
storescp), on loopback with throw-away certificates (support/tls_certificates.py); against
Orthanc with DicomTlsEnabled: e2e/test_tls_orthanc.py.

SCP cases (the ones Orthanc's own DICOM TLS tests cover): no client certificate, a trusted
client, an untrusted client (another CA), a client pinning the wrong server CA, plain TCP;
and a client that never finishes its handshake must not hold up anybody else.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from audit_reading import audit_events
from dcmtk import StorescpServer, run_echoscu, run_storescu
from in_process import NOW, RunningNode, make_ct, sender_config
from pydicom import dcmread
from pynetdicom import AE
from tls_certificates import Certificates, dcmtk_tls, tls_outbox, tls_overrides
from waiting import wait_until

from scp_node.config import ConfigError
from scp_node.dicom.tls import client_context, server_context
from scp_node.pipeline.sender import Sender

VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture
def tls_node(tmp_path: Path, certs: Certificates) -> Iterator[RunningNode]:
    running = RunningNode(tmp_path, **tls_overrides(certs))
    yield running
    running.close()


def _pynetdicom_echo(port: int, context: ssl.SSLContext) -> bool:
    """True when a pynetdicom C-ECHO over TLS with `context` succeeds."""
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="LUNGNODE", tls_args=(context, "127.0.0.1"))
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return "Status" in status and int(status.Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()


def _client(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _tls_alerts(node: RunningNode, at_least: int) -> list[dict[str, object]]:
    """The audit log's Security Alerts for TLS connections closed before DICOM.

    Waits for `at_least` of them: the node writes its line after the peer has already seen
    the handshake fail.
    """
    path = node.config.security.audit_log
    assert path is not None

    def alerts() -> list[dict[str, object]]:
        found = [
            e
            for e in audit_events(path)
            if e.get("Event") == "association-rejected"
            and str(e.get("EventOutcomeDescription", "")).startswith("TLS handshake")
        ]
        return found if len(found) >= at_least else []

    return wait_until(alerts, timeout=10, what=f"{at_least} TLS Security Alerts in {path}")


# --- SCP: who gets in ------------------------------------------------------------------


def test_trusted_client_echoes_and_stores_over_tls(
    tls_node: RunningNode, certs: Certificates, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lungnode.tls")
    tls = dcmtk_tls(certs.peer_key, certs.peer_cert, certs.ca)
    echo = run_echoscu(tls_node.port, calling_ae="ECHOSCU", called_ae="LUNGNODE", extra_args=tls)
    assert echo.returncode == 0, echo.stderr + echo.stdout
    sent = make_ct(tmp_path / "ct.dcm")
    store = run_storescu([sent], tls_node.port, called_ae="LUNGNODE", extra_args=tls)
    assert store.returncode == 0, store.stderr + store.stdout
    assert tls_node.stored == [dcmread(sent).SOPInstanceUID]
    # pynetdicom as TLS client, with the node's own SCU context (its certificate is trusted)
    assert _pynetdicom_echo(tls_node.port, client_context(tls_node.config.security))
    done = [r.getMessage() for r in caplog.records if "TLS handshake done" in r.getMessage()]
    assert len(done) == 3, done
    assert "client_certificate=O=lungnode tests,CN=peer" in done[0], done
    assert "client_certificate=O=lungnode tests,CN=node" in done[2], done
    assert all("version=TLSv1.2" in line or "version=TLSv1.3" in line for line in done), done


def test_client_without_certificate_is_refused(tls_node: RunningNode, certs: Certificates) -> None:
    assert not _pynetdicom_echo(tls_node.port, _client(certs.ca))
    assert _pynetdicom_echo(tls_node.port, _client(certs.ca, certs.peer_cert, certs.peer_key))


def test_client_certificate_from_another_ca_is_refused(
    tls_node: RunningNode, certs: Certificates, tmp_path: Path
) -> None:
    tls = dcmtk_tls(certs.rogue_key, certs.rogue_cert, certs.ca)
    sent = make_ct(tmp_path / "ct.dcm")
    store = run_storescu([sent], tls_node.port, called_ae="LUNGNODE", extra_args=tls, timeout=30)
    assert store.returncode != 0, store.stdout
    assert tls_node.stored == []
    assert [p for p in tls_node.files() if p.suffix == ".dcm"] == []
    assert not _pynetdicom_echo(tls_node.port, _client(certs.ca, certs.rogue_cert, certs.rogue_key))
    # the node writes its audit line after the client has already seen the handshake fail
    alerts = _tls_alerts(tls_node, at_least=2)
    assert len(alerts) == 2, alerts
    assert all("certificate verify failed" in a["EventOutcomeDescription"] for a in alerts), alerts


def test_client_pinning_another_server_ca_fails(tls_node: RunningNode, certs: Certificates) -> None:
    tls = dcmtk_tls(certs.peer_key, certs.peer_cert, certs.rogue_ca)
    echo = run_echoscu(tls_node.port, calling_ae="ECHOSCU", called_ae="LUNGNODE", extra_args=tls)
    assert echo.returncode != 0, echo.stdout
    assert not _pynetdicom_echo(
        tls_node.port, _client(certs.rogue_ca, certs.peer_cert, certs.peer_key)
    )


def test_plain_tcp_is_refused_on_the_tls_port(tls_node: RunningNode) -> None:
    echo = run_echoscu(tls_node.port, calling_ae="ECHOSCU", called_ae="LUNGNODE", timeout=30)
    assert echo.returncode != 0, echo.stdout


def test_client_certificate_optional_when_not_required(tmp_path: Path, certs: Certificates) -> None:
    running = RunningNode(
        tmp_path, **tls_overrides(certs, security__tls_require_client_certificate="no")
    )
    try:
        assert _pynetdicom_echo(running.port, _client(certs.ca))
        # a certificate that is presented is still verified
        assert not _pynetdicom_echo(
            running.port, _client(certs.ca, certs.rogue_cert, certs.rogue_key)
        )
    finally:
        running.close()


def test_tls_1_2_client_is_served(tls_node: RunningNode, certs: Certificates) -> None:
    context = _client(certs.ca, certs.peer_cert, certs.peer_key)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _pynetdicom_echo(tls_node.port, context)


# --- SCP: a stalled handshake blocks nobody ------------------------------------------------


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the peer closes `sock` (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.slow
def test_stalled_handshake_does_not_block_other_associations(
    tmp_path: Path, certs: Certificates
) -> None:
    acse_timeout = 4.0
    running = RunningNode(tmp_path, **tls_overrides(certs, node__acse_timeout=str(acse_timeout)))
    tls = dcmtk_tls(certs.peer_key, certs.peer_cert, certs.ca)
    silent = socket.create_connection(("127.0.0.1", running.port))
    partial = socket.create_connection(("127.0.0.1", running.port))
    try:
        opened = time.monotonic()
        partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01")  # a ClientHello cut short
        echo = run_echoscu(
            running.port, calling_ae="ECHOSCU", called_ae="LUNGNODE", extra_args=tls, timeout=10
        )
        assert echo.returncode == 0, echo.stderr + echo.stdout
        assert time.monotonic() - opened < acse_timeout - 0.5  # not after the stalled ones
        for sock in (silent, partial):
            assert _closed_by_peer(sock, within=acse_timeout + 5)
        assert time.monotonic() - opened >= acse_timeout - 0.5  # closed by the deadline
        alerts = _tls_alerts(running, at_least=2)
        assert len(alerts) == 2 and all("within 4 s" in str(a) for a in alerts), alerts
        # shutting down does not wait for a handshake still pending (acse_timeout is 4 s)
        pending = socket.create_connection(("127.0.0.1", running.port))
        time.sleep(0.2)
        started = time.monotonic()
        running.close()
        assert time.monotonic() - started < 2.0
        assert _closed_by_peer(pending, within=2)
        pending.close()
    finally:
        silent.close()
        partial.close()
        running.close()


# --- configuration errors ------------------------------------------------------------------


def test_tls_configuration_errors_name_the_key(
    free_port: Callable[[], int], tmp_path: Path, certs: Certificates
) -> None:
    port = free_port()
    no_ca = sender_config(
        tmp_path, port, **tls_overrides(certs, security__tls_ca_certificates="")
    ).security
    with pytest.raises(ConfigError, match=r"\[security\] tls_ca_certificates"):
        server_context(no_ca)
    wrong_key = sender_config(
        tmp_path, port, **tls_overrides(certs, security__tls_private_key=str(certs.peer_key))
    ).security
    with pytest.raises(ConfigError, match=r"tls_private_key"):
        server_context(wrong_key)
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    bad_ca = sender_config(
        tmp_path, port, **tls_overrides(certs, security__tls_ca_certificates=str(not_pem))
    ).security
    with pytest.raises(ConfigError, match=r"tls_ca_certificates = .*ca\.txt"):
        client_context(bad_ca)


# --- SCU: results to TLS destinations ------------------------------------------------------


def test_result_reaches_storescp_over_tls(
    free_port: Callable[[], int], tmp_path: Path, certs: Certificates
) -> None:
    port = free_port()
    box = tls_outbox(tmp_path, certs, port)
    try:
        ds = box.add_result()
        tls = dcmtk_tls(certs.peer_key, certs.peer_cert, certs.ca)  # requires our certificate
        with StorescpServer(tmp_path / "received", port=port, options=tls) as scp:
            assert Sender(box.config, box.index).deliver_due(NOW) == 1
            received = scp.received()
        assert box.row()["state"] == "SENT", box.row()
        assert len(received) == 1 and ds.SOPInstanceUID in received[0].name
    finally:
        box.database.close()


def test_destination_with_untrusted_certificate_is_retried(
    free_port: Callable[[], int], tmp_path: Path, certs: Certificates
) -> None:
    port = free_port()
    box = tls_outbox(tmp_path, certs, port)
    try:
        box.add_result()
        tls = dcmtk_tls(certs.rogue_key, certs.rogue_cert, certs.ca)
        with StorescpServer(tmp_path / "received", port=port, options=tls) as scp:
            Sender(box.config, box.index).deliver_due(NOW)
            assert scp.received() == []
        row = box.row()
        assert row["state"] == "PENDING" and row["attempts"] == 1, row
        assert "TLS handshake failed" in str(row["last_error"]), row
    finally:
        box.database.close()


# --- Orthanc with DicomTlsEnabled ----------------------------------------------------------


def test_a_tls_destination_without_a_tls_context_is_never_sent_in_plain(
    free_port: Callable[[], int], tmp_path: Path, certs: Certificates
) -> None:
    """Issue 17: should the sender hold no TLS context for a `tls` destination, the result is
    not sent at all (a plain storescp on its port receives nothing) and the row says why."""
    port = free_port()
    box = tls_outbox(tmp_path, certs, port)
    try:
        box.add_result()
        sender = Sender(box.config, box.index)
        sender._tls_contexts.clear()  # as if none had been built for it
        with StorescpServer(tmp_path / "received", port=port) as scp:  # plain DICOM
            sender.deliver_due(NOW)
            assert scp.received() == []
        row = box.row()
        assert row["state"] == "DEAD", row
        assert "never in plain" in str(row["last_error"]), row
    finally:
        box.database.close()
