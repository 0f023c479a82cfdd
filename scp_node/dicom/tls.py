"""DICOM TLS for the node: SSL contexts from [security], and an SCP server whose TLS handshakes
run in the connection's own thread under a deadline.

Trust model: a peer is trusted when its certificate chains to `[security] tls_ca_certificates`
(TLS 1.2 or later, TLS 1.3 preferred; on TLS 1.2 AEAD suites with forward secrecy only). The
SCP does not check client host names (DICOM peers are configured by AE title; with
[security] tls_client_ae_titles the certificate subject decides which AE titles a client may
present). The SCU checks a destination's host name only when its [destinations] line says
verify_hostname, and accepts only one certificate when it says sha256=<fingerprint>;
otherwise the CA file is the control.

pynetdicom 3.0.4 wraps each accepted socket with the handshake inside the server's accept loop
(`AssociationServer.get_request`), so one client that connects and never finishes the
handshake stops every other association. `HandshakeInThreadServer` wraps with
`do_handshake_on_connect=False` and performs the handshake in the per-connection thread that
`ThreadingMixIn` starts anyway, bounded by `[node] acse_timeout` as a whole.
"""

from __future__ import annotations

import hashlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom.ae import ApplicationEntity
from pynetdicom.events import EventHandlerType

from scp_node.config import ConfigError, Destination, SecurityConfig
from scp_node.dicom.connections import GuardedServer
from scp_node.dicom.pynetdicom_adapter.server import start_in_thread

log = logging.getLogger("lungnode.tls")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# TLS 1.2 cipher suites: AEAD only (AES-GCM, ChaCha20-Poly1305) with forward secrecy, as BCP 195
# recommends; no CBC, no RSA key exchange. TLS 1.3 suites are all AEAD and TLS 1.3 is used
# whenever both sides offer it (the maximum version stays TLS 1.3).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


def _harden(context: ssl.SSLContext) -> None:
    """TLS 1.2 or later, AEAD suites only on TLS 1.2, no compression or renegotiation."""
    context.minimum_version = MINIMUM_VERSION
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE


class PinnedCertificateError(ssl.SSLError):
    """The destination's certificate is not the one pinned in [destinations] (sha256=)."""


class _PinnedSocket(ssl.SSLSocket):
    """An SSLSocket that, after its handshake, accepts only the certificate whose SHA-256
    fingerprint its context pins (before any byte of DICOM is sent)."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        pin = getattr(self.context, "pin_sha256", None)
        if pin:
            der = self.getpeercert(binary_form=True) or b""
            seen = hashlib.sha256(der).hexdigest()
            if seen != pin:
                self.close()
                raise PinnedCertificateError(
                    f"certificate SHA-256 {seen} is not the pinned {pin} ([destinations] sha256=)"
                )


class _PinningContext(ssl.SSLContext):
    sslsocket_class = _PinnedSocket
    pin_sha256: str | None = None


def server_context(security: SecurityConfig) -> ssl.SSLContext | None:
    """The SCP's SSL context, or None when [security] configures no TLS certificate.

    Raises ConfigError when the files do not load, or when client certificates are required
    and no CA file says which ones to trust.
    """
    if not security.tls_enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    _load_own_certificate(context, security)
    if security.tls_ca_certificates is not None:
        _load_trusted(context, security)
        context.verify_mode = (
            ssl.CERT_REQUIRED if security.tls_require_client_certificate else ssl.CERT_OPTIONAL
        )
    elif security.tls_require_client_certificate:
        raise ConfigError(
            "config key [security] tls_ca_certificates = '': expected the CA certificates "
            "that sign trusted clients' certificates, because tls_require_client_certificate "
            "= yes (or set it to no to accept TLS clients without a certificate)"
        )
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(
    security: SecurityConfig, destination: Destination | None = None
) -> ssl.SSLContext:
    """The SCU's SSL context for a destination marked tls: verifies the destination's
    certificate against tls_ca_certificates, checks its host name when the destination says
    verify_hostname, accepts only the pinned certificate when it says sha256=..., and presents
    our certificate, when one is configured, as client certificate."""
    if security.tls_ca_certificates is None:
        raise ConfigError(
            "config key [security] tls_ca_certificates = '': expected the CA certificates "
            "that sign the TLS destinations' certificates"
        )
    context = _PinningContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    # by default the CA file is the trust anchor (see the module docstring); per destination
    # the host name may be checked too, and the certificate pinned
    context.check_hostname = bool(destination and destination.tls_verify_hostname)
    context.pin_sha256 = destination.tls_pin_sha256 if destination else None
    context.verify_mode = ssl.CERT_REQUIRED
    _load_trusted(context, security)
    if security.tls_enabled:
        _load_own_certificate(context, security)
    return context


def https_client_context(security: SecurityConfig, destination: Destination) -> ssl.SSLContext:
    """The SSL context of an https (DICOMweb) destination: as `client_context` when
    tls_ca_certificates is set; without it, the system's CAs with the host name checked (as
    any HTTPS client); the destination's sha256= pin either way."""
    if security.tls_ca_certificates is not None:
        return client_context(security, destination)
    context = _PinningContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.pin_sha256 = destination.tls_pin_sha256
    context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if security.tls_enabled:
        _load_own_certificate(context, security)
    return context


