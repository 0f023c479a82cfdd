"""Retention: a study's received instances go only when every result object was accepted by
every destination; the emergency watermark removes the oldest delivered studies first; every
removal is audited and on the study's timeline; the dry run lists exactly what a run removes.

In process over a real SQLite index with real files (the pipeline driven through the index's own
operations, with timestamps in the past), and end to end: a node delivers studies to a DCMTK
storescp while another study's results become dead letters, and `lungnode retention --dry-run`
and `lungnode retention` run against it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from audit_reading import audit_events
from dcmtk import StorescpServer, run_storescu
from node_process import NodeProcess, PhantomFiles, save_datasets

from classifier.datasets.phantom import generate_study
from scp_node.config import Config
from scp_node.ops.audit import AuditLog
from scp_node.pipeline.retention import format_report, run_retention
from scp_node.pipeline.scheduler import retain
from storage.index import Index, open_index
from storage.instance_store import InstanceStore
from storage.records import InstanceRecord, ResultObject
from storage.retention import (
    HELD_DEAD_LETTERS,
    HELD_NO_DESTINATION,
    HELD_NOT_DELIVERED,
    HELD_PENDING,
    HELD_TOO_RECENT,
    RULE_AGE,
    RULE_EMERGENCY,
)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
DAY = 86400.0
MIB = 1024 * 1024


class Pipeline:
    """Studies through the index as the node moves them, with files in the store."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = config.storage.root
        self.index = open_index(config.storage.database_url)
        self.n = 0

    def study(
        self,
        ended_days_ago: float,
        *,
        outcome: str = "sent",
        destinations: tuple[str, ...] = ("PACS",),
        instances: int = 2,
        size: int = 4096,
    ) -> str:
        """A study whose results were sent (`sent`), dead-lettered (`dead`), left pending
        (`pending`), or which is still receiving (`receiving`); `ended_days_ago` days ago."""
        self.n += 1
        study = f"1.2.826.0.1.3680043.8.498.7{self.n}"
        series = f"{study}.1"
        at = time.time() - ended_days_ago * DAY - 200
        for i in range(instances):
            path = self.root / study / series / f"{series}.{i}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0" * size)
            record = InstanceRecord(
                study, series, f"{series}.{i}", CT_IMAGE, "CT", path, "ORTHANC", at,
                accession_number=f"ACC{self.n}",
            )  # fmt: skip
            self.index.record_instance(record)
        if outcome == "receiving":
            return study
        assert study in self.index.mark_ready(at + 100, 10)
        job = self.index.claim_job("worker", 600, at + 101)
        assert job is not None and job.study_uid == study
        result_series = f"{study}.9"
        sr_path = self.root / study / result_series / f"{result_series}.1.dcm"
        sr_path.parent.mkdir(parents=True, exist_ok=True)
        sr_path.write_bytes(b"SR")
        sr = ResultObject(f"{result_series}.1", result_series, SR_CLASS, sr_path, "SR")
        assert self.index.complete_job(job, [sr], list(destinations), now=at + 102)
        for item in self.index.due_outbox(at + 200):
            if item.study_uid != study:
                continue  # another study's pending row: it stays PENDING
            if outcome == "sent":
                self.index.outbox_sent(item, at + 200)
            elif outcome == "dead":
                self.index.outbox_dead(item, "0xA700 out of resources")
        return study

    def files(self, study: str) -> list[Path]:
        return sorted(p for p in (self.root / study).rglob("*.dcm"))


@pytest.fixture
def pipeline(make_config: Callable[..., Config]) -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def factory(**overrides: object) -> Pipeline:
        p = Pipeline(make_config(storage__min_free_mb=0, **overrides))
        made.append(p)
        return p

    yield factory
    for p in made:
        p.index.close()


def timeline(index: Index, study: str) -> list[dict[str, Any]]:
    return [e for e in index.events.of_study(study) if e["kind"] == "inputs_removed"]


def test_dry_run_lists_only_studies_every_destination_accepted_oldest_first(
    pipeline: Callable[..., Pipeline],
) -> None:
    p = pipeline(storage__retention_days=30)
    old_dead = p.study(50, outcome="dead")
    old_pending = p.study(50, outcome="pending")
    old_nowhere = p.study(60, destinations=())
    b = p.study(35)
    a = p.study(40)
    p.study(2)
    p.study(45, outcome="receiving")
    report = run_retention(p.config, p.index, dry_run=True, actor="test")
    assert [r.study_uid for r in report.removals] == [a, b]
    first = report.removals[0]
    assert (first.rule, first.accession_number, first.state) == (RULE_AGE, "ACC5", "DELIVERED")
    assert 39.9 < first.age_days < 40.1 and first.bytes == 2 * 4096 and first.instances == 2
    assert "past retention_days = 30" in first.reason
    assert report.held == {
        HELD_DEAD_LETTERS: 1,
        HELD_PENDING: 1,
        HELD_NO_DESTINATION: 1,
        HELD_NOT_DELIVERED: 1,
        HELD_TOO_RECENT: 1,
    }
    text = format_report(report, lambda v, n: str(v)[:n])
    assert a in text and b in text and old_dead not in text and old_pending not in text
    # a dry run removes nothing and writes nothing
    assert all(len(p.files(s)) == 3 for s in (a, b)) and not timeline(p.index, a)
    # a study without destination is kept unless the configuration says otherwise
    assert old_nowhere not in text
    p2 = pipeline(storage__retention_days=30, storage__retention_without_destination="remove")
    p2.index.close()
    report = run_retention(p2.config, p.index, dry_run=True, actor="test")
    assert [r.study_uid for r in report.removals] == [old_nowhere, a, b]


