"""Slow and hostile peers against the running node: a TCP connection that says nothing, one that
stops halfway through a PDU, and associations up to [node] max_associations. The node times
them out, refuses beyond the limit, and meanwhile serves a well-behaved storescu."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest
from dcmtk import run_storescu
from faults_support import RoleNode, acknowledged
from node_process import save_datasets
from pynetdicom import AE

from classifier.datasets.phantom import generate_study

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_ASSOCIATIONS = 4
TIMEOUT_S = 2  # ACSE, DIMSE and network timeouts of the node under test
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _closed_within(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the node closes `sock` (EOF or reset, after any A-ABORT bytes), or None."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except ConnectionError:
            return time.monotonic() - started
    return None


def _timed_send(files: list[Path], node: RoleNode) -> float:
    started = time.monotonic()
    proc = run_storescu(files, node.port, called_ae=node.ae_title, extra_args=["-v"], timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert len(acknowledged(proc.stdout + proc.stderr)) == len(files)
    return elapsed


def _half_pdu() -> bytes:
    """The first bytes of an A-ASSOCIATE-RQ whose header promises 1000 bytes that never come."""
    return struct.pack(">BBI", 0x01, 0x00, 1000) + struct.pack(">HH", 1, 0) + b"LUNGNODE"


def _scu() -> AE:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CT_IMAGE_STORAGE)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    return ae


def _node(tmp_path: Path) -> RoleNode:
    return RoleNode(
        tmp_path / "node",
        role="receiver",
        quiet_seconds=600,
        overrides={
            "node__acse_timeout": TIMEOUT_S,
            "node__dimse_timeout": TIMEOUT_S,
            "node__network_timeout": TIMEOUT_S,
            "node__max_associations": MAX_ASSOCIATIONS,
        },
    )


def test_hostile_peers_time_out_and_do_not_slow_a_good_peer(tmp_path: Path) -> None:
    study = generate_study(seed=81, histology="A", ct_size=64, ct_slices=20, pet=False)
    files = save_datasets(study.ct, tmp_path / "ct")
    node = _node(tmp_path)
    with node:
        alone = _timed_send(files, node)

        silent = socket.create_connection(("127.0.0.1", node.port))
        half = socket.create_connection(("127.0.0.1", node.port))
        half.sendall(_half_pdu())
        with_hostile = _timed_send(files, node)
        silent_closed = _closed_within(silent, 30)
        silent.close()
        half.close()  # test_peer_stuck_mid_pdu_is_disconnected checks the node closes it
        time.sleep(1)  # let the node see the EOF and free that association slot
        print(
            f"\nstorescu {len(files)} instances: alone {alone:.2f} s, beside a silent and a "
            f"half-PDU peer {with_hostile:.2f} s; node closed the silent peer after "
            f"{silent_closed} s"
        )
        assert silent_closed is not None, "the node never closed a connection that sent nothing"
        assert with_hostile < 5 * alone + 10

        # associations up to the limit, then one more
        held = [
            _scu().associate("127.0.0.1", node.port, ae_title=node.ae_title)
            for _ in range(MAX_ASSOCIATIONS)
        ]
        assert all(a.is_established for a in held)
        extra = _scu().associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert extra.is_rejected, "an association beyond max_associations was not rejected"
        reason = extra.acceptor.primitive
        print(
            f"beyond max_associations: {reason.result_str}, {reason.source_str}, "
            f"{reason.reason_str}"
        )
        assert reason.result_str == "Rejected Transient"
        # idle associations are aborted by the node's network timeout, freeing the slots
        deadline = time.monotonic() + 30
        while any(a.is_established for a in held) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(a.is_established for a in held), "idle associations were never timed out"
        # the peers see the abort a moment before the node's association threads end and give
        # their slots back: wait (bounded) until the node accepts an association again
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = _scu().associate("127.0.0.1", node.port, ae_title=node.ae_title)
            if probe.is_established:
                probe.release()
                break
            time.sleep(0.2)
        after = _timed_send(files, node)
        print(f"storescu after the idle associations timed out: {after:.2f} s")
    assert "Traceback" not in node.log()


def test_peer_stuck_mid_pdu_is_disconnected(tmp_path: Path) -> None:
    with _node(tmp_path) as node:
        with socket.create_connection(("127.0.0.1", node.port)) as half:
            half.sendall(_half_pdu())
            assert _closed_within(half, 10 * TIMEOUT_S) is not None
