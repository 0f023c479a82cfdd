"""Storage Commitment (Push Model, SCU role) against the real Orthanc, and its outbox states.

Orthanc (Debian, 1.10) is the Storage Commitment SCP: it answers the N-ACTION on the sender's
association and reports asynchronously, on an association it opens to the node's SCP (the node
is in its DicomModalities). A Lua ReceivedInstanceFilter makes it answer Success to a C-STORE
yet drop the object, so its report names that instance as failed (0x0112 No such object
instance): the case Storage Commitment exists for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from in_process import (
    BASIC_TEXT_SR,
    NOW,
    STUDY_UID,
    Outbox,
    RunningNode,
    result_dataset,
    sender_config,
)
from orthanc import Orthanc, require_orthanc
from ports import free_port
from postgres_server import fresh_database
from pydicom import Dataset
from pynetdicom import AE, evt
from waiting import wait_until

from scp_node.config import ConfigError
from scp_node.dicom.status import PROCESSING_FAILURE, SUCCESS
from scp_node.dicom.storage_commitment import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    CommitmentReport,
    ReportHandler,
    commitment_request,
    parse_report,
)
from scp_node.pipeline.sender import Sender
from storage.database import Database
from storage.index import Index

DROP_LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
  return dicom.SeriesDescription ~= 'DROP'
end
"""


def _report(transaction_uid: str, committed: list[str], failed: dict[str, int]) -> Dataset:
    info = Dataset()
    info.TransactionUID = transaction_uid
    if committed:
        info.ReferencedSOPSequence = [_ref(uid) for uid in committed]
    if failed:
        info.FailedSOPSequence = [_ref(uid, reason) for uid, reason in failed.items()]
    return info


