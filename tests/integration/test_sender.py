"""The result sender against the real DCMTK storescp (and a pynetdicom SCP for error statuses)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dcmtk import StorescpServer
from in_process import BASIC_TEXT_SR, NOW, STUDY_UID, Outbox, sender_config
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt

from scp_node.config import SenderConfig
from scp_node.pipeline.sender import Sender, backoff_delay, is_transient_status

UNKNOWN_SOP_CLASS = "1.2.826.0.1.3680043.8.498.999.1"  # no peer knows this storage class


@pytest.fixture
def dest_port(free_port: Callable[[], int]) -> int:
    return free_port()


@pytest.fixture
def outbox(tmp_path: Path, dest_port: int) -> Iterator[Outbox]:
    box = Outbox(tmp_path, sender_config(tmp_path, dest_port))
    yield box
    box.database.close()


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    cfg = SenderConfig(
        max_attempts=8,
        initial_backoff_seconds=2,
        max_backoff_seconds=30,
        timeout_seconds=5,
        calling_ae_title="LUNGNODE",
    )
    rng = random.Random(1)
    for attempt, base in [(1, 2), (2, 4), (3, 8), (4, 16)]:
        delays = [backoff_delay(attempt, cfg, rng) for _ in range(200)]
        assert 0.75 * base <= min(delays) < max(delays) <= 1.25 * base
    assert all(backoff_delay(a, cfg, rng) <= 30 for a in range(5, 200))
    assert backoff_delay(1000, cfg, rng) > 30 * 0.75


@pytest.mark.parametrize(
    ("status", "transient"),
    [(0xA700, True), (0xA7FF, True), (0x0110, True), (0x0213, True), (0xA900, False),
     (0xC000, False), (0xC210, False), (0x0122, False), (0x0117, False)],
)  # fmt: skip
def test_status_classification(status: int, transient: bool) -> None:
    assert is_transient_status(status) is transient


def test_result_arrives_at_storescp(outbox: Outbox, tmp_path: Path, dest_port: int) -> None:
    ds = outbox.add_result()
    with StorescpServer(tmp_path / "received", port=dest_port) as scp:
        handled = Sender(outbox.config, outbox.index).deliver_due(NOW)
        received = scp.received()
    assert handled == 1
    assert len(received) == 1 and ds.SOPInstanceUID in received[0].name
    assert outbox.row()["state"] == "SENT"
    assert outbox.study_state() == "DELIVERED"


def _assert_retried_once(outbox: Outbox, words: str) -> None:
    row = outbox.row()
    assert row["state"] == "PENDING" and row["attempts"] == 1, row
    assert words in str(row["last_error"]), row
    # initial_backoff_seconds = 100 with +-25% jitter
    assert outbox.index.due_outbox(NOW + 74) == []
    assert len(outbox.index.due_outbox(NOW + 126)) == 1


def test_destination_not_listening_is_retried_with_backoff(outbox: Outbox) -> None:
    outbox.add_result()
    assert Sender(outbox.config, outbox.index).deliver_due(NOW) == 1
    _assert_retried_once(outbox, "cannot connect")


def test_refused_association_is_retried(outbox: Outbox, tmp_path: Path, dest_port: int) -> None:
    outbox.add_result()
    with StorescpServer(tmp_path / "received", port=dest_port, options=["--refuse"]) as scp:
        Sender(outbox.config, outbox.index).deliver_due(NOW)
        assert scp.received() == []
    # storescp --refuse may close the socket before reading our A-ASSOCIATE-RQ; the kernel then
    # resets the connection and its A-ASSOCIATE-RJ can be lost: both are retried the same way
    row = outbox.row()
    assert row["state"] == "PENDING" and row["attempts"] == 1, row
    assert "association rejected" in row["last_error"] or "cannot connect" in row["last_error"]


def test_abort_during_transfer_is_retried(outbox: Outbox, tmp_path: Path, dest_port: int) -> None:
    outbox.add_result()
    with StorescpServer(tmp_path / "received", port=dest_port, options=["--abort-during"]):
        Sender(outbox.config, outbox.index).deliver_due(NOW)
    row = outbox.row()
    assert row["state"] == "PENDING" and row["attempts"] == 1, row


def test_sop_class_the_peer_does_not_accept_is_a_dead_letter(
    outbox: Outbox, tmp_path: Path, dest_port: int
) -> None:
    outbox.add_result(sop_class=UNKNOWN_SOP_CLASS)
    with StorescpServer(tmp_path / "received", port=dest_port) as scp:
        Sender(outbox.config, outbox.index).deliver_due(NOW)
        assert scp.received() == []
    row = outbox.row()
    assert row["state"] == "DEAD", row
    assert "presentation context" in str(row["last_error"])
    assert outbox.index.due_outbox(NOW + 10_000) == []


def test_gives_up_after_max_attempts(tmp_path: Path, dest_port: int) -> None:
    box = Outbox(tmp_path, sender_config(tmp_path, dest_port, sender__max_attempts="2"))
    try:
        box.add_result()
        sender = Sender(box.config, box.index)
        sender.deliver_due(NOW)
        assert box.row()["state"] == "PENDING"
        sender.deliver_due(NOW + 200)
        row = box.row()
        assert row["state"] == "DEAD" and row["attempts"] == 2, row
        assert "max_attempts" in str(row["last_error"])
        assert box.index.resend_dead(STUDY_UID) == 1
    finally:
        box.database.close()


def test_unknown_destination_is_a_dead_letter(outbox: Outbox) -> None:
    outbox.add_result(destination="nowhere")
    Sender(outbox.config, outbox.index).deliver_due(NOW)
    row = outbox.row()
    assert row["state"] == "DEAD" and "nowhere" in str(row["last_error"]), row


def test_missing_result_file_is_a_dead_letter(outbox: Outbox) -> None:
    ds = outbox.add_result()
    outbox.store.path_for(STUDY_UID, ds.SeriesInstanceUID, ds.SOPInstanceUID).unlink()
    Sender(outbox.config, outbox.index).deliver_due(NOW)
    row = outbox.row()
    assert row["state"] == "DEAD" and "cannot read" in str(row["last_error"]), row


@pytest.mark.parametrize(("status", "state"), [(0xA700, "PENDING"), (0xA900, "DEAD")])
def test_failure_status_from_peer(outbox: Outbox, dest_port: int, status: int, state: str) -> None:
    """A pynetdicom Storage SCP answering a fixed failure status (storescp cannot)."""
    outbox.add_result()
    scp = AE(ae_title="STORESCP")
    scp.add_supported_context(BASIC_TEXT_SR, ExplicitVRLittleEndian)
    server = scp.start_server(
        ("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: status)]
    )
    try:
        Sender(outbox.config, outbox.index).deliver_due(NOW)
    finally:
        server.shutdown()
    row = outbox.row()
    assert row["state"] == state, row
    assert f"0x{status:04X}" in str(row["last_error"])


def test_one_association_per_destination_per_tick(
    outbox: Outbox, tmp_path: Path, dest_port: int
) -> None:
    for _ in range(3):
        outbox.add_result()
    associations: list[str] = []
    scp = AE(ae_title="STORESCP")
    scp.add_supported_context(BASIC_TEXT_SR, ExplicitVRLittleEndian)
    server = scp.start_server(
        ("127.0.0.1", dest_port),
        block=False,
        evt_handlers=[
            (evt.EVT_C_STORE, lambda e: 0x0000),
            (evt.EVT_ACCEPTED, lambda e: associations.append(e.assoc.requestor.ae_title)),
        ],
    )
    try:
        handled = Sender(outbox.config, outbox.index).deliver_due(NOW)
        time.sleep(0.2)
    finally:
        server.shutdown()
    assert handled == 3
    assert associations == ["LUNGNODE"]
    assert {r["state"] for r in outbox.index.status()["outbox"]} == {"SENT"}
