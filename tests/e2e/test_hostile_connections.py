"""Connection-level attacks against the running node (issue 11, item 1), each bounded in count
and time and aimed only at loopback (127.0.0.0/8):

- a 4 GiB A-ASSOCIATE-RQ announcement is cut before it is read (memory growth bounded);
- 16 connections from 127.0.0.2 dripping an A-ASSOCIATE-RQ byte by byte hold no slot: an allowed
  peer on 127.0.0.1 keeps echoing, and the drips are cut at one deadline (not per byte);
- 50 connections sending garbage free their slots at once: an allowed C-ECHO right after;
- a calling AE beyond [node] max_associations_per_ae is rejected, others still admitted.
Every drop is audited as a Security Alert with the source address.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from dcmtk import run_echoscu
from faults_support import RoleNode
from in_process import RunningNode
from pynetdicom import AE

pytestmark = [pytest.mark.e2e]

VERIFICATION = "1.2.840.10008.1.1"
ACSE_TIMEOUT_S = 4


def _node(tmp_path: Path, **overrides: object) -> RoleNode:
    return RoleNode(
        tmp_path / "node",
        role="receiver",
        quiet_seconds=600,
        allowed_calling_aets="ECHOSCU,STORESCU",
        overrides={
            "node__acse_timeout": ACSE_TIMEOUT_S,
            "node__network_timeout": 10,
            "node__max_associations": 4,
            **overrides,
        },
    )


def _audit(node: RoleNode) -> list[dict[str, object]]:
    path = node.store / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _drops(node: RoleNode, host: str) -> list[dict[str, object]]:
    return [
        e
        for e in _audit(node)
        if e["Event"] == "connection-dropped" and str(e["Peer"]).startswith(f"{host}:")
    ]


def _connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def _echo(port: int) -> tuple[bool, float]:
    started = time.monotonic()
    result = run_echoscu(port, calling_ae="ECHOSCU", called_ae="LUNGNODE")
    return result.returncode == 0, time.monotonic() - started


def test_four_gib_association_request_is_cut_before_it_is_read(tmp_path: Path) -> None:
    with _node(tmp_path) as node:
        assert _echo(node.port)[0]
        before = node.rss_kib()  # the serve process (receiving) and its children
        sock = _connect_from("127.0.0.1", node.port)
        sent = 0
        cut = False
        chunk = b"\0" * (1 << 20)
        started = time.monotonic()
        try:
            sock.sendall(struct.pack(">BBL", 0x01, 0x00, 0xFFFFFFFF))  # 4 GiB announced
            while sent < (256 << 20) and time.monotonic() - started < 20:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            cut = True
        finally:
            sock.close()
        time.sleep(0.5)
        growth = node.rss_kib() - before
        print(f"\n4 GiB announcement: cut={cut} after {sent >> 20} MiB, RSS growth {growth} KiB")
        assert cut, "the node kept reading a 4 GiB A-ASSOCIATE-RQ"
        assert sent < (64 << 20), "the node read far more than its max_pdu_length"
        assert growth < 32 * 1024, f"node memory grew by {growth} KiB"
        (drop,) = _drops(node, "127.0.0.1")
        assert drop["EventID"] == {
            "code": "110113",
            "codeSystemName": "DCM",
            "displayName": "Security Alert",
        }
        assert "4294967295 bytes announced" in str(drop["EventOutcomeDescription"])
        assert _echo(node.port)[0]
    assert "Traceback" not in node.log()


def test_slow_drip_connections_hold_no_slot(tmp_path: Path) -> None:
    with _node(tmp_path) as node:
        stop = threading.Event()
        closed_after: list[float | None] = []
        refused_at_accept = 0
        drips: list[socket.socket] = []
        for _ in range(16):
            sock = _connect_from("127.0.0.2", node.port)
            drips.append(sock)
        started = time.monotonic()

        def drip(sock: socket.socket) -> None:
            try:
                sock.sendall(struct.pack(">BBL", 0x01, 0x00, 200))
                while not stop.is_set():
                    sock.sendall(b"\x00")
                    if stop.wait(1.0):
                        break
            except OSError:
                pass
            closed_after.append(time.monotonic() - started)

        threads = [threading.Thread(target=drip, args=(s,), daemon=True) for s in drips]
        for thread in threads:
            thread.start()
        echoes = []
        while time.monotonic() - started < ACSE_TIMEOUT_S + 4:
            echoes.append(_echo(node.port))
            time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join(5)
        for sock in drips:
            try:
                sock.settimeout(0.2)
                if sock.recv(1) == b"":
                    refused_at_accept += 1
            except OSError:
                refused_at_accept += 1
            sock.close()
        print(
            f"\n16 drips from 127.0.0.2: {len(echoes)} echoes from 127.0.0.1, slowest "
            f"{max(t for _, t in echoes):.2f} s; drips ended after {sorted(closed_after)}"
        )
        assert echoes and all(ok for ok, _ in echoes), "an allowed peer was locked out"
        assert max(t for _, t in echoes) < 5.0  # generous: CI machines are shared
        drops = _drops(node, "127.0.0.2")
        refused = [d for d in drops if "not yet associated" in str(d["EventOutcomeDescription"])]
        late = [d for d in drops if "not received whole" in str(d["EventOutcomeDescription"])]
        assert len(refused) == 12, "beyond max_pending_per_address (4) closed at accept"
        assert len(late) == 4, "each drip cut at the A-ASSOCIATE-RQ deadline"
        assert refused_at_accept == 16
        assert all(t is not None and t < ACSE_TIMEOUT_S + 3 for t in closed_after), (
            "a dripping connection outlived the whole-request deadline"
        )


def test_garbage_connections_free_their_slots_at_once(tmp_path: Path) -> None:
    rng = random.Random(11)
    with _node(tmp_path, node__max_pending_per_address=64) as node:
        for _ in range(50):
            with _connect_from("127.0.0.1", node.port) as sock:
                try:
                    sock.sendall(bytes(rng.randrange(256) for _ in range(64)))
                except OSError:
                    pass
        ok, elapsed = _echo(node.port)
        print(f"\nC-ECHO right after 50 garbage connections: ok={ok} in {elapsed:.2f} s")
        assert ok and elapsed < 1.0
        deadline = time.monotonic() + 5
        while len(_drops(node, "127.0.0.1")) < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_drops(node, "127.0.0.1")) >= 40, "garbage connections were not audited"
    assert "Traceback" not in node.log()


def test_per_calling_ae_association_cap(tmp_path: Path) -> None:
    running = RunningNode(tmp_path, node__max_associations_per_ae=2)
    held = []
    try:
        for _ in range(2):
            ae = AE(ae_title="STORESCU")
            ae.add_requested_context(VERIFICATION)
            held.append(ae.associate("127.0.0.1", running.port, ae_title="LUNGNODE"))
        assert all(a.is_established for a in held)
        extra = AE(ae_title="STORESCU")
        extra.add_requested_context(VERIFICATION)
        third = extra.associate("127.0.0.1", running.port, ae_title="LUNGNODE")
        assert third.is_rejected
        rsp = third.acceptor.primitive
        assert (rsp.result, rsp.result_source, rsp.diagnostic) == (2, 3, 2)
        other = run_echoscu(running.port, calling_ae="ECHOSCU", called_ae="LUNGNODE")
        assert other.returncode == 0, "another calling AE is still admitted"
        audit = running.config.security.audit_log
        assert audit is not None
        (rejected,) = [
            json.loads(line)
            for line in audit.read_text().splitlines()
            if '"association-rejected"' in line
        ]
        assert "max_associations_per_ae" in rejected["EventOutcomeDescription"]
    finally:
        for assoc in held:
            assoc.release()
        running.close()
