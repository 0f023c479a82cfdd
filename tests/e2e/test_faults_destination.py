"""Faulty destinations against the running node: down, aborting, refusing, and taking no SR
or SEG at all. Results wait with bounded exponential backoff and jitter, become dead letters
visible in `lungnode status`, and `lungnode resend` delivers them once the peer is fixed."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dcmtk import StorescpServer, run_storescu
from faults_support import RoleNode, modality_counts
from node_process import PhantomFiles

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 1.5
# Rows retry on their own jittered schedules, so their attempt counts drift apart by a few
# while the destination misbehaves: 4 attempts of margin after the last phase's 6, so no row
# reaches its dead letter while the test still expects it to be retried.
MAX_ATTEMPTS = 10

# A storescp association profile that accepts CT only: no SR, no SEG.
CT_ONLY_CFG = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[[PresentationContexts]]
[CTOnly]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = CTImageStorage\\Uncompressed
[[Profiles]]
[CTOnly]
PresentationContexts = CTOnly
"""


def _node(tmp_path: Path, port: int, max_attempts: int = MAX_ATTEMPTS) -> RoleNode:
    return RoleNode(
        tmp_path / "node",
        archive_port=port,
        quiet_seconds=1,
        overrides={
            "sender__initial_backoff_seconds": INITIAL_BACKOFF,
            "sender__max_backoff_seconds": MAX_BACKOFF,
            "sender__max_attempts": max_attempts,
            "sender__timeout_seconds": 5,
        },
    )


def _send_study(study: PhantomFiles, node: RoleNode) -> None:
    proc = run_storescu(study.files, node.port, called_ae=node.ae_title, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _min_attempts(n: int) -> Callable[[dict], bool]:
    """A status predicate: every outbox row has had at least `n` attempts."""
    return lambda s: bool(s["outbox"]) and min(o["attempts"] for o in s["outbox"]) >= n


def _delivered(s: dict) -> bool:
    return [x["state"] for x in s["studies"]] == ["DELIVERED"]


def test_destination_down_aborting_refusing_then_dead_letter_and_resend(
    tmp_path: Path, phantom_ct: PhantomFiles
) -> None:
    port_holder = StorescpServer(tmp_path / "unused")
    port = port_holder.port
    node = _node(tmp_path, port)
    with node:
        _send_study(phantom_ct, node)
        # 1. down: nothing listens on the destination port
        status = node.wait_for(_min_attempts(2), 180, "two failed attempts, destination down")
        assert {o["state"] for o in status["outbox"]} == {"PENDING"}
        assert all("cannot connect" in o["last_error"] for o in status["outbox"])
        assert [s["state"] for s in status["studies"]] == ["REPORTED"]
        # 2. a destination that aborts during, then after, the C-STORE-RQ
        for option, until in (("--abort-during", 4), ("--abort-after", 6)):
            with StorescpServer(tmp_path / option.strip("-"), options=[option], port=port):
                status = node.wait_for(_min_attempts(until), 60, f"attempts with {option}")
            assert {o["state"] for o in status["outbox"]} == {"PENDING"}, option
        # 3. a destination that refuses the association: transient until max_attempts, then DEAD
        with StorescpServer(tmp_path / "refuse", options=["--refuse"], port=port):
            status = node.wait_for(
                lambda s: bool(s["outbox"]) and {o["state"] for o in s["outbox"]} == {"DEAD"},
                60,
                "dead letters after max_attempts",
            )
        for row in status["outbox"]:
            assert row["attempts"] == MAX_ATTEMPTS
            assert f"gave up after {MAX_ATTEMPTS} attempts" in row["last_error"]
        text = node.cli("status")
        assert text.returncode == 0 and text.stdout.count("DEAD") == len(status["outbox"])
        # 4. the destination is fixed; `lungnode resend` delivers the dead letters
        with StorescpServer(tmp_path / "archive", options=["+uf"], port=port) as archive:
            time.sleep(2 * MAX_BACKOFF)
            assert modality_counts(archive.folder) == {}, "dead letters were sent without resend"
            resend = node.cli("resend")
            assert resend.returncode == 0, resend.stderr
            assert f"{len(status['outbox'])} dead-letter result(s)" in resend.stdout
            node.wait_for(_delivered, 60, "DELIVERED after resend")
            node.stop_settled()  # a second copy would be in the archive now
            found = modality_counts(archive.folder)
    assert len(found["SR"]) == 1
    # storescp --abort-after writes the object before aborting: an unacknowledged copy
    aborted_after = modality_counts(tmp_path / "abort-after")
    print(
        f"\nSR copies written by storescp --abort-after before its abort: "
        f"{len(aborted_after.get('SR', []))}"
    )
    delays = [float(d) for d in re.findall(r"next_in_s=([0-9.]+)", node.log())]
    assert delays and max(delays) <= MAX_BACKOFF
    first = [float(d) for d in re.findall(r"attempt=1/\d+ next_in_s=([0-9.]+)", node.log())]
    assert first and all(0.75 * INITIAL_BACKOFF <= d <= 1.25 * INITIAL_BACKOFF for d in first)
    second = [float(d) for d in re.findall(r"attempt=2/\d+ next_in_s=([0-9.]+)", node.log())]
    assert second and all(1.5 * INITIAL_BACKOFF <= d <= 2.5 * INITIAL_BACKOFF for d in second)
    assert len(set(first + second)) > 1, "no jitter in the retry delays"


def test_destination_without_sr_or_seg_context_is_a_dead_letter_at_once(
    tmp_path: Path, phantom_ct: PhantomFiles
) -> None:
    cfg = tmp_path / "ct-only.cfg"
    cfg.write_text(CT_ONLY_CFG)
    with StorescpServer(tmp_path / "ct-only", options=["-xf", str(cfg), "CTOnly"]) as peer:
        node = _node(tmp_path, peer.port)
        with node:
            _send_study(phantom_ct, node)
            status = node.wait_for(
                lambda s: bool(s["outbox"]) and {o["state"] for o in s["outbox"]} == {"DEAD"},
                180,
                "permanent failure",
            )
    for row in status["outbox"]:
        assert row["attempts"] == 1
        assert "accepted no presentation context" in row["last_error"]
    assert [s["state"] for s in status["studies"]] == ["REPORTED"]
