"""Throw-away X.509 material for DICOM TLS tests, made with the `openssl` command line.

`make_certificates(folder)` writes, as PEM files:
- a test CA (`ca.crt`) that signs the node's certificate (`node.crt`/`node.key`) and a peer's
  certificate (`peer.crt`/`peer.key`, used by storescu, storescp and Orthanc);
- an untrusted CA (`rogue-ca.crt`) with its own client certificate (`rogue.crt`/`rogue.key`).
Every leaf certificate may act as TLS server and client (extendedKeyUsage serverAuth,
clientAuth) and names 127.0.0.1 and localhost, so any of them can sit on either side.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from in_process import Outbox, sender_config

_DAYS = "2"
_LEAF_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
"""


@dataclass(frozen=True)
class Certificates:
    """Paths of the PEM files one `make_certificates` call wrote."""

    ca: Path
    node_cert: Path
    node_key: Path
    peer_cert: Path
    peer_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("openssl not found on PATH; install the Debian package openssl")
    done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", _DAYS,
        "-subj", f"/O=lungnode tests/CN={name}", "-keyout", str(key), "-out", str(cert),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _make_leaf(folder: Path, name: str, ca_cert: Path, ca_key: Path) -> tuple[Path, Path]:
    cert, key, csr = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr"
    extensions = folder / "leaf.ext"
    extensions.write_text(_LEAF_EXTENSIONS)
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-subj", f"/O=lungnode tests/CN={name}", "-keyout", str(key), "-out", str(csr),
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", _DAYS, "-sha256", "-extfile", str(extensions),
        "-out", str(cert),
    )  # fmt: skip
    return cert, key


def make_certificates(folder: Path) -> Certificates:
    """Write a trusted CA with node and peer certificates, and an untrusted CA with a client
    certificate, into `folder` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _make_ca(folder, "ca")
    rogue_ca, rogue_ca_key = _make_ca(folder, "rogue-ca")
    node_cert, node_key = _make_leaf(folder, "node", ca, ca_key)
    peer_cert, peer_key = _make_leaf(folder, "peer", ca, ca_key)
    rogue_cert, rogue_key = _make_leaf(folder, "rogue", rogue_ca, rogue_ca_key)
    return Certificates(
        ca=ca,
        node_cert=node_cert,
        node_key=node_key,
        peer_cert=peer_cert,
        peer_key=peer_key,
        rogue_ca=rogue_ca,
        rogue_cert=rogue_cert,
        rogue_key=rogue_key,
    )


def tls_overrides(certs: Certificates, **more: str) -> dict[str, str]:
    """Config overrides (RunningNode / sender_config style) giving the node its TLS files."""
    return {
        "security__tls_certificate": str(certs.node_cert),
        "security__tls_private_key": str(certs.node_key),
        "security__tls_ca_certificates": str(certs.ca),
        **more,
    }


def dcmtk_tls(key: Path, cert: Path, ca: Path) -> list[str]:
    """DCMTK options for an authenticated TLS connection trusting the CA file `ca`."""
    return ["+tls", str(key), str(cert), "-pw", "+cf", str(ca)]


def tls_outbox(tmp: Path, certs: Certificates, port: int, ae: str = "STORESCP") -> Outbox:
    """An Outbox with one result for the destination `ae`@127.0.0.1:`port` over TLS."""
    overrides = tls_overrides(certs, destinations__pacs=f"{ae}@127.0.0.1:{port} tls")
    return Outbox(tmp, sender_config(tmp, port, **overrides))