def test_run_removes_inputs_keeps_results_and_timeline_and_audits(
    pipeline: Callable[..., Pipeline], tmp_path: Path
) -> None:
    p = pipeline(storage__retention_days=30)
    dead = p.study(50, outcome="dead")
    a = p.study(40)
    audit = AuditLog(tmp_path / "audit.log", "LUNGNODE")
    report = run_retention(p.config, p.index, dry_run=False, actor="cli:ada", audit=audit)
    audit.close()
    assert [(r.study_uid, r.removed, r.bytes) for r in report.removals] == [(a, True, 8192)]
    # the received instances are gone; the node's own SR, the study row and timeline stay
    assert [f.name for f in p.files(a)] == [f"{a}.9.1.dcm"]
    assert len(p.files(dead)) == 3
    assert p.index.retention.input_files(a) == []
    assert a in {s["study_uid"] for s in p.index.status()["studies"]}
    (event,) = timeline(p.index, a)
    assert event["actor"] == "cli:ada" and event["detail"]["rule"] == RULE_AGE
    assert event["detail"]["instances"] == 2 and event["detail"]["bytes"] == 8192
    (line,) = audit_events(tmp_path / "audit.log")
    assert line["Event"] == "study-inputs-deleted"
    assert line["EventID"]["code"] == "110105" and line["EventActionCode"] == "D"
    assert line["StudyInstanceUID"] == a and line["Rule"] == RULE_AGE
    assert "past retention_days = 30" in line["EventOutcomeDescription"]
    assert line["ActiveParticipant"][0]["UserID"] == "cli:ada"
    assert (line["InstancesDeleted"], line["BytesDeleted"]) == (2, 8192)
    # nothing left to do: a second run removes nothing and audits nothing
    assert run_retention(p.config, p.index, dry_run=False, actor="cli:ada").removals == []
    assert len(audit_events(tmp_path / "audit.log")) == 1


def test_watermark_removes_the_oldest_delivered_first_until_free_space_is_above(
    pipeline: Callable[..., Pipeline], tmp_path: Path
) -> None:
    p = pipeline(storage__retention_days=0, storage__emergency_free_mb=100)
    p.study(90, outcome="dead")  # the oldest of all, but its results were not accepted
    third = p.study(10, instances=1, size=MIB)
    first = p.study(30, instances=1, size=MIB)
    fourth = p.study(5, instances=1, size=MIB)
    second = p.study(20, instances=1, size=MIB)
    inputs = [p.files(s)[0] for s in (first, second, third, fourth)]  # 1 MiB each

    def free() -> int:  # 2.5 MiB short of the watermark, plus whatever was removed
        return 100 * MIB - int(2.5 * MIB) + MIB * sum(not f.exists() for f in inputs)

    planned = run_retention(p.config, p.index, dry_run=True, actor="t", free=free)
    assert [r.study_uid for r in planned.removals] == [first, second, third]
    assert {r.rule for r in planned.removals} == {RULE_EMERGENCY}
    audit = AuditLog(tmp_path / "audit.log", "LUNGNODE")
    done = run_retention(
        p.config, p.index, dry_run=False, actor="watermark", free=free, audit=audit
    )
    audit.close()
    assert [r.study_uid for r in done.removals] == [first, second, third]
    assert [line["StudyInstanceUID"] for line in audit_events(tmp_path / "audit.log")] == [
        first,
        second,
        third,
    ]
    assert "below emergency_free_mb = 100" in done.removals[0].reason
    assert len(p.files(fourth)) == 2 and len(p.files(first)) == 1
    assert free() >= 100 * MIB


def test_the_daily_tick_runs_the_same_retention(pipeline: Callable[..., Pipeline]) -> None:
    p = pipeline(storage__retention_days=30)
    a = p.study(31)
    young = p.study(3)
    retain(p.index, InstanceStore(p.root, 0), p.config)
    assert p.index.retention.input_files(a) == [] and len(p.index.retention.input_files(young)) == 2
    (event,) = timeline(p.index, a)
    assert event["actor"] == "scheduler"
    (line,) = audit_events(p.config.security.audit_log or p.root / "audit.log")
    assert line["StudyInstanceUID"] == a and line["ActiveParticipant"][0]["UserID"] == "scheduler"


