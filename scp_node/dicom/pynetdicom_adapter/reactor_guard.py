"""An association's reactor never takes the DIMSE message a send_* of its association waits for.

pynetdicom 3.0 pauses the reactor in each send_* (`_reactor_checkpoint.clear()`, then waits
for `_is_paused`), but `_is_paused` is still True for a moment after the reactor has passed
the checkpoint; a send_* that starts in that moment goes on while the reactor runs on to
`dimse.get_msg(block=False)` and may take the response itself ("Received unexpected C-STORE
service message"): the sending thread then waits out the DIMSE timeout and the object is sent
again. Seen in the scale-out test once responses came without Nagle's delay. Here the
reactor's non-blocking get_msg returns nothing while its association's checkpoint is cleared,
which is what the pause means.

Touches `DIMSEServiceProvider.get_msg` (wrapped) and reads the association's
`_reactor_checkpoint`.
"""

from __future__ import annotations

import threading
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider

original_get_msg = DIMSEServiceProvider.get_msg


def _get_msg(self: DIMSEServiceProvider, block: bool = False) -> Any:
    """DIMSEServiceProvider.get_msg, except for a paused reactor's look (nothing for it)."""
    if not block:
        thread = threading.current_thread()
        if (
            isinstance(thread, Association)
            and thread.dimse is self
            and not thread._reactor_checkpoint.is_set()
        ):
            return None, None
    return original_get_msg(self, block)


def install() -> None:
    """Install the guard (once, from scp_node.dicom.pynetdicom_adapter.install)."""
    DIMSEServiceProvider.get_msg = _get_msg  # type: ignore[method-assign]
