"""pynetdicom's `_config` flags (and pydicom's validation mode) as the node needs them.

Touches `pynetdicom._config`, the process-wide settings pynetdicom documents for this purpose:
no identifiers in its DIMSE logs, C-STORE datasets streamed to a file, no per-PDU log
formatting, only the node's storage SOP classes, peers' non-conformant UIDs left to the
handler. The flags are the seam pynetdicom offers; nothing here replaces its code.
"""

from __future__ import annotations

from pydicom import config as pydicom_config
from pynetdicom import _config


def install() -> None:
    """Set the flags (from scp_node.dicom.pynetdicom_adapter.install)."""
    # Patient Name/ID/Birth Date never reach the log through pynetdicom's DIMSE logging.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # Datasets go straight to a file; the handler gets `event.dataset_path` (see streaming).
    _config.STORE_RECV_CHUNKED_DATASET = True
    # pynetdicom's "standard" handlers of every PDU and DIMSE message only format INFO and
    # DEBUG lines, which the node's logging drops (pynetdicom is kept at WARNING, see
    # scp_node.logs): not bound, they cost nothing per C-STORE.
    _config.LOG_HANDLER_LEVEL = "none"
    # Only the storage SOP classes of sop_classes.py are accepted.
    _config.UNRESTRICTED_STORAGE_SERVICE = False
    # Invalid UIDs from peers are tolerated by pynetdicom and refused by the handler
    # (0xC210) with a clear log line, instead of an aborted association.
    _config.ENFORCE_UID_CONFORMANCE = False
    # pydicom warns (a log line and a Python warning each) about every value that breaks its
    # VR, repeating the value: a peer's text, up to 64 KiB, in two more lines per element.
    # The node checks every value it uses itself (UIDs, Modality as CS) and logs one
    # escaped line (scp_node.dicom.instance_header, scp_node.logs); pydicom stays quiet.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
