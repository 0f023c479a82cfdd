"""The web console in process (Starlette's TestClient over a real SQLite index): authentication,
CSRF, escaping, actions and their audit lines, readiness checks. In a browser against a served
node: e2e/test_web.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from scp_node.ops.health import NodeState
from scp_node.web.app import build_app
from storage.index import Index, open_index
from storage.records import InstanceRecord

TOKEN = "test-token-0123456789abcdef"
STUDY = "1.2.826.0.1.3680043.8.498.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def console(
    tmp_path: Path, make_config: Callable[..., Any]
) -> Iterator[tuple[TestClient, Index, Any]]:
    config = make_config(web__token=TOKEN, storage__min_free_mb=1)
    index = open_index(config.storage.database_url)
    from scp_node.ops.audit import AuditLog

    audit = AuditLog(tmp_path / "audit.log", "LUNGNODE")
    node = NodeState(config=config, index=index, role="receiver", scp_port=lambda: 11112)
    client = TestClient(build_app(node, audit), base_url="http://127.0.0.1")
    yield client, index, node
    audit.close()
    index.close()


def record(index: Index, n: int, *, accession: str = "ACC1", calling: str = "ORTHANC") -> None:
    index.record_instance(
        InstanceRecord(
            STUDY,
            STUDY + ".1",
            f"{STUDY}.1.{n}",
            CT_IMAGE,
            "CT",
            Path("/nowhere"),
            calling,
            1_700_000_000.0 + n,
            accession_number=accession,
            study_date="20240501",
            patient_id="PAT-7",
        )
    )


def login(client: TestClient, name: str = "Ada") -> None:
    r = client.post("/login", data={"name": name, "token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303


def test_every_path_but_livez_needs_the_token(console: Any) -> None:
    client, _, _ = console
    assert client.get("/livez").json() == {"status": "alive"}
    for path in ("/metrics", "/readyz", "/studies", "/deliveries", "/node", "/actions/resend"):
        r = client.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/studies", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and "lungnode_build_info" in r.text
    # a browser is sent to the login form, and a wrong token does not log in
    r = client.get("/studies", headers={"Accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert client.post("/login", data={"name": "x", "token": "nope"}).status_code == 401
    login(client)
    assert client.get("/studies").status_code == 200


def test_search_pages_and_values_from_the_network_are_escaped(console: Any) -> None:
    client, index, _ = console
    record(index, 1, accession="<script>alert(1)</script>")
    login(client)
    page = client.get("/studies", params={"patient_id": "pat-7"}).text
    assert STUDY in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert STUDY not in client.get("/studies", params={"patient_id": "other"}).text
    assert STUDY in client.get("/studies", params={"date": "2024-05", "sender": "orthanc"}).text
    assert (
        STUDY in client.get("/studies", params={"study_uid": STUDY[:12], "state": "RECEIVING"}).text
    )
    timeline = client.get(f"/studies/{STUDY}").text
    assert "1 instance(s) from ORTHANC" in timeline
    assert client.get("/studies/1.2.3.4").status_code == 404
    assert client.get("/studies/not..a-uid").status_code == 404
    node_page = client.get("/node").text
    assert "[web]" in node_page and TOKEN not in node_page and "***" in node_page


def test_actions_need_confirmation_and_csrf_and_are_audited(console: Any, tmp_path: Path) -> None:
    client, index, _ = console
    record(index, 1)
    login(client, "Grace")
    confirm = client.get("/actions/mark_complete", params={"study_uid": STUDY}).text
    assert "Mark the study complete?" in confirm and 'name="csrf"' in confirm
    # no CSRF token: refused, nothing done
    r = client.post("/actions/mark_complete", data={"study_uid": STUDY, "confirm": "yes"})
    assert r.status_code == 403
    assert index.status()["studies"][0]["state"] == "RECEIVING"
    csrf = confirm.split('name="csrf" value="')[1].split('"')[0]
    r = client.post(
        "/actions/mark_complete",
        data={"study_uid": STUDY, "confirm": "yes", "csrf": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert index.status()["studies"][0]["state"] == "READY"
    events = index.events.of_study(STUDY)
    assert [(e["kind"], e["actor"]) for e in events if e["kind"] == "mark_complete"] == [
        ("mark_complete", "Grace")
    ]
    # pause intake with a Bearer token (no cookie, no CSRF needed), then resume
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    fresh = TestClient(client.app, base_url="http://127.0.0.1")
    r = fresh.post("/actions/pause_intake", data={"confirm": "yes"}, headers=bearer)
    assert r.json()["changed"] == 1 and index.console.flag_on("intake_paused")
    ready = fresh.get("/readyz", headers=bearer)
    assert ready.status_code == 503 and "intake_paused" in ready.json()["failing"]
    assert (
        fresh.post("/actions/resume_intake", data={"confirm": "yes"}, headers=bearer).json()[
            "changed"
        ]
        == 1
    )
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    # the login is audited too (User Authentication, issue 17): only the actions here
    actions = [(x["Action"], x["ActiveParticipant"][0]["UserID"]) for x in lines if "Action" in x]
    assert actions == [
        ("mark_complete", "Grace"),
        ("pause_intake", "bearer token"),
        ("resume_intake", "bearer token"),
    ]


def test_readyz_fails_on_low_disk_and_on_a_database_that_does_not_answer(console: Any) -> None:
    client, index, node = console
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    r = client.get("/readyz", headers=bearer)
    assert r.status_code == 200, r.json()
    node.config = type(node.config)(
        **{
            **node.config.__dict__,
            "storage": type(node.config.storage)(
                **{**node.config.storage.__dict__, "min_free_mb": 10**9}
            ),
        }
    )
    r = client.get("/readyz", headers=bearer)
    assert r.status_code == 503 and set(r.json()["failing"]) == {"disk"}
    index.db.close()
    r = client.get("/readyz", headers=bearer)
    assert r.status_code == 503 and "database" in r.json()["failing"]
    node.draining.set()
    assert "draining" in client.get("/readyz", headers=bearer).json()["failing"]
