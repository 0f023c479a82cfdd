"""P-DATA-TF PDUs decoded with their values left in the received buffer, not copied.

pynetdicom's `DULServiceProvider._decode_pdu` copies a received P-DATA-TF four times before its
bytes reach the file a C-STORE dataset streams into: the whole PDU to `bytes`, its items
(`P_DATA_TF.decode` slicing from offset 6), each item's value (`_generate_items`), and then
`DIMSEMessage.decode_msg` slices the value past its Message Control Header. With 128 KiB PDUs
that is half a megabyte copied, and as much allocated and freed, per 128 KiB received, in the
DUL thread of every association. `decode_pdu` makes the same `P_DATA_TF`, with the same
Presentation Context IDs and values, but each value is a memoryview of the received buffer,
which decode_msg slices (a view, no copy) and writes; the buffer is made per PDU by the guarded
reader (scp_node.dicom.pynetdicom_adapter.pdu_guard) and never written again.

Only where nothing else would see the difference: no handler bound to EVT_DATA_RECV or
EVT_PDU_RECV on the association (the node binds none; pynetdicom binds its standard PDU
logger only with LOG_HANDLER_LEVEL "standard", which flags.install turns off), and items that
fill the PDU exactly, each holding at least its Presentation Context ID. Anything else returns
to pynetdicom's `_decode_pdu`, which gives pynetdicom's own answer or error, as it does for
every other PDU type. tests/contracts/pynetdicom/test_pynetdicom_p_data.py compares both decoders.

Touches `pynetdicom.pdu.P_DATA_TF` and `pynetdicom.pdu_items.PresentationDataValueItem` (made
and filled as `P_DATA_TF._wrap_generate_items` fills them), `pynetdicom.dul._PDU_TYPES` (the
event of a P-DATA-TF) and the two events `DULServiceProvider._decode_pdu` triggers.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import evt
from pynetdicom.dul import _PDU_TYPES, DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem

P_DATA_TF_TYPE = 0x04
P_DATA_TF_EVENT = _PDU_TYPES[bytes([P_DATA_TF_TYPE])][1]  # "Evt10"
_HEADER = 6  # PDU type, reserved, PDU length
_ITEM_HEADER = 4  # item length; the Presentation Context ID is the item's first byte


def decode_pdu(dul: DULServiceProvider, pdu: bytearray) -> tuple[Any, str]:
    """`dul._decode_pdu(pdu)` (the PDU object and its event), except that a P-DATA-TF's values
    are memoryviews of `pdu`, which must not change afterwards."""
    if pdu[0] == P_DATA_TF_TYPE:
        decoded = _p_data_tf(dul.assoc, pdu)
        if decoded is not None:
            return decoded, P_DATA_TF_EVENT
    return dul._decode_pdu(pdu)


def _p_data_tf(assoc: Any, pdu: bytearray) -> P_DATA_TF | None:
    """The P_DATA_TF pynetdicom would decode from `pdu` (a whole P-DATA-TF, header included),
    its values memoryviews of `pdu`; None when pynetdicom's `_decode_pdu` must decode it (an
    event handler would see the PDU, or its items do not fill it exactly)."""
    if assoc.get_handlers(evt.EVT_DATA_RECV) or assoc.get_handlers(evt.EVT_PDU_RECV):
        return None
    end = len(pdu)
    items = []
    offset = _HEADER
    with memoryview(pdu) as view:
        while offset < end:
            start = offset + _ITEM_HEADER
            if start >= end:
                return None
            stop = start + int.from_bytes(view[offset:start], "big")
            if stop <= start or stop > end:
                return None
            item = PresentationDataValueItem()
            item.presentation_context_id = pdu[start]
            # typed bytes by pynetdicom; every reader of it (decode_msg) takes a memoryview
            value: Any = view[start + 1 : stop]
            item.presentation_data_value = value
            items.append(item)
            offset = stop
    decoded = P_DATA_TF()
    decoded.presentation_data_value_items = items
    return decoded
