"""A TLS-terminating TCP forwarder on loopback: HTTPS in front of a plain-HTTP server.

Debian's Orthanc 1.10.1 crashes (SIGSEGV, exit 139) on its first HTTPS request with
`SslEnabled` (its civetweb against OpenSSL 3), so tests of HTTPS DICOMweb destinations put this
in front of Orthanc's HTTP port: the handshake is Python's ssl (OpenSSL) server with the test
CA's certificate, and every byte after it goes to Orthanc and back unchanged.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from ports import free_port


class TlsForwarder:
    """Accepts TLS on 127.0.0.1:`port` and relays each connection to 127.0.0.1:`target_port`."""

    def __init__(self, certificate: Path, key: Path, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(str(certificate), str(key))
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> TlsForwarder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        try:  # wakes the accept() below at once; close() alone leaves it blocked
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            tls = self._context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):  # a client that does not trust us: the test's point
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self._target))
        relay = threading.Thread(target=_pipe, args=(upstream, tls), daemon=True)
        relay.start()
        _pipe(tls, upstream)
        relay.join(5)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes until `source` ends, then end both."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
