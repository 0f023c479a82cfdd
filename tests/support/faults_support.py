"""Helpers shared by the fault-injection tests: the node in a chosen role, storescu output
parsing, stored-file comparison and counting what a destination received."""

from __future__ import annotations

import sqlite3
import struct
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom
from dcmtk import dcmtk_env, require_tool
from node_process import NodeProcess

# Group 0002 elements whose explicit-VR length field is 4 bytes (after 2 reserved bytes).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


class RoleNode(NodeProcess):
    """NodeProcess with the helpers the fault tests need (log waits, store and index peeks)."""

    def wait_log(self, text: str, timeout: float, *, after: int = 0) -> int:
        """Wait until `text` appears in the node log past offset `after`; returns its offset."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.log().find(text, after)
            if found >= 0:
                return found
            time.sleep(0.05)
        raise AssertionError(
            f"{text!r} not in the node log after {timeout} s:\n{self.log()[-4000:]}"
        )

    def indexed_sop_uids(self) -> set[str]:
        """SOP Instance UIDs in the node's SQLite index, read-only."""
        db = sqlite3.connect(f"file:{self.store / 'index.sqlite'}?mode=ro", uri=True, timeout=30)
        try:
            return {row[0] for row in db.execute("SELECT sop_uid FROM instances")}
        finally:
            db.close()


def start_storescu(
    files: Sequence[Path], port: int, called_ae: str = "LUNGNODE", calling_ae: str = "STORESCU"
) -> subprocess.Popen[str]:
    """storescu -v sending `files` over one association, running in the background."""
    cmd = [
        require_tool("storescu"),
        "-v",
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    return subprocess.Popen(
        cmd, env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def acknowledged(storescu_output: str) -> list[Path]:
    """The files storescu saw answered with Success, in order, from its -v output: each
    "Sending file: X" followed by "Received Store Response (Success)"."""
    done: list[Path] = []
    current: Path | None = None
    for line in storescu_output.splitlines():
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            done.append(current)
            current = None
    return done


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a DICOM file after its File Meta Information (the encoded dataset)."""
    data = path.read_bytes()
    if data[128:132] != b"DICM":
        raise ValueError(f"{path} has no DICM prefix; not a DICOM Part 10 file")
    pos = 132
    while pos + 6 <= len(data):
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12 + length
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            pos += 8 + length
    return data[pos:]


def modality_counts(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    """Files received in `folder` (e.g. by storescp), grouped by Modality."""
    found: dict[str, list[pydicom.Dataset]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # a partial file from an aborted transfer
            continue
        ds.filename = str(path)
        found.setdefault(str(ds.Modality), []).append(ds)
    return found