# ---- end to end ------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_dry_run_and_run_against_a_node_that_delivered_to_storescp(
    tmp_path: Path,
    node_process: Callable[..., NodeProcess],
    free_port: Callable[[], int],
    phantom_ct: PhantomFiles,
) -> None:
    other = generate_study(seed=32, histology="A", ct_size=64, ct_slices=24, pet=False)
    other_files = save_datasets(other.ct, tmp_path / "other")
    with StorescpServer(tmp_path / "archive") as archive:
        node = node_process(
            destinations={
                "archive": f"STORESCP@127.0.0.1:{archive.port}",
                "broken": f"BROKEN@127.0.0.1:{free_port()}",  # nobody listens: dead letters
            },
            send_results_to="sender",
            # the studies are sent as the destinations' AE titles, so results route back there
            allowed_calling_aets="STORESCP,BROKEN",
            overrides={"sender__max_attempts": 1},
        )
        with node:
            sent = run_storescu(phantom_ct.files, node.port, "STORESCP", node.ae_title)
            assert sent.returncode == 0, sent.stderr
            sent = run_storescu(other_files, node.port, "BROKEN", node.ae_title)
            assert sent.returncode == 0, sent.stderr
            delivered = phantom_ct.study.study_instance_uid
            dead = other.study_instance_uid

            def settled(s: dict[str, Any]) -> bool:
                states = {x["study_uid"]: x["state"] for x in s["studies"]}
                dead_rows = [o for o in s["outbox"] if o["study_uid"] == dead]
                return (
                    states.get(delivered) == "DELIVERED"
                    and bool(dead_rows)
                    and all(o["state"] == "DEAD" for o in dead_rows)
                )

            node.wait_for(settled, 240, "one study DELIVERED, the other's results DEAD")
            # the watermark far above any disk: every delivered study would go, oldest first
            node.configure(storage__emergency_free_mb=10**9)
            proc = node.cli("retention", "--dry-run", "--json")
            assert proc.returncode == 0, proc.stderr
            report = json.loads(proc.stdout)
            assert [r["study_uid"] for r in report["removals"]] == [delivered]
            (r,) = report["removals"]
            assert r["rule"] == RULE_EMERGENCY and r["state"] == "DELIVERED"
            assert r["instances"] == len(phantom_ct.files) and r["bytes"] > 0
            assert report["held"][HELD_DEAD_LETTERS] == 1
            # by age: nothing today, the delivered study (only) after retention_days
            node.configure(storage__emergency_free_mb=0)
            proc = node.cli("retention", "--dry-run")
            assert proc.returncode == 0 and delivered not in proc.stdout, proc.stdout
            later = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 31 * DAY))
            proc = node.cli("retention", "--dry-run", "--as-of", later)
            assert proc.returncode == 0, proc.stderr
            assert delivered in proc.stdout and dead not in proc.stdout, proc.stdout
            assert "past retention_days = 30" in proc.stdout
            # the real run, while the node runs
            node.configure(storage__emergency_free_mb=10**9)
            proc = node.cli("retention")
            assert proc.returncode == 0, proc.stderr
            assert delivered in proc.stdout and dead not in proc.stdout
            status = node.status()
        store = node.store
        # the received instances are gone, the node's result objects (SR, SEG, ...) stay
        received = {p.name for p in phantom_ct.files}
        left = {p.name for p in (store / delivered).rglob("*.dcm")}
        assert left and not received & left
        assert len(list((store / dead).rglob("*.dcm"))) >= len(other_files)
        assert delivered in {s["study_uid"] for s in status["studies"]}
        (line,) = [
            json.loads(x)
            for x in (store / "audit.log").read_text().splitlines()
            if '"study-inputs-deleted"' in x
        ]
        assert line["StudyInstanceUID"] == delivered and line["Rule"] == RULE_EMERGENCY
        assert line["InstancesDeleted"] == len(phantom_ct.files)
        index = open_index(f"sqlite:///{store / 'index.sqlite'}")
        try:
            (event,) = timeline(index, delivered)
            assert event["detail"]["rule"] == RULE_EMERGENCY and event["actor"].startswith("cli:")
            assert not timeline(index, dead)
        finally:
            index.close()


def test_the_node_page_shows_the_same_dry_run(pipeline: Callable[..., Pipeline]) -> None:
    from starlette.testclient import TestClient

    from scp_node.ops.health import NodeState
    from scp_node.web.app import build_app

    token = "retention-token-0123456789"
    p = pipeline(storage__retention_days=30, web__token=token)
    a = p.study(40)
    dead = p.study(50, outcome="dead")
    node = NodeState(config=p.config, index=p.index, role="receiver", scp_port=lambda: 11112)
    client = TestClient(build_app(node), base_url="http://127.0.0.1")
    page = client.get("/node", headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 200
    assert "Retention" in page.text and a in page.text and dead not in page.text
    assert "past retention_days = 30" in page.text and "1 (dead-letter results)" in page.text
    assert len(p.files(a)) == 3  # a dry run
