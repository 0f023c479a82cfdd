"""What a client certificate proves (issue 11, items 2 and 7): with [security]
tls_client_ae_titles, a certificate may present only the AE titles mapped to its subject, and
every association's audit names the certificate subject."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dcmtk import run_echoscu
from in_process import RunningNode
from test_tls import certs, dcmtk_tls, tls_overrides  # noqa: F401  (fixture)
from tls_certificates import Certificates


@pytest.fixture
def mapped_node(tmp_path: Path, certs: Certificates) -> Iterator[RunningNode]:  # noqa: F811
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
    path = node.config.security.audit_log
    assert path is not None
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_certificate_may_present_only_its_mapped_ae_titles(
    mapped_node: RunningNode,
    certs: Certificates,  # noqa: F811
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
    certs: Certificates,  # noqa: F811
) -> None:
    running = RunningNode(tmp_path, **tls_overrides(certs))
    try:
        tls = dcmtk_tls(certs.peer_key, certs.peer_cert, certs.ca)
        echo = run_echoscu(running.port, calling_ae="ECHOSCU", called_ae="LUNGNODE", extra_args=tls)
        assert echo.returncode == 0, echo.stderr + echo.stdout
        (accepted,) = [e for e in _audit(running) if e["Event"] == "association-accepted"]
        assert accepted["CertificateSubject"] == "O=lungnode tests,CN=peer"
    finally:
        running.close()
