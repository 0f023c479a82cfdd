"""pynetdicom adapted to the node: the one place that touches pynetdicom's internals.

`install()` (once per process, before the first AE is made; the node's entry points call it)
sets what is process-wide. One file per internal touched, each naming it in its docstring:

- flags: the `_config` flags (no identifiers in logs, datasets streamed to files, no per-PDU
  log formatting, only the node's SOP classes) and pydicom's quiet validation mode.
- streaming: C-STORE datasets streamed into the store's `.incoming` folder of the receiving AE
  (`route_incoming`), stopped by the quota and free-space limits while they arrive, their
  header read from their first bytes and their data sync started as they complete; the
  handler reads all that through `parked_stream(request)`.
- wakeups: the reactors woken when there is work instead of after their 1 ms idle sleeps.
- reactor_guard: an association's reactor never takes the response a send_* of its own
  association waits for (pynetdicom's pause of it has a gap).
- commands: the Command Set of each plain C-STORE-RQ decoded directly, not by pydicom.
- encoders: the File Meta of each streamed dataset and each plain C-STORE-RSP encoded directly.
- pdu_guard: the PDUs of the SCP's associations read whole, within a deadline, refused by
  their header (installed per association by the server's request handler); the P-DATA-TFs
  waiting on the socket handed to the state machine in one turn of the DUL's loop.
- p_data: the P-DATA-TF PDUs the guard reads decoded with their values left in the received
  buffer (memoryviews), not copied four times on their way to the file.
- no_delay: Nagle's algorithm off on accepted sockets and, through the EVT_CONN_OPEN seam, on
  every association the node requests.
- server: the SCP server class (`AcceptorServer`, the base of
  scp_node.dicom.connections.GuardedServer) and `start_in_thread`.

Seams pynetdicom offers and the node uses: the `_config` flags; `AssociationServer(
request_handler=...)`, through which each acceptor association is adopted and its DUL
guarded, so no class of pynetdicom is patched for the PDU guard and the associations the node
requests keep pynetdicom's reader; `make_server(server_class=..., **kwargs)`; `evt` handlers
for everything the receiver does with events.

Patches that remain, because pynetdicom 3.0 has no seam for them:
- `dimse_messages.NamedTemporaryFile` (streaming): pynetdicom creates the file a dataset
  streams into with no folder argument; `tempfile.tempdir` would move every temporary file of
  the process, not one AE's datasets.
- `DIMSEMessage.decode_msg` (streaming): the one seam at that moment, an EVT_DIMSE_RECV
  handler, would make `evt.trigger` switch `assoc.abort` to its non-blocking form and back in
  the DUL thread, under the feet of the threads that abort the association (a C-STORE
  handler, the receiver's stop), and build an Event per message; the wrap changes nothing
  else.
- `DIMSEServiceProvider.receive_primitive` (streaming): the DUL thread runs the data sync of a
  completed dataset right after this queued its request for the handler; no event or setting
  marks that moment (EVT_DIMSE_RECV comes before the request is queued).
- `dul.time`, `association.time`, `DULServiceProvider.send_pdu` (wakeups): the idle sleeps are
  literals inside the reactors' loops.
- `DIMSEServiceProvider.get_msg` (reactor_guard): the reactor's look at the message queue has
  no seam, and pynetdicom's pause flag is still set for a moment after the reactor passed it.
- `dimse_messages.decode` (commands): called inside decode_msg for the Command Set.
- `dimse_messages.create_file_meta`, `write_file_meta_info`, `DIMSEServiceProvider.send_msg`
  (encoders): called inside decode_msg and the DIMSE provider, not offered as settings.
- `DULServiceProvider._read_pdu_data` of each acceptor association (pdu_guard): the DUL is made
  by the Association, not by the server; no setting bounds a PDU's size or its time. It also
  hands P-DATA-TFs to `state_machine.do_action` itself: the loop takes one PDU per turn.
- `P_DATA_TF` and `PresentationDataValueItem` made by the guard (p_data) instead of by
  `DULServiceProvider._decode_pdu`, which copies every value: no setting avoids the copies.
- `ae._servers` (server.start_in_thread): `start_server(block=False)` takes no server_class.
- `RequestHandler._create_association` and `Association._server` (server): the request handler
  seam replaces all of `handle()`, which makes the association and starts it with no step in
  between, so the adapter's handler repeats it; which server accepted an association is
  known only from `_server`.

tests/contracts/pynetdicom/ holds one test module per file here: the inventory of the internals
relied on, to run before widening pyproject's pin of pynetdicom.
"""

from __future__ import annotations

import threading

from scp_node.dicom.pynetdicom_adapter import (
    commands,
    encoders,
    flags,
    reactor_guard,
    streaming,
    wakeups,
)

_lock = threading.Lock()
_installed = False


def install() -> None:
    """Adapt pynetdicom for the node (flags, streaming, wake-ups, encoders, commands, the
    reactor guard); safe to call more than once. The PDU guard and the server need no
    install: the node's servers are `AcceptorServer`s."""
    global _installed
    with _lock:
        if _installed:
            return
        flags.install()
        streaming.install()
        wakeups.install()
        encoders.install()
        commands.install()
        reactor_guard.install()
        _installed = True
