"""Log lines cannot be forged: hostile values sent to the running node (an AE title with a
newline and an ANSI escape, a log line hidden in a refused abstract syntax UID, a 277-character
Modality with a newline) each end up in exactly one log line, escaped, and nowhere raw.

The node runs as `serve --role receiver` (no model to load); the PDUs are built by hand, since
pynetdicom as an SCU refuses to send such values.
"""

from __future__ import annotations

import copy
import re
import socket
import sqlite3
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dcmtk import run_storescu
from node_process import NodeProcess

from classifier.datasets.phantom import generate_study

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
EXPLICIT_VR_LE = b"1.2.840.10008.1.2.1"
IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.9.7156.1"
# A line of ours: "<UTC time> <LEVEL> <logger>: <message>"
OUR_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]{12}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
FORGED = "2024-01-01T00:00:00.000Z INFO lungnode.receiver: C-STORE stored status=0x0000 FORGED"


def _item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def associate_rq(calling: bytes, called: bytes, contexts: list[tuple[int, bytes]]) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) with AE titles as given (padded to 16 bytes) and one
    presentation context (Explicit VR Little Endian) per (id, abstract syntax)."""
    body = struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
    body += _item(0x10, APPLICATION_CONTEXT)
    for context_id, abstract_syntax in contexts:
        sub = _item(0x30, abstract_syntax) + _item(0x40, EXPLICIT_VR_LE)
        body += _item(0x20, bytes([context_id, 0, 0, 0]) + sub)
    body += _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, IMPLEMENTATION_UID))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _exchange(port: int, pdu: bytes, then: bytes | None = None) -> bytes:
    """Send `pdu`, read the answer; when it is an A-ASSOCIATE-AC send `then` (a release) and read
    until the node closes. Returns the first byte of the answer (the PDU type)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(pdu)
        answer = sock.recv(65536)
        if answer[:1] == b"\x02" and then is not None:
            sock.sendall(then)
            try:
                while sock.recv(65536):
                    pass
            except (TimeoutError, ConnectionError):
                pass
        return answer[:1]


RELEASE_RQ = struct.pack(">BBII", 0x05, 0, 4, 0)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    process = NodeProcess(
        tmp_path_factory.mktemp("injection") / "node", role="receiver", quiet_seconds=600
    )
    with process:
        yield process


def _lines_with(node: NodeProcess, text: str, timeout: float = 10.0) -> list[str]:
    """The log lines that contain `text`, once at least one does (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in node.log().splitlines() if text in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def _assert_not_forged(node: NodeProcess) -> None:
    """No raw control character and no line that starts with the forged text."""
    log = node.log()
    assert "\x1b" not in log
    assert "\u2028" not in log
    for line in log.splitlines():
        assert not line.startswith(FORGED[:20]), line
        if "FORGED" in line or "EVIL" in line:
            assert OUR_LINE.match(line), line


def test_ae_title_with_newline_and_ansi_escape(node: NodeProcess) -> None:
    calling = b"EVIL\n\x1b[31mX\r\x7f"
    answer = _exchange(node.port, associate_rq(calling, b"LUNGNODE", [(1, VERIFICATION)]))
    assert answer in (b"\x03", b"\x07", b"")  # rejected or aborted, never accepted
    # the rejection (or pynetdicom's decode error, with its traceback) is one escaped line
    time.sleep(1.0)
    lines = _lines_with(node, "EVIL")
    assert len(lines) == 1, "\n".join(lines) + "\n---\n" + node.log()[-4000:]
    assert "EVIL\\n\\x1b[31mX\\r\\x7f" in lines[0]
    _assert_not_forged(node)


def test_called_ae_title_with_newline(node: NodeProcess) -> None:
    called = b"LUNG\nEVIL2\x1b]0"
    _exchange(node.port, associate_rq(b"STORESCU", called, [(1, VERIFICATION)]), RELEASE_RQ)
    time.sleep(1.0)
    lines = _lines_with(node, "EVIL2")
    assert len(lines) == 1, "\n".join(lines) + "\n---\n" + node.log()[-4000:]
    assert "LUNG\\nEVIL2\\x1b]0" in lines[0]
    _assert_not_forged(node)


def test_forged_line_in_a_refused_abstract_syntax(node: NodeProcess) -> None:
    hostile = b"1.2\n2024-01-01T00:00:00.000Z INFO lungnode: FORGED\x1b[2J"
    assert len(hostile) <= 64  # pynetdicom refuses a longer UID when it decodes the PDU
    pdu = associate_rq(b"STORESCU", b"LUNGNODE", [(1, VERIFICATION), (3, hostile)])
    assert _exchange(node.port, pdu, RELEASE_RQ) == b"\x02"  # accepted: Verification is fine
    lines = _lines_with(node, "FORGED")
    assert len(lines) == 1, "\n".join(lines) + "\n---\n" + node.log()[-4000:]
    assert "association accepted calling_ae=STORESCU" in lines[0]
    assert "1.2\\n2024-01-01T00:00:00.000Z INFO lungnode: FORGED\\x1b[2J" in lines[0]
    _assert_not_forged(node)


def test_modality_of_277_characters_with_a_newline(node: NodeProcess, tmp_path: Path) -> None:
    study = generate_study(seed=3, histology="A", ct_size=32, ct_slices=4, pet=False)
    ds = copy.deepcopy(study.ct[0])
    modality = ("CT\n" + FORGED + " ").ljust(277, "M")
    assert len(modality) == 277
    path = tmp_path / "modality.dcm"
    with pydicom.config.disable_value_validation():
        ds.Modality = modality
        ds.save_as(path, enforce_file_format=True)
    proc = run_storescu([path], node.port, called_ae=node.ae_title)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = _lines_with(node, ds.SOPInstanceUID)
    assert len(lines) == 1, "\n".join(lines) + "\n---\n" + node.log()[-4000:]
    (line,) = lines
    assert "C-STORE stored status=0x0000" in line and " WARNING " in line
    assert "modality=CT\\\\n2024-01-01T00:...[277 chars] " in line  # escaped twice
    assert "Modality is not a valid CS value" in line
    assert "MMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMM" not in line  # bounded
    _assert_not_forged(node)
    with sqlite3.connect(node.workdir / "store" / "index.sqlite") as db:
        (indexed,) = db.execute(
            "SELECT modality FROM instances WHERE sop_uid = ?", (ds.SOPInstanceUID,)
        ).fetchone()
    assert indexed == "CT\\n2024-01-01T00:...[277 chars]"  # escaped, 32 characters
