"""The interpreter's cyclic garbage collector kept off what a process built at start.

A receiver holds some 70,000 objects once its modules are imported (pydicom's dictionaries,
pynetdicom, prometheus, sqlite): every full collection walks them all, 50-110 ms with the
interpreter lock held, so each association of that process stalls meanwhile. pynetdicom's
server forces a full collection every 60 turns of its accept loop (every 3 s at the node's
0.05 s turn), and the collector runs one on its own as allocations pile up. Objects that live
as long as the process are moved out of the collector's reach once it has started (gc.freeze):
a full collection then walks only what was made since, and garbage made since is still
collected.
"""

from __future__ import annotations

import gc


def settle_startup_heap() -> None:
    """Collect what start-up left, then freeze the survivors out of later collections; call
    once, when the process has started serving."""
    gc.collect()
    gc.freeze()
