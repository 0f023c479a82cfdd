"""Per destination its protocol, and per result what became of it (sent, committed, awaiting
commitment, failed with the reason), on the console's Deliveries page and in `lungnode status`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from in_process import BASIC_TEXT_SR, NOW, Outbox, result_dataset, sender_config
from starlette.testclient import TestClient

from scp_node.app import cli
from scp_node.ops.audit import AuditLog
from scp_node.ops.health import NodeState
from scp_node.web.app import build_app

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    """PACS (DIMSE with Storage Commitment) and ARCHIVE (DICOMweb), with one result in each
    outcome at PACS and every result sent to ARCHIVE."""
    config = sender_config(
        tmp_path,
        104,
        destinations__pacs="ORTHANC@127.0.0.1:4242 commit=yes",
        destinations__archive="http://127.0.0.1:8042/dicom-web",
        web__token=TOKEN,
    )
    outbox = Outbox(tmp_path, config)
    index = outbox.index
    outbox.add_results([result_dataset(BASIC_TEXT_SR) for _ in range(5)], ["pacs", "archive"])
    items = index.due_outbox(NOW)
    pacs = [i for i in items if i.destination == "pacs"]
    for item in items:
        if item.destination == "archive":
            index.outbox_sent(item, NOW)
    index.commitments.awaiting(pacs[:2], "1.2.826.0.1.3680043.8.498.77", NOW + 600, NOW)
    index.commitments.report(
        "1.2.826.0.1.3680043.8.498.77", [pacs[0].sop_uid], {}, NOW + 1, lambda _: None
    )
    index.outbox_retry(pacs[2], "PACS answered C-STORE status 0xA700 (disk full)", NOW + 100)
    index.outbox_dead(pacs[3], "PACS answered C-STORE status 0xC000 (cannot understand)")
    yield outbox
    outbox.database.close()


def test_status_names_protocol_and_outcome_of_every_result(
    box: Outbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status = box.index.status()
    outcomes = sorted(o["outcome"] for o in status["outbox"] if o["destination"] == "pacs")
    assert outcomes == [
        "committed",
        "failed (dead letter)",
        "failed, retrying",
        "queued",
        "sent, awaiting commitment",
    ]
    summary = {d["name"]: d for d in cli.destination_summary(box.config, status["outbox"])}
    assert summary["pacs"]["protocol"] == "DIMSE + Storage Commitment"
    assert summary["archive"]["protocol"] == "DICOMweb"
    assert summary["archive"]["results"] == {"sent": 5}
    assert summary["pacs"]["results"]["committed"] == 1

    monkeypatch.setattr(cli, "_load", lambda path: box.config)
    monkeypatch.setattr(cli, "_open_index", lambda config: box.index)
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "sent, awaiting commitment" in out and "commitment due" in out
    assert "failed, retrying" in out and "0xA700 (disk full)" in out
    assert "DICOMweb" in out and "5 sent" in out and "1 committed" in out


def test_deliveries_page_shows_protocols_commitments_and_reasons(
    box: Outbox, tmp_path: Path
) -> None:
    audit = AuditLog(tmp_path / "audit.log", "LUNGNODE")
    node = NodeState(config=box.config, index=box.index, role="all", scp_port=lambda: 11112)
    client = TestClient(build_app(node, audit), base_url="http://127.0.0.1")
    try:
        page = client.get("/deliveries", headers={"Authorization": f"Bearer {TOKEN}"})
        assert page.status_code == 200
        html: Any = page.text
        assert "DIMSE + Storage Commitment" in html and "DICOMweb" in html
        assert "http://127.0.0.1:8042/dicom-web" in html
        # awaiting commitment since 2023: overdue, with its Transaction UID
        assert "sent, awaiting commitment" in html and "overdue" in html
        assert "1.2.826.0.1.3680043.8.498.77" in html
        assert "failed, retrying" in html and "0xA700 (disk full)" in html
        assert "0xC000 (cannot understand)" in html  # the dead letter's reason
        assert time.time() > NOW + 600
    finally:
        audit.close()