def _ref(uid: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = BASIC_TEXT_SR
    item.ReferencedSOPInstanceUID = uid
    if reason is not None:
        item.FailureReason = reason
    return item


# --- the messages ---------------------------------------------------------------------------


def test_request_names_every_instance_under_one_transaction() -> None:
    request = commitment_request("1.2.3.4", [(BASIC_TEXT_SR, "1.2.3.5"), (BASIC_TEXT_SR, "1.2.6")])
    assert request.TransactionUID == "1.2.3.4"
    assert [i.ReferencedSOPInstanceUID for i in request.ReferencedSOPSequence] == [
        "1.2.3.5",
        "1.2.6",
    ]
    with pytest.raises(ValueError, match="at least one"):
        commitment_request("1.2.3.4", [])
    with pytest.raises(ValueError, match="Transaction UID"):
        commitment_request("not a uid", [(BASIC_TEXT_SR, "1.2.3")])


def test_report_is_read_with_failure_reasons_in_words() -> None:
    report = parse_report(2, _report("1.2.9", ["1.2.9.1"], {"1.2.9.2": 0x0112, "1.2.9.3": 0x7777}))
    assert report == CommitmentReport(
        "1.2.9",
        ("1.2.9.1",),
        {
            "1.2.9.2": "Failure Reason 0x0112 (no such object instance)",
            "1.2.9.3": "Failure Reason 0x7777 (unknown reason)",
        },
    )
    assert parse_report(1, _report("1.2.9", ["1.2.9.1"], {})).failed == {}
    with pytest.raises(ValueError, match="Event Type ID 3"):
        parse_report(3, _report("1.2.9", ["1.2.9.1"], {}))
    with pytest.raises(ValueError, match="Transaction UID"):
        parse_report(1, Dataset())
    with pytest.raises(ValueError, match="Failed SOP Sequence"):
        parse_report(2, _report("1.2.9", ["1.2.9.1"], {}))


def test_commit_option_of_a_destination(tmp_path: Path) -> None:
    config = sender_config(tmp_path, 104, **{"destinations__pacs": "PACS@h:104 commit=yes"})
    assert config.destinations["pacs"].commit
    plain = sender_config(tmp_path, 104)
    assert not plain.destinations["pacs"].commit
    with pytest.raises(ConfigError, match="yes or no"):
        sender_config(tmp_path, 104, **{"destinations__pacs": "PACS@h:104 commit=maybe"})


# --- the outbox's states, on SQLite and PostgreSQL -----------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        url = fresh_database(request.getfixturevalue("postgres_url"))
    db = Database.connect(url)
    yield Index(db)
    db.close()


def _box(tmp_path: Path, index: Index, **overrides: object) -> Outbox:
    """An Outbox helper over `index` (its own database is closed and replaced)."""
    box = Outbox(tmp_path, sender_config(tmp_path, 104, **overrides))
    box.database.close()
    box.database, box.index = index.db, index
    return box


def _states(index: Index) -> dict[str, tuple[str, int, str | None]]:
    return {
        str(r["sop_instance_uid"]): (str(r["state"]), int(r["attempts"]), r["last_error"])
        for r in index.status()["outbox"]
    }


def test_report_commits_retries_and_dead_letters_rows(tmp_path: Path, index: Index) -> None:
    box = _box(tmp_path, index)
    kept, dropped, silent = box.add_results([result_dataset(BASIC_TEXT_SR) for _ in range(3)])
    items = index.due_outbox(NOW)
    index.commitments.awaiting(items, "1.2.77", NOW + 600, NOW)
    assert {s for s, _, _ in _states(index).values()} == {"COMMITTING"}
    assert index.due_outbox(NOW + 10_000) == [], "COMMITTING rows are not sent again"
    inputs = index.retention.study_inputs(STUDY_UID)
    assert inputs is not None and inputs.pending == 3, "retention keeps the study's inputs"

    outcome = index.commitments.report(
        "1.2.77",
        [kept.SOPInstanceUID, "1.2.999"],
        {dropped.SOPInstanceUID: "lost"},
        NOW + 1,
        lambda attempt: NOW + 100 * attempt,
    )
    assert (outcome.committed, outcome.retried, outcome.dead) == (1, 1, 0)
    assert outcome.unknown == ("1.2.999",) and outcome.still_waiting == 1
    states = _states(index)
    assert states[kept.SOPInstanceUID][0] == "COMMITTED"
    assert states[dropped.SOPInstanceUID] == ("PENDING", 1, "lost")
    assert states[silent.SOPInstanceUID][0] == "COMMITTING"
    assert box.study_state() == "REPORTED"
    (due,) = index.due_outbox(NOW + 101)
    assert due.sop_uid == dropped.SOPInstanceUID

    # the silent one is overdue; the one sent again is reported failed on its last attempt
    (late,) = index.commitments.overdue(NOW + 601)
    assert late.sop_uid == silent.SOPInstanceUID
    assert index.commitments.commitment_failed(late, "no report", NOW + 601, NOW + 700)
    assert not index.commitments.commitment_failed(late, "twice", NOW + 601, None)
    index.commitments.awaiting([due], "1.2.78", NOW + 900, NOW + 102)
    outcome = index.commitments.report(
        "1.2.78", [], {dropped.SOPInstanceUID: "lost again"}, NOW + 103, lambda _: None
    )
    assert outcome.dead == 1
    states = _states(index)
    assert states[dropped.SOPInstanceUID] == ("DEAD", 2, "lost again")
    assert states[silent.SOPInstanceUID] == ("PENDING", 1, "no report")

    (again,) = index.due_outbox(NOW + 701)
    index.commitments.awaiting([again], "1.2.79", NOW + 1300, NOW + 701)
    index.commitments.report("1.2.79", [again.sop_uid], {}, NOW + 702, lambda _: None)
    assert box.study_state() == "REPORTED", "a dead letter still holds the study"
    assert index.resend_dead(STUDY_UID) == 1
    (resent,) = index.due_outbox(NOW + 800)
    index.outbox_sent(resent, NOW + 801)
    assert box.study_state() == "DELIVERED", "every row SENT or COMMITTED"


# --- against Orthanc --------------------------------------------------------------------------


@pytest.fixture
def pacs_and_node(tmp_path: Path) -> Iterator[Callable[..., tuple[Orthanc, RunningNode, Outbox]]]:
    """Orthanc as PACS (commit=yes destination) and the node's SCP, sharing one index."""
    require_orthanc()
    made: list[Any] = []

    def factory(
        *, report_to: str = "node", **overrides: object
    ) -> tuple[Orthanc, RunningNode, Outbox]:
        """`report_to`: where Orthanc sends its reports: the node, a closed port, or nowhere
        (the node's AE title is not in its DicomModalities)."""
        lua = tmp_path / "drop.lua"
        lua.write_text(DROP_LUA)
        orthanc = Orthanc(tmp_path / "orthanc", extra_config={"LuaScripts": [str(lua)]})
        node = RunningNode(
            tmp_path,
            **{
                "security__allowed_calling_aets": "ORTHANC,STORESCU",
                "destinations__pacs": f"ORTHANC@127.0.0.1:{orthanc.dicom_port} commit=yes",
                "sender__initial_backoff_seconds": 100,
                "sender__max_backoff_seconds": 1000,
                "sender__timeout_seconds": 10,
                "sender__max_attempts": 2,
                "sender__commit_wait_seconds": 10,
                **overrides,
            },
        )
        made.append(node)
        if report_to != "nowhere":
            port = node.port if report_to == "node" else free_port()
            orthanc.modalities = {"lungnode": (node.ae_title, "127.0.0.1", port)}
        made.append(orthanc.start())
        box = _box(tmp_path, node.index)
        box.config = node.config
        return orthanc, node, box

    yield factory
    for thing in reversed(made):
        thing.stop() if isinstance(thing, Orthanc) else thing.close()


def test_orthanc_commits_results_on_a_new_association(
    pacs_and_node: Callable[..., tuple[Orthanc, RunningNode, Outbox]],
) -> None:
    orthanc, node, box = pacs_and_node()
    first, second = box.add_results([result_dataset(BASIC_TEXT_SR) for _ in range(2)])
    started = time.monotonic()
    assert Sender(node.config, node.index).deliver_due(NOW) == 2
    waited = time.monotonic() - started
    wait_until(lambda: box.study_state() == "DELIVERED", what="the study delivered")
    rows = node.index.status()["outbox"]
    assert {r["state"] for r in rows} == {"COMMITTED"}
    assert len({r["transaction_uid"] for r in rows}) == 1
    assert all(r["committed_at"] for r in rows)
    assert len(orthanc.get("/instances")) == 2
    # the sender stopped waiting when the report came on Orthanc's own association
    assert waited < 9, waited
    kinds = [e["kind"] for e in node.index.events.of_study(STUDY_UID)]
    assert kinds.count("committed") == 2 and "delivered" in kinds


def test_object_orthanc_did_not_keep_is_sent_again_then_dead_lettered(
    pacs_and_node: Callable[..., tuple[Orthanc, RunningNode, Outbox]],
) -> None:
    orthanc, node, box = pacs_and_node()
    dropped = result_dataset(BASIC_TEXT_SR)
    dropped.SeriesDescription = "DROP"  # Orthanc answers the C-STORE Success and drops it
    kept, dropped = box.add_results([result_dataset(BASIC_TEXT_SR), dropped])
    sender = Sender(node.config, node.index)
    sender.deliver_due(NOW)
    wait_until(lambda: _states(node.index)[dropped.SOPInstanceUID][0] == "PENDING", what="PENDING")
    states = _states(node.index)
    assert states[kept.SOPInstanceUID][0] == "COMMITTED"
    state, attempts, error = states[dropped.SOPInstanceUID]
    assert attempts == 1
    assert "0x0112 (no such object instance)" in str(error) and "ORTHANC" in str(error)
    assert box.study_state() == "REPORTED"

    # the report came on the receiver, which schedules the retry on the wall clock
    assert sender.deliver_due(time.time() + 70) == 0, "backoff: 100 s +-25%"
    assert sender.deliver_due(time.time() + 126) == 1, "sent again after the backoff"
    wait_until(lambda: _states(node.index)[dropped.SOPInstanceUID][0] == "DEAD", what="DEAD")
    assert _states(node.index)[dropped.SOPInstanceUID][1] == 2, "max_attempts = 2"
    assert box.study_state() == "REPORTED"
    assert [i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("/instances?expand")] == [
        kept.SOPInstanceUID
    ]


def test_commitment_that_never_comes_is_retried_and_shown(
    pacs_and_node: Callable[..., tuple[Orthanc, RunningNode, Outbox]],
) -> None:
    # Orthanc accepts the N-ACTION but cannot open the association of its report
    _, node, box = pacs_and_node(report_to="closed port", sender__commit_wait_seconds=0)
    (ds,) = box.add_results([result_dataset(BASIC_TEXT_SR)])
    sender = Sender(node.config, node.index)
    sender.deliver_due(NOW)
    (row,) = node.index.status()["outbox"]
    assert row["state"] == "COMMITTING" and row["commit_due_at"], row
    assert sender.deliver_due(NOW + 599) == 0, "not yet overdue ([sender] commit_timeout 600)"
    assert sender.deliver_due(NOW + 601) == 1
    (row,) = node.index.status()["outbox"]
    assert row["state"] == "PENDING" and row["attempts"] == 1, row
    assert "no Storage Commitment report" in str(row["last_error"])
    assert "commit_timeout_seconds" in str(row["last_error"])


def test_report_from_another_ae_title_is_refused(
    pacs_and_node: Callable[..., tuple[Orthanc, RunningNode, Outbox]],
) -> None:
    """An allowed calling AE that is not the destination cannot commit its results."""
    _, node, box = pacs_and_node(report_to="closed port", sender__commit_wait_seconds=0)
    (ds,) = box.add_results([result_dataset(BASIC_TEXT_SR)])
    Sender(node.config, node.index).deliver_due(NOW)
    (row,) = node.index.status()["outbox"]
    transaction_uid = str(row["transaction_uid"])

    ae = AE("STORESCU")
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_event_report(
            _report(transaction_uid, [ds.SOPInstanceUID], {}),
            1,
            STORAGE_COMMITMENT_PUSH_MODEL,
            STORAGE_COMMITMENT_INSTANCE,
        )
    finally:
        assoc.release()
    assert int(status.Status) == PROCESSING_FAILURE
    assert node.index.status()["outbox"][0]["state"] == "COMMITTING"

    handler = ReportHandler(node.config, node.index)
    report = CommitmentReport(transaction_uid, (ds.SOPInstanceUID,))
    assert handler.apply(report, "ORTHANC", NOW + 1) == SUCCESS
    assert node.index.status()["outbox"][0]["state"] == "COMMITTED"


def test_n_action_the_peer_refuses_is_retried(
    pacs_and_node: Callable[..., tuple[Orthanc, RunningNode, Outbox]],
) -> None:
    # Orthanc aborts an N-ACTION from an AE title that is not in its DicomModalities
    orthanc, node, box = pacs_and_node(report_to="nowhere")
    box.add_results([result_dataset(BASIC_TEXT_SR)])
    Sender(node.config, node.index).deliver_due(NOW)
    (row,) = node.index.status()["outbox"]
    assert row["state"] == "PENDING" and row["attempts"] == 1, row
    assert "N-ACTION" in str(row["last_error"])
    assert len(orthanc.get("/instances")) == 1, "stored, but not committed: sent again"


def test_report_on_the_senders_own_association(tmp_path: Path) -> None:
    """A peer that reports on the association that asked (pynetdicom as the SCP: Orthanc always
    opens a new one): the sender waits for it before releasing."""
    threads: list[threading.Thread] = []

    def on_action(event: Any) -> tuple[int, Dataset | None]:
        request = event.action_information
        info = _report(
            str(request.TransactionUID),
            [str(i.ReferencedSOPInstanceUID) for i in request.ReferencedSOPSequence],
            {},
        )

        def report() -> None:
            time.sleep(0.3)  # after the N-ACTION response has gone out
            event.assoc.send_n_event_report(
                info, 1, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE
            )

        threads.append(threading.Thread(target=report))
        threads[-1].start()
        return SUCCESS, None

    scp = AE("STORESCP")
    scp.add_supported_context(BASIC_TEXT_SR)
    scp.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL)
    port = free_port()
    server = scp.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[
            (evt.EVT_C_STORE, lambda event: SUCCESS),
            (evt.EVT_N_ACTION, on_action),
        ],
    )
    box = Outbox(tmp_path, sender_config(tmp_path, port, **{
        "destinations__pacs": f"STORESCP@127.0.0.1:{port} commit=yes",
        "sender__commit_wait_seconds": 10,
    }))  # fmt: skip
    try:
        box.add_results([result_dataset(BASIC_TEXT_SR) for _ in range(2)])
        started = time.monotonic()
        Sender(box.config, box.index).deliver_due(NOW)
        assert time.monotonic() - started < 9, "stopped waiting when the report came"
        assert {r["state"] for r in box.index.status()["outbox"]} == {"COMMITTED"}
        assert box.study_state() == "DELIVERED"
    finally:
        for thread in threads:
            thread.join(10)
        server.shutdown()
        box.database.close()


def test_check_config_warns_when_the_reporting_peer_may_not_call(tmp_path: Path) -> None:
    from scp_node.app.check_config import WARNING, Finding, _commitment_reports

    def findings(**overrides: object) -> list[Finding]:
        found: list[Finding] = []
        config = sender_config(
            tmp_path, 104, destinations__pacs="PACS@127.0.0.1:104 commit=yes", **overrides
        )
        _commitment_reports(config, found)
        return found

    (warning,) = findings(security__allowed_calling_aets="ORTHANC")
    assert warning.level == WARNING and "allowed_calling_aets" in warning.message
    assert findings(security__allowed_calling_aets="ORTHANC,PACS") == []


def test_waiting_sender_sees_a_report_that_came_before_it_waited() -> None:
    from scp_node.dicom.storage_commitment import REPORTED

    REPORTED.add("1.2.3.1")  # nobody waits: not kept
    with REPORTED.expecting("1.2.3.1") as wait:
        assert not wait(0.05)
    with REPORTED.expecting("1.2.3.2") as wait:
        REPORTED.add("1.2.3.2")  # e.g. on the SCP, before the sender waits
        assert wait(0.0)
    assert REPORTED._waiting == set() and REPORTED._done == set(), "nothing kept afterwards"
