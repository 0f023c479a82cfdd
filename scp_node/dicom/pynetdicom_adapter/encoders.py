"""The File Meta of each streamed C-STORE dataset and each plain C-STORE-RSP, encoded directly.

Per C-STORE, pynetdicom builds two pydicom Datasets only to turn them into a few hundred
bytes: the File Meta it writes at the head of each streamed dataset, and the C-STORE-RSP
command set. On one association that is a good part of the receive path's CPU. Both are
encoded here directly, to the same bytes (tests/contracts/pynetdicom/test_encoders.py compares
them with pydicom's); any value outside the plain case (not ASCII, too long, an error comment,
a handler bound to EVT_DIMSE_SENT) takes pynetdicom's own path.

Touches the module globals `pynetdicom.dimse_messages.create_file_meta` and
`write_file_meta_info` (looked up by `DIMSEMessage.decode_msg` when a dataset starts
streaming) and `DIMSEServiceProvider.send_msg` (wrapped by `_send_msg`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import dimse, dimse_messages, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

_original_create_file_meta = dimse_messages.create_file_meta
_original_write_file_meta_info = dimse_messages.write_file_meta_info
_original_send_msg = dimse.DIMSEServiceProvider.send_msg


@dataclass(frozen=True)
class _FileMeta:
    """What pynetdicom's create_file_meta was given, encoded when written."""

    sop_class_uid: Any
    sop_instance_uid: Any
    transfer_syntax: Any
    implementation_uid: Any
    implementation_version: Any

    def as_dataset(self) -> Any:
        return _original_create_file_meta(
            sop_class_uid=self.sop_class_uid,
            sop_instance_uid=self.sop_instance_uid,
            transfer_syntax=self.transfer_syntax,
            implementation_uid=self.implementation_uid,
            implementation_version=self.implementation_version,
        )


def _create_file_meta(
    *,
    sop_class_uid: Any,
    sop_instance_uid: Any,
    transfer_syntax: Any,
    implementation_uid: Any = None,
    implementation_version: Any = None,
) -> _FileMeta:
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    return _FileMeta(
        sop_class_uid,
        sop_instance_uid,
        transfer_syntax,
        PYNETDICOM_IMPLEMENTATION_UID if implementation_uid is None else implementation_uid,
        PYNETDICOM_IMPLEMENTATION_VERSION
        if implementation_version is None
        else implementation_version,
    )


def _plain(value: Any, longest: int) -> bytes | None:
    """A UI/SH value as ASCII bytes, or None when it is not a plain short string."""
    if not isinstance(value, str) or not value or len(value) > longest:
        return None
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        return None


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element with a 2-byte length (UI, SH, UL)."""
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def encode_file_meta(meta: _FileMeta) -> bytes | None:
    """Group 2 as pydicom's write_file_meta_info writes it for these values (after the
    preamble and 'DICM'); None when a value is not plain (pydicom then writes it)."""
    values = [
        _plain(meta.sop_class_uid, 64),
        _plain(meta.sop_instance_uid, 64),
        _plain(meta.transfer_syntax, 64),
        _plain(meta.implementation_uid, 64),
        _plain(meta.implementation_version, 16),
    ]
    if any(v is None for v in values):
        return None
    sop_class, sop_instance, syntax, implementation, version = cast(list[bytes], values)
    body = b"".join(
        (
            struct.pack("<HH2sHI", 2, 1, b"OB", 0, 2) + b"\x00\x01",
            _explicit(2, 2, b"UI", _even(sop_class, b"\x00")),
            _explicit(2, 3, b"UI", _even(sop_instance, b"\x00")),
            _explicit(2, 0x10, b"UI", _even(syntax, b"\x00")),
            _explicit(2, 0x12, b"UI", _even(implementation, b"\x00")),
            _explicit(2, 0x13, b"SH", _even(version, b" ")),
        )
    )
    return _explicit(2, 0, b"UL", struct.pack("<I", len(body))) + body


def _write_file_meta_info(fp: Any, file_meta: Any, enforce_standard: bool = True) -> None:
    if isinstance(file_meta, _FileMeta):
        encoded = encode_file_meta(file_meta)
        if encoded is not None:
            fp.write(encoded)
            return
        file_meta = file_meta.as_dataset()
    _original_write_file_meta_info(fp, file_meta, enforce_standard=enforce_standard)


def _implicit(element: int, value: bytes) -> bytes:
    """One command-group element, Implicit VR Little Endian."""
    return struct.pack("<HHI", 0, element, len(value)) + value


def encode_store_response(primitive: Any) -> bytes | None:
    """The command set of a plain C-STORE-RSP (status, UIDs, message ID; no error comment or
    offending element) as pynetdicom encodes it; None for anything else."""
    if type(primitive) is not C_STORE:
        return None
    message_id = primitive.MessageIDBeingRespondedTo
    status = primitive.Status
    if (
        not isinstance(message_id, int)
        or not isinstance(status, int)
        or not 0 <= message_id <= 0xFFFF
        or not 0 <= status <= 0xFFFF
        or primitive.ErrorComment is not None
        or primitive.OffendingElement is not None
    ):
        return None
    sop_class = _plain(primitive.AffectedSOPClassUID, 64)
    sop_instance = _plain(primitive.AffectedSOPInstanceUID, 64)
    if sop_class is None or sop_instance is None:
        return None
    body = b"".join(
        (
            _implicit(0x0002, _even(sop_class, b"\x00")),
            _implicit(0x0100, struct.pack("<H", 0x8001)),
            _implicit(0x0120, struct.pack("<H", message_id)),
            _implicit(0x0800, struct.pack("<H", 0x0101)),
            _implicit(0x0900, struct.pack("<H", status)),
            _implicit(0x1000, _even(sop_instance, b"\x00")),
        )
    )
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


def _send_msg(self: dimse.DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """DIMSEServiceProvider.send_msg, a plain C-STORE-RSP encoded directly."""
    if primitive.MessageIDBeingRespondedTo is not None and not self.assoc.get_handlers(
        evt.EVT_DIMSE_SENT
    ):
        encoded = encode_store_response(primitive)
        limit = self.maximum_pdu_size
        if encoded is not None and (not limit or len(encoded) + 6 <= limit):
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
            self.dul.send_pdu(pdata)
            return
    _original_send_msg(self, primitive, context_id)


def install() -> None:
    """Install the direct encoders (once, from scp_node.dicom.pynetdicom_adapter.install)."""
    setattr(dimse_messages, "create_file_meta", _create_file_meta)  # noqa: B010
    setattr(dimse_messages, "write_file_meta_info", _write_file_meta_info)  # noqa: B010
    dimse.DIMSEServiceProvider.send_msg = _send_msg  # type: ignore[method-assign]