def _load_own_certificate(context: ssl.SSLContext, security: SecurityConfig) -> None:
    try:
        context.load_cert_chain(str(security.tls_certificate), str(security.tls_private_key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"config keys [security] tls_certificate = '{security.tls_certificate}' and "
            f"tls_private_key = '{security.tls_private_key}': expected a PEM certificate and "
            f"its unencrypted PEM private key ({exc})"
        ) from None


def _load_trusted(context: ssl.SSLContext, security: SecurityConfig) -> None:
    try:
        context.load_verify_locations(cafile=str(security.tls_ca_certificates))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"config key [security] tls_ca_certificates = '{security.tls_ca_certificates}': "
            f"expected one or more PEM CA certificates ({exc})"
        ) from None


# The plain-TCP server: accepted sockets' reads time out after the AE's network timeout, and
# the limits of scp_node.dicom.connections (PDU size and deadlines, pending connections per address,
# listen backlog) apply.
ReadTimeoutServer = GuardedServer


class HandshakeInThreadServer(ReadTimeoutServer):
    """pynetdicom's threaded server with the TLS handshake moved out of the accept loop.

    `get_request` only accepts and wraps; `process_request_thread` (already one thread per
    connection) completes the handshake within `handshake_timeout` seconds in total, closes
    the connection when it fails or times out, and otherwise hands the socket to pynetdicom
    exactly as its own `get_request` would have (blocking, handshake done).
    `on_handshake_failed(peer, reason)` is told of every connection closed that way.
    """

    def __init__(
        self,
        *args: Any,
        handshake_timeout: float,
        on_handshake_failed: Callable[[str, str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.handshake_timeout = handshake_timeout
        self.on_handshake_failed = on_handshake_failed
        self._handshaking: set[ssl.SSLSocket] = set()
        self._handshaking_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection and wrap it for TLS without handshaking yet."""
        assert self.ssl_context is not None
        client_socket, address = self.accept()
        wrapped = self.ssl_context.wrap_socket(
            client_socket, server_side=True, do_handshake_on_connect=False
        )
        with self._handshaking_lock:  # registered before its thread runs: see server_close
            self._handshaking.add(wrapped)
        return wrapped, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Handshake under the deadline, then let pynetdicom start the association."""
        reason = self._handshake(request, client_address)
        if reason:
            if self.on_handshake_failed is not None:  # told before the peer sees the close
                try:
                    self.on_handshake_failed(_address(client_address), reason)
                except Exception:
                    log.exception("on_handshake_failed callback failed")
            self.shutdown_request(request)
            self.release(request)
            return
        super().process_request_thread(request, client_address)

    def _handshake(self, sock: ssl.SSLSocket, peer: Any) -> str:
        """Complete the handshake within handshake_timeout of the accept: '' on success, else
        why not (the A-ASSOCIATE-RQ must then arrive within the same deadline)."""
        deadline = (self.accepted_at(sock) or time.monotonic()) + self.handshake_timeout
        address = _address(peer)
        try:
            sock.setblocking(False)
            while True:
                try:
                    sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    readers, writers = [sock], []
                except ssl.SSLWantWriteError:
                    readers, writers = [], [sock]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = (
                        f"TLS handshake not finished within {self.handshake_timeout:g} s "
                        "([node] acse_timeout)"
                    )
                    log.warning("%s peer=%s; connection closed", reason, address)
                    return reason
                select.select(readers, writers, [], remaining)
            sock.settimeout(self.ae.network_timeout)  # reads time out, as ReadTimeoutServer's
        except (ssl.SSLError, OSError, ValueError) as exc:
            log.warning("TLS handshake failed peer=%s reason=%s; connection closed", address, exc)
            return f"TLS handshake failed: {exc}"
        finally:
            with self._handshaking_lock:
                self._handshaking.discard(sock)
        subject = _subject(sock.getpeercert())
        log.info(
            "TLS handshake done peer=%s version=%s cipher=%s client_certificate=%s",
            address,
            sock.version(),
            (sock.cipher() or ("?",))[0],
            subject or "none",
        )
        return ""

    def server_close(self) -> None:
        """Close the listening socket, end handshakes still waiting, then join the threads."""
        with self._handshaking_lock:
            pending = list(self._handshaking)
        for sock in pending:
            try:
                # the plain socket's shutdown wakes its thread's select(); SSLSocket.shutdown
                # would also drop the SSL object under that thread's feet
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
        super().server_close()


def _address(peer: Any) -> str:
    """'host:port' of a client address tuple."""
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


def peer_certificate_subject(assoc: Any) -> str | None:
    """The subject of the certificate the peer of `assoc` presented ('O=...,CN=...'): '' for a
    TLS peer without one, None without TLS."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        return _subject(sock.getpeercert())
    except (ValueError, OSError):  # not connected any more
        return ""


def _subject(certificate: dict[str, Any] | None) -> str:
    """The certificate's subject as 'O=...,CN=...' (empty without a certificate)."""
    if not certificate:
        return ""
    parts = [
        f"{_SHORT_NAMES.get(key, key)}={value}"
        for rdn in certificate.get("subject", ())
        for key, value in rdn
    ]
    return ",".join(parts)


_SHORT_NAMES = {
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "commonName": "CN",
}


def start_server(
    ae: ApplicationEntity,
    address: tuple[str, int],
    evt_handlers: list[EventHandlerType],
    context: ssl.SSLContext | None,
    handshake_timeout: float,
    on_handshake_failed: Callable[[str, str], None] | None = None,
    **limits: Any,
) -> GuardedServer:
    """Start `ae`'s SCP on `address` without blocking: plain TCP when `context` is None
    (`ReadTimeoutServer`), else DICOM TLS only, with handshakes in the connection threads
    (`HandshakeInThreadServer`); both time out reads stuck mid-PDU;
    `on_handshake_failed(peer, reason)` hears of each TLS connection closed before DICOM;
    `limits` are GuardedServer's keyword arguments (max_pdu_length, max_pending_per_address,
    on_drop).

    Registered in `ae._servers` as `ApplicationEntity.start_server(block=False)` does
    (scp_node.dicom.pynetdicom_adapter.server.start_in_thread).
    """
    if context is None:
        return start_in_thread(ae, address, ReadTimeoutServer, evt_handlers, **limits)
    return start_in_thread(
        ae,
        address,
        HandshakeInThreadServer,
        evt_handlers,
        ssl_context=context,
        handshake_timeout=handshake_timeout,
        on_handshake_failed=on_handshake_failed,
        **limits,
    )
