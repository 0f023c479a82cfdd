"""The index, work queue and outbox, on SQLite and (when the binaries are there) PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port
from postgres_server import fresh_database

from storage.database import Database, DatabaseError
from storage.index import (
    Index,
    InstanceRecord,
    Job,
    ResultObject,
    StudyState,
)

STUDY = "1.2.826.0.1.1"
CT_SERIES = "1.2.826.0.1.1.1"
PET_SERIES = "1.2.826.0.1.1.2"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
QUIET = 30.0


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty database of each dialect."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return fresh_database(request.getfixturevalue("postgres_url"))


@pytest.fixture
def index(db_url: str) -> Iterator[Index]:
    db = Database.connect(db_url)
    yield Index(db)
    db.close()


def ct(n: int, *, study: str = STUDY, at: float = 100.0, aet: str = "PACS") -> InstanceRecord:
    series = CT_SERIES if study == STUDY else study + ".1"
    return InstanceRecord(
        study_uid=study,
        series_uid=series,
        sop_uid=f"{series}.{n}",
        sop_class_uid=CT_IMAGE,
        modality="CT",
        path=Path(f"/store/{study}/{series}/{series}.{n}.dcm"),
        calling_aet=aet,
        received_at=at,
    )


def pet(n: int, *, at: float = 100.0) -> InstanceRecord:
    return InstanceRecord(
        study_uid=STUDY,
        series_uid=PET_SERIES,
        sop_uid=f"{PET_SERIES}.{n}",
        sop_class_uid=PET_IMAGE,
        modality="PT",
        path=Path(f"/store/{STUDY}/{PET_SERIES}/{PET_SERIES}.{n}.dcm"),
        calling_aet="SCANNER",
        received_at=at,
    )


def results_for(version: int) -> list[ResultObject]:
    series = f"2.25.{version}"
    return [
        ResultObject(
            f"{series}.1", series, SR_CLASS, Path(f"/store/{STUDY}/{series}/sr.dcm"), "SR"
        ),
        ResultObject(
            f"{series}.2", series, SEG_CLASS, Path(f"/store/{STUDY}/{series}/seg.dcm"), "SEG"
        ),
    ]


def study_row(index: Index, study: str = STUDY) -> dict:
    return next(s for s in index.status()["studies"] if s["study_uid"] == study)


def ready_job(index: Index, *, at: float = 100.0, worker: str = "w1") -> Job:
    """A study of two CT instances received at `at`, made ready and claimed."""
    for n in (1, 2):
        index.record_instance(ct(n, at=at))
    assert index.mark_ready(now=at + QUIET, quiet_seconds=QUIET) == [STUDY]
    job = index.claim_job(worker, lease_seconds=60, now=at + QUIET)
    assert job is not None
    return job


# ---- schema and connection ---------------------------------------------------------------------


def test_schema_creation_is_idempotent(db_url: str) -> None:
    db = Database.connect(db_url)
    Index(db).record_instance(ct(1))
    Index(db)  # again, on a populated database
    assert study_row(Index(db))["instances"] == 1
    db.close()


def test_newer_schema_version_is_refused(db_url: str) -> None:
    db = Database.connect(db_url)
    Index(db)
    with db.transaction() as cur:
        cur.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(DatabaseError, match="schema version 99"):
        Index(db)
    db.close()


def test_sqlite_is_wal_with_full_synchronous(tmp_path: Path) -> None:
    db = Database.connect(f"sqlite:///{tmp_path / 'sub' / 'i.sqlite'}")
    Index(db)
    with db.transaction(write=False) as cur:
        assert cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert cur.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert cur.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    db.close()
    assert (tmp_path / "sub" / "i.sqlite").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x/y", "unknown scheme"),
        ("", "empty"),
        ("sqlite:///", "names no file"),
    ],
)
def test_bad_urls_name_the_url_and_the_fix(url: str, message: str) -> None:
    with pytest.raises(DatabaseError, match=message) as info:
        Database.connect(url)
    assert "database_url" in str(info.value)


def test_unreachable_postgres_names_url_without_password() -> None:
    port = free_port()
    url = f"postgresql://node:secret@127.0.0.1:{port}/lungnode"
    with pytest.raises(DatabaseError, match="cannot connect to PostgreSQL") as info:
        Database.connect(url)
    text = str(info.value)
    assert f"127.0.0.1:{port}/lungnode" in text and "secret" not in text
    assert "database_url" in text


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    bogus = tmp_path / "not.sqlite"
    bogus.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseError, match="not.sqlite"):
        Index(Database.connect(f"sqlite:///{bogus}"))


def test_transaction_rolls_back_on_error(index: Index) -> None:
    index.record_instance(ct(1))
    with pytest.raises(RuntimeError), index.db.transaction() as cur:
        cur.execute("UPDATE studies SET state = 'FAILED'")
        raise RuntimeError("boom")
    assert study_row(index)["state"] == "RECEIVING"


# ---- receiving and completion ------------------------------------------------------------------


def test_record_instance_is_idempotent_on_sop_uid(index: Index) -> None:
    assert index.record_instance(ct(1)) is True
    assert index.record_instance(ct(1, at=150.0)) is False
    assert index.record_instance(ct(2)) is True
    row = study_row(index)
    assert (row["state"], row["instances"], row["series"], row["version"]) == (
        "RECEIVING",
        2,
        1,
        1,
    )
    assert len(index.study_files(STUDY).paths) == 2


def test_record_instance_rejects_bad_uids_and_counts(index: Index) -> None:
    bad = InstanceRecord("../x", CT_SERIES, "1.2", CT_IMAGE, "CT", Path("/x"), "A", 1.0)
    with pytest.raises(ValueError, match="Study Instance UID"):
        index.record_instance(bad)
    with pytest.raises(ValueError, match="expected_in_series"):
        index.record_instance(pet(1), expected_in_series=0)
    assert index.status()["studies"] == []


def test_ready_after_quiet_seconds_with_one_job(index: Index) -> None:
    index.record_instance(ct(1, at=100.0))
    index.record_instance(ct(2, at=110.0))
    assert index.mark_ready(now=139.0, quiet_seconds=QUIET) == []
    assert index.mark_ready(now=140.0, quiet_seconds=QUIET) == [STUDY]
    assert index.mark_ready(now=500.0, quiet_seconds=QUIET) == []
    assert study_row(index)["state"] == "READY"
    job = index.claim_job("w1", 60, now=141.0)
    assert job is not None and (job.study_uid, job.version, job.attempts) == (STUDY, 1, 1)
    assert job.source_aet == "PACS" and job.previous_sr_path is None
    assert index.claim_job("w2", 60, now=141.0) is None, "one job per study version"


def test_ready_sooner_when_pet_series_reaches_number_of_slices(index: Index) -> None:
    index.record_instance(ct(1, at=100.0))
    index.record_instance(pet(1, at=101.0), expected_in_series=3)
    index.record_instance(pet(2, at=102.0), expected_in_series=3)
    assert index.mark_ready(now=103.0, quiet_seconds=QUIET) == []
    index.record_instance(pet(3, at=103.0), expected_in_series=3)
    assert index.mark_ready(now=104.0, quiet_seconds=QUIET) == [STUDY]


def test_expected_count_does_not_retrigger_a_later_version(index: Index) -> None:
    index.record_instance(ct(1, at=100.0))
    index.record_instance(pet(1, at=100.0), expected_in_series=1)
    assert index.mark_ready(now=101.0, quiet_seconds=QUIET) == [STUDY]
    job = index.claim_job("w1", 60, now=101.0)
    assert job and index.complete_job(job, results_for(1), [], now=102.0)
    index.record_instance(ct(2, at=200.0))  # a late CT slice: version 2
    assert index.mark_ready(now=201.0, quiet_seconds=QUIET) == [], "waits for quiet"
    assert index.mark_ready(now=230.0, quiet_seconds=QUIET) == [STUDY]


def test_studies_without_expected_counts_wait_for_quiet(index: Index) -> None:
    index.record_instance(ct(1, at=100.0))
    assert index.mark_ready(now=129.9, quiet_seconds=QUIET) == []


def test_pending_studies_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    db = Database.connect(url)
    index = Index(db)
    index.record_instance(ct(1, at=100.0))
    index.record_instance(ct(1, study="1.3", at=100.0))
    assert index.mark_ready(now=130.0, quiet_seconds=QUIET) == [STUDY, "1.3"]
    index.record_instance(ct(2, at=140.0))  # STUDY back to RECEIVING, version 2
    db.close()

    db = Database.connect(url)
    index = Index(db)
    assert index.record_instance(ct(1, at=150.0)) is False, "still indexed after restart"
    job = index.claim_job("w1", 60, now=150.0)
    assert job is not None and job.study_uid == "1.3"
    assert index.claim_job("w1", 60, now=150.0) is None, "version 1 of STUDY is stale"
    assert index.mark_ready(now=170.0, quiet_seconds=QUIET) == [STUDY]
    job2 = index.claim_job("w1", 60, now=170.0)
    assert job2 is not None and (job2.study_uid, job2.version) == (STUDY, 2)
    db.close()


def test_study_files_groups_by_series_and_excludes_results(index: Index) -> None:
    for n in (1, 2, 3):
        index.record_instance(ct(n))
    index.record_instance(pet(1), expected_in_series=1)
    job = ready_job(index, at=100.0)
    assert index.complete_job(job, results_for(1), ["PACS"], now=200.0)
    files = index.study_files(STUDY)
    assert files.study_instance_uid == STUDY
    by_series = {s.series_instance_uid: s for s in files.series}
    assert set(by_series) == {CT_SERIES, PET_SERIES}
    assert by_series[CT_SERIES].modality == "CT" and by_series[PET_SERIES].modality == "PT"
    assert [i.sop_instance_uid for i in by_series[CT_SERIES].instances] == [
        f"{CT_SERIES}.{n}" for n in (1, 2, 3)
    ]
    assert by_series[CT_SERIES].instances[0].sop_class_uid == CT_IMAGE
    assert by_series[CT_SERIES].instances[0].path == ct(1).path
    with pytest.raises(KeyError, match="1.9.9"):
        index.study_files("1.9.9")


def test_own_result_sent_back_is_not_an_instance(index: Index) -> None:
    job = ready_job(index)
    sr = results_for(1)[0]
    assert index.complete_job(job, [sr], ["PACS"], now=200.0)
    echoed = InstanceRecord(STUDY, sr.series_uid, sr.sop_uid, SR_CLASS, "SR", sr.path, "PACS", 300)
    assert index.record_instance(echoed) is False
    row = study_row(index)
    assert (row["state"], row["instances"], row["version"]) == ("REPORTED", 2, 1)


# ---- work queue --------------------------------------------------------------------------------


def test_claim_sets_analyzing_and_lease(index: Index) -> None:
    assert index.claim_job("w1", 60, now=0.0) is None
    job = ready_job(index)
    assert study_row(index)["state"] == "ANALYZING"
    assert index.claim_job("w2", 60, now=job_time(job) + 59) is None, "lease still held"


def job_time(_: Job) -> float:
    return 130.0  # ready_job claims at at + QUIET


def test_expired_lease_is_claimed_again_and_stale_worker_refused(index: Index) -> None:
    first = ready_job(index)
    assert index.renew_lease(first, 60, now=150.0)  # lease until 210
    assert index.claim_job("w2", 60, now=200.0) is None
    second = index.claim_job("w2", 60, now=211.0)
    assert second is not None and second.job_id == first.job_id
    assert second.attempts == 2 and second.owner == "w2"
    assert not index.renew_lease(first, 60, now=212.0), "w1 lost its lease"
    assert not index.complete_job(first, results_for(1), ["PACS"], now=213.0)
    index.fail_job(first, "late", retry=True, now=213.0)  # ignored: not w1's any more
    assert study_row(index)["state"] == "ANALYZING"
    assert index.complete_job(second, results_for(1), ["PACS"], now=214.0)
    assert not index.complete_job(second, results_for(1), ["PACS"], now=215.0), "only once"
    assert study_row(index)["state"] == "REPORTED"
    assert len(index.status()["outbox"]) == 2


def test_new_instances_during_analysis_make_a_new_version(index: Index) -> None:
    job = ready_job(index)
    index.record_instance(ct(3, at=140.0))
    row = study_row(index)
    assert (row["state"], row["version"]) == ("RECEIVING", 2)
    assert not index.renew_lease(job, 60, now=141.0)
    assert not index.complete_job(job, results_for(1), ["PACS"], now=142.0)
    assert study_row(index)["state"] == "RECEIVING"
    assert index.status()["outbox"] == []
    assert index.mark_ready(now=170.0, quiet_seconds=QUIET) == [STUDY]
    job2 = index.claim_job("w1", 60, now=171.0)
    assert job2 is not None and job2.version == 2 and job2.previous_sr_path is None
    retaken = index.claim_job("w2", 60, now=1000.0)  # job2's lease ran out
    assert retaken is not None and retaken.job_id == job2.job_id
    assert index.claim_job("w3", 60, now=1000.0) is None, "the stale version-1 job never returns"


def test_reported_study_gets_new_version_naming_previous_sr(index: Index) -> None:
    job = ready_job(index)
    assert index.complete_job(job, results_for(1), ["PACS"], now=140.0)
    assert study_row(index)["state"] == "REPORTED"
    assert index.record_instance(ct(7, at=300.0))
    assert (study_row(index)["state"], study_row(index)["version"]) == ("RECEIVING", 2)
    assert index.mark_ready(now=330.0, quiet_seconds=QUIET) == [STUDY]
    job2 = index.claim_job("w1", 60, now=330.0)
    assert job2 is not None and job2.version == 2
    assert job2.previous_sr_sop_uid == results_for(1)[0].sop_uid
    assert job2.previous_sr_path == results_for(1)[0].path
    assert index.complete_job(job2, results_for(2), ["PACS"], now=340.0)
    index.record_instance(ct(8, at=400.0))
    index.mark_ready(now=430.0, quiet_seconds=QUIET)
    job3 = index.claim_job("w1", 60, now=430.0)
    assert job3 is not None and job3.previous_sr_sop_uid == results_for(2)[0].sop_uid
    assert len(index.study_files(STUDY).paths) == 4, "results are never inputs"


def test_fail_job_retry_and_permanent(index: Index) -> None:
    job = ready_job(index)
    index.fail_job(job, "GPU out of memory", retry=True, now=140.0)
    assert study_row(index)["state"] == "READY"
    again = index.claim_job("w2", 60, now=141.0)
    assert again is not None and again.job_id == job.job_id and again.attempts == 2
    index.fail_job(again, "no CT series in the study", retry=False, now=142.0)
    row = study_row(index)
    assert (row["state"], row["reason"]) == ("FAILED", "no CT series in the study")
    assert index.claim_job("w3", 60, now=1000.0) is None
    index.record_instance(ct(9, at=500.0))  # the CT arrives: another try
    row = study_row(index)
    assert (row["state"], row["version"], row["reason"]) == ("RECEIVING", 2, None)


def test_complete_without_destinations_is_delivered(index: Index) -> None:
    job = ready_job(index)
    assert index.complete_job(job, results_for(1), [], now=140.0)
    assert study_row(index)["state"] == "DELIVERED"
    assert index.status()["outbox"] == []


def test_claim_takes_the_oldest_job(index: Index) -> None:
    index.record_instance(ct(1, study="1.5", at=10.0))
    index.record_instance(ct(1, study="1.4", at=20.0))
    index.mark_ready(now=45.0, quiet_seconds=QUIET)  # only 1.5 is quiet
    index.mark_ready(now=55.0, quiet_seconds=QUIET)
    jobs = [index.claim_job("w", 60, now=60.0) for _ in range(3)]
    assert [j.study_uid if j else None for j in jobs] == ["1.5", "1.4", None]


# ---- outbox ------------------------------------------------------------------------------------


def test_outbox_rows_per_destination_and_delivery(index: Index) -> None:
    job = ready_job(index)
    assert index.complete_job(job, results_for(1), ["PACS", "ARCHIVE"], now=140.0)
    assert index.due_outbox(now=139.0) == []
    due = index.due_outbox(now=140.0)
    assert len(due) == 4
    assert {(i.sop_uid, i.destination) for i in due} == {
        (r.sop_uid, d) for r in results_for(1) for d in ("PACS", "ARCHIVE")
    }
    assert index.due_outbox(now=141.0) == [], "leased to the first sender"
    for item in due[:3]:
        index.outbox_sent(item, now=150.0)
    assert study_row(index)["state"] == "REPORTED"
    index.outbox_sent(due[3], now=151.0)
    assert study_row(index)["state"] == "DELIVERED"
    assert {o["state"] for o in index.status()["outbox"]} == {"SENT"}


def test_outbox_lease_expires_for_a_dead_sender(index: Index) -> None:
    job = ready_job(index)
    index.complete_job(job, results_for(1)[:1], ["PACS"], now=140.0)
    assert len(index.due_outbox(now=140.0, lease_seconds=30)) == 1
    assert index.due_outbox(now=169.0) == []
    assert len(index.due_outbox(now=171.0)) == 1


def test_outbox_retry_dead_and_resend(index: Index) -> None:
    job = ready_job(index)
    index.complete_job(job, results_for(1), ["PACS"], now=140.0)
    sr, seg = sorted(index.due_outbox(now=140.0, limit=10), key=lambda i: i.sop_uid)
    index.outbox_retry(sr, "association rejected", next_attempt_at=200.0)
    index.outbox_dead(seg, "0xA900 dataset does not match SOP class")
    assert index.due_outbox(now=199.0) == []
    (retried,) = index.due_outbox(now=200.0)
    assert retried.sop_uid == sr.sop_uid and retried.attempts == 1
    index.outbox_sent(retried, now=201.0)
    assert study_row(index)["state"] == "REPORTED", "a dead letter keeps it from DELIVERED"
    rows = {o["sop_instance_uid"]: o for o in index.status()["outbox"]}
    assert rows[seg.sop_uid]["state"] == "DEAD"
    assert rows[seg.sop_uid]["last_error"].startswith("0xA900")
    assert index.resend_dead("1.9.9") == 0
    assert index.resend_dead(STUDY) == 1
    assert index.resend_dead() == 0
    (resent,) = index.due_outbox(now=202.0)
    assert resent.sop_uid == seg.sop_uid and resent.attempts == 0
    index.outbox_sent(resent, now=203.0)
    assert study_row(index)["state"] == "DELIVERED"


def test_console_resends_only_dead_letters_and_records_who_did(index: Index) -> None:
    job = ready_job(index)
    index.complete_job(job, results_for(1), ["PACS", "ARCHIVE"], now=140.0)
    rows = index.due_outbox(now=140.0, limit=10)
    dead = [r for r in rows if r.destination == "PACS"]
    for item in dead:
        index.outbox_dead(item, "0xA700 out of resources")
    (pending, *_) = [r for r in rows if r.destination == "ARCHIVE"]
    assert index.console.resend_one(pending.outbox_id, actor="admin") == 0, "not a dead letter"
    assert index.console.resend_one(dead[0].outbox_id, actor="admin") == 1
    assert index.console.resend_destination("PACS", actor="ops") == len(dead) - 1
    assert index.console.resend_destination("PACS", actor="ops") == 0
    resends = [e for e in index.events.of_study(STUDY) if e["kind"] == "resend"]
    assert sorted(e["detail"]["sop_instance_uid"] for e in resends) == sorted(
        d.sop_uid for d in dead
    )
    assert [e["actor"] for e in resends] == ["admin"] + ["ops"] * (len(dead) - 1)
    assert {e["detail"]["destination"] for e in resends} == {"PACS"}


def test_study_without_destination_reads_no_destination_not_delivered(index: Index) -> None:
    job = ready_job(index)
    assert index.complete_job(job, results_for(1), [], now=150.0)
    (study,) = index.status()["studies"]
    assert study["state"] == "DELIVERED"  # the state machine's word: nothing left to do
    assert study["shown_state"] == "DONE (no destination)"


def test_due_outbox_respects_limit(index: Index) -> None:
    job = ready_job(index)
    index.complete_job(job, results_for(1), ["A", "B", "C"], now=140.0)
    first = index.due_outbox(now=140.0, limit=4)
    rest = index.due_outbox(now=140.0, limit=4)
    assert len(first) == 4 and len(rest) == 2
    assert not {i.outbox_id for i in first} & {i.outbox_id for i in rest}


# ---- operations --------------------------------------------------------------------------------


def test_status_shape(index: Index) -> None:
    job = ready_job(index, at=1_700_000_000.0)
    index.complete_job(job, results_for(1)[:1], ["PACS"], now=1_700_000_100.0)
    status = index.status()
    (study,) = status["studies"]
    assert study == {
        "study_uid": STUDY,
        "state": "REPORTED",
        "instances": 2,
        "series": 1,
        "updated_at": "2023-11-14T22:15:00Z",
        "reason": None,
        "version": 1,
        "accession_number": "",
        "study_date": "",
        "sender": "PACS",
        "modalities": ["CT"],
        "shown_state": "REPORTED",
    }
    (row,) = status["outbox"]
    assert row["sop_instance_uid"] == results_for(1)[0].sop_uid
    assert (row["destination"], row["state"], row["attempts"], row["last_error"]) == (
        "PACS",
        "PENDING",
        0,
        None,
    )
    assert row["next_attempt_at"] == "2023-11-14T22:15:00Z"
    assert StudyState(study["state"]) is StudyState.REPORTED


def test_retention_expired_and_forget(index: Index) -> None:
    job = ready_job(index)
    index.complete_job(job, results_for(1), [], now=1000.0)  # DELIVERED at 1000
    index.record_instance(ct(1, study="1.7", at=500.0))  # RECEIVING: never expires
    assert index.expired_studies(older_than=1000.0) == []
    assert index.expired_studies(older_than=1000.5) == [STUDY]
    index.forget_study(STUDY)
    assert [s["study_uid"] for s in index.status()["studies"]] == ["1.7"]
    with pytest.raises(KeyError):
        index.study_files(STUDY)
    assert index.record_instance(ct(1)) is True, "a forgotten study can be received again"
    assert study_row(index)["version"] == 1


def test_many_receiver_threads_share_one_database(index: Index) -> None:
    errors: list[BaseException] = []

    def receive(offset: int) -> None:
        try:
            for n in range(offset, 200, 4):
                index.record_instance(ct(n, at=100.0 + n))
                index.record_instance(ct(n, at=100.0 + n))  # duplicate
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=receive, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    row = study_row(index)
    assert row["instances"] == 200 and row["series"] == 1
    assert len(index.study_files(STUDY).paths) == 200


def test_sqlite_second_process_connection_sees_committed_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    writer = Index(Database.connect(url))
    writer.record_instance(ct(1))
    raw = sqlite3.connect(tmp_path / "index.sqlite")
    assert raw.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 1
    raw.close()
    writer.db.close()


def test_pydicom_uid_values_are_stored_as_text(index: Index) -> None:
    from pydicom.uid import UID

    rec = InstanceRecord(
        UID(STUDY), UID(CT_SERIES), UID(CT_SERIES + ".1"), UID(CT_IMAGE), "CT",
        Path("/x.dcm"), "PACS", 100.0,
    )  # fmt: skip
    assert index.record_instance(rec)
    index.mark_ready(now=200.0, quiet_seconds=QUIET)
    job = index.claim_job("w", 60, now=200.0)
    sr = ResultObject(UID("2.25.1"), UID("2.25"), UID(SR_CLASS), Path("/sr.dcm"), "SR")
    assert job is not None and index.complete_job(job, [sr], ["PACS"], now=201.0)
    (item,) = index.due_outbox(now=201.0)
    assert type(item.sop_uid) is str and item.sop_uid == "2.25.1"
    assert index.study_files(STUDY).series[0].instances[0].sop_class_uid == CT_IMAGE
