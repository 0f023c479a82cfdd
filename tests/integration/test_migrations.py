"""Numbered schema migrations, on SQLite and PostgreSQL.

The upgrade tests start from a schema-version-1 database written by the index code of commit
3bef5c1 itself (frozen in tests/support/index_v1, see its docstring for how it was made):
every study, job and outbox state that code can leave behind. Opening it with today's code must
upgrade it to the newest version and keep every row of every table, column for column, and the
node must carry on with those rows (claim the queued job, take over the expired lease, resend the
dead letter, name the earlier SR as predecessor).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from index_v1 import database as v1_database
from index_v1 import index as v1_index
from postgres_server import fresh_database

from storage.database import Database, DatabaseError
from storage.index import Index, InstanceRecord, ResultObject
from storage.migrations import Migration, latest_version, migrate, migration_files, schema_version
from storage.queries import DIALECTS, load, split_statements
from storage.states import JobState, OutboxState, StudyState

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
TABLES = {
    "studies": "study_uid",
    "series": "series_uid",
    "instances": "sop_uid",
    "jobs": "job_id",
    "results": "sop_uid",
    "outbox": "outbox_id",
    "schema_version": "version",
}
# study UIDs of the v1 scenario, by what the v1 code left them as
REPORTED_THEN_NEW = "1.2.826.0.9.1"  # REPORTED v1 with 4 outbox rows, then an instance: v2
FAILED = "1.2.826.0.9.2"
RUNNING = "1.2.826.0.9.3"  # ANALYZING, its job RUNNING with a lease
QUEUED = "1.2.826.0.9.4"  # READY, its job QUEUED
RECEIVING = "1.2.826.0.9.5"
DELIVERED = "1.2.826.0.9.6"
REPORTED = "1.2.826.0.9.8"  # REPORTED, one PENDING outbox row
STALE = "1.2.826.0.9.7"  # v1 job STALE, v2 job QUEUED


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty database of each dialect."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return fresh_database(request.getfixturevalue("postgres_url"))


def instance(study: str, n: int, at: float, *, pet: bool = False) -> Any:
    series = f"{study}.{2 if pet else 1}"
    return v1_index.InstanceRecord(
        study_uid=study,
        series_uid=series,
        sop_uid=f"{series}.{n}",
        sop_class_uid=PET_IMAGE if pet else CT_IMAGE,
        modality="PT" if pet else "CT",
        path=Path(f"/store/{study}/{series}/{series}.{n}.dcm"),
        calling_aet="SCANNER" if pet else "PACS",
        received_at=at,
    )


def v1_results(study: str) -> list[Any]:
    series = f"{study}.99"
    return [
        v1_index.ResultObject(f"{series}.1", series, SR_CLASS, Path(f"/r/{study}/sr.dcm"), "SR"),
        v1_index.ResultObject(f"{series}.2", series, SEG_CLASS, Path(f"/r/{study}/seg.dcm"), "SEG"),
    ]


def write_v1_database(url: str) -> None:
    """Every state the v1 code can leave, written by the v1 code (times in epoch seconds).

    Each study is made ready in its own tick, so the queue's order (by creation) is known."""
    db = v1_database.Database.connect(url)
    old = v1_index.Index(db)
    order = (REPORTED_THEN_NEW, FAILED, RUNNING, DELIVERED, REPORTED, STALE, QUEUED)
    for at, study in enumerate(order, 100):
        old.record_instance(instance(study, 1, at))
        old.record_instance(instance(study, 2, at))
        if study == REPORTED_THEN_NEW:
            for n in (1, 2):
                old.record_instance(instance(study, n, at + 0.5, pet=True), expected_in_series=2)
        assert old.mark_ready(now=at + 30.0, quiet_seconds=30.0) == [study]

    def claim(worker: str, now: float, study: str) -> Any:
        job = old.claim_job(worker, 60, now=now)
        assert job is not None and job.study_uid == study
        return job

    first = claim("w1", 201.0, REPORTED_THEN_NEW)
    assert old.complete_job(first, v1_results(first.study_uid), ["PACS", "ARCHIVE"], now=202.0)
    old.fail_job(claim("w1", 203.0, FAILED), "no CT series in the study", retry=False, now=204.0)
    assert old.renew_lease(claim("w2", 205.0, RUNNING), 60, now=206.0)  # lease until 266
    done = claim("w3", 209.0, DELIVERED)
    assert old.complete_job(done, v1_results(DELIVERED), [], now=210.0, reason="no route")
    sent, retried, dead, leased = sorted(old.due_outbox(now=220.0), key=lambda i: i.outbox_id)
    old.outbox_sent(sent, now=221.0)
    old.outbox_retry(retried, "association rejected", next_attempt_at=400.0)
    old.outbox_dead(dead, "0xA900 dataset does not match SOP class")
    assert leased.attempts == 0  # stays PENDING, leased by due_outbox until 520
    reported = claim("w3", 221.0, REPORTED)
    assert old.complete_job(reported, v1_results(REPORTED)[:1], ["PACS"], now=221.0)
    claim("w4", 222.0, STALE)
    old.record_instance(instance(STALE, 3, 223.0))  # version 2: the v1 job goes STALE
    assert old.mark_ready(now=260.0, quiet_seconds=30.0) == [STALE]
    old.fail_job(claim("w5", 261.0, QUEUED), "GPU out of memory", retry=True, now=262.0)
    old.record_instance(instance(REPORTED_THEN_NEW, 3, 300.0))  # a late slice: version 2
    old.record_instance(instance(RECEIVING, 1, 300.0))
    db.close()


def snapshot(url: str) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """(column names, every row ordered by key) of each table, read with the plain driver."""
    tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    if url.startswith("sqlite:///"):
        conn: Any = sqlite3.connect(url[len("sqlite:///") :])
    else:
        conn = psycopg.connect(url)
    try:
        for table, key in TABLES.items():
            cur = conn.execute(f"SELECT * FROM {table} ORDER BY {key}")
            tables[table] = ([d[0] for d in cur.description], [tuple(r) for r in cur.fetchall()])
    finally:
        conn.close()
    return tables


def project(columns: list[str], rows: list[tuple[Any, ...]], keep: list[str]) -> list[tuple]:
    where = [columns.index(c) for c in keep]
    return [tuple(row[i] for i in where) for row in rows]


def test_migration_files_are_numbered_and_every_query_file_loads() -> None:
    files = migration_files()
    assert [version for version, _, _ in files] == list(range(1, latest_version() + 1))
    assert files[0][1] == "initial"
    queries = sorted(p.stem for p in (Path(__file__).parents[2] / "storage/sql/queries").iterdir())
    for dialect in DIALECTS:
        for name in queries:
            assert load(name, dialect).names(), f"{name}.sql has no queries"


def test_v1_database_upgrades_without_losing_a_row(db_url: str) -> None:
    write_v1_database(db_url)
    before = snapshot(db_url)
    assert before["schema_version"][1] == [(1,)]
    assert {r[1] for r in before["studies"][1]} == set(StudyState), "every study state"
    assert {r[3] for r in before["jobs"][1]} == set(JobState), "every job state"
    # COMMITTING and COMMITTED came with Storage Commitment (migration 5): v1 cannot write them
    v1_outbox_states = set(OutboxState) - {OutboxState.COMMITTING, OutboxState.COMMITTED}
    assert {r[6] for r in before["outbox"][1]} == v1_outbox_states, "every v1 outbox state"

    db = Database.connect(db_url)
    try:
        index = Index(db)
        assert schema_version(db) == latest_version()
        after = snapshot(db_url)
        for table in TABLES:
            if table == "schema_version":
                continue
            columns, rows = before[table]
            new_columns, new_rows = after[table]
            assert rows, f"the v1 scenario wrote no {table} rows"
            assert set(columns) <= set(new_columns), f"{table} lost a column"
            assert project(new_columns, new_rows, columns) == rows, f"{table} rows changed"
        assert after["schema_version"][1] == [(latest_version(),)]
        carry_on(index)
    finally:
        db.close()


def carry_on(index: Index) -> None:
    """Today's code continues the pipeline from the rows the v1 code left."""
    ready = index.mark_ready(now=400.0, quiet_seconds=30.0)
    assert sorted(ready) == sorted([REPORTED_THEN_NEW, RECEIVING])
    claims = []
    while (job := index.claim_job("new", 60, now=401.0)) is not None:
        claims.append(job)
    by_study = {job.study_uid: job for job in claims}
    assert [job.study_uid for job in claims[:3]] == [RUNNING, QUEUED, STALE], "oldest first"
    assert set(by_study) == {QUEUED, RUNNING, STALE, REPORTED_THEN_NEW, RECEIVING}
    assert by_study[QUEUED].attempts == 2, "the retried job keeps its attempts"
    assert by_study[RUNNING].attempts == 2, "the expired lease is taken over"
    assert (by_study[STALE].version, by_study[STALE].attempts) == (2, 1)
    successor = by_study[REPORTED_THEN_NEW]
    assert successor.version == 2
    assert successor.previous_sr_sop_uid == v1_results(REPORTED_THEN_NEW)[0].sop_uid
    assert successor.previous_sr_path == v1_results(REPORTED_THEN_NEW)[0].path

    due = index.due_outbox(now=600.0)
    # the retried row, the row whose lease ran out, REPORTED's row; never SENT or DEAD
    assert sorted((i.study_uid, i.attempts) for i in due) == sorted(
        [(REPORTED_THEN_NEW, 1), (REPORTED_THEN_NEW, 0), (REPORTED, 0)]
    )
    for item in due:
        if item.study_uid == REPORTED:
            index.outbox_sent(item, now=601.0)
    assert index.resend_dead(REPORTED_THEN_NEW) == 1
    assert index.expired_studies(older_than=1000.0) == [DELIVERED, REPORTED]
    rows = {s["study_uid"]: s for s in index.status()["studies"]}
    assert rows[FAILED]["reason"] == "no CT series in the study"
    assert rows[DELIVERED]["reason"] == "no route"
    assert rows[REPORTED]["state"] == "DELIVERED"
    sr = ResultObject("2.25.7.1", "2.25.7", SR_CLASS, Path("/r/sr2.dcm"), "SR")
    assert index.complete_job(successor, [sr], ["PACS"], now=602.0)
    late = InstanceRecord(
        RECEIVING, f"{RECEIVING}.1", f"{RECEIVING}.1.9", CT_IMAGE, "CT", Path("/x"), "A", 603.0
    )
    assert index.record_instance(late)
    assert not index.record_instance(instance(FAILED, 1, 604.0)), "v1 instance rows still count"


def schema_shape(url: str) -> dict[str, Any]:
    """Columns (name, type, nullable, default, key) and indexes of every table."""
    shape: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        try:
            for table in TABLES:
                columns = conn.execute(f"PRAGMA table_info({table})").fetchall()
                indexes = sorted(
                    (name, unique, tuple(c[2] for c in conn.execute(f"PRAGMA index_info({name})")))
                    for _, name, unique, *_ in conn.execute(f"PRAGMA index_list({table})")
                )
                shape[table] = (sorted(c[1:] for c in columns), indexes)
        finally:
            conn.close()
        return shape
    with psycopg.connect(url) as pg:
        for table in TABLES:
            columns = pg.execute(
                "SELECT column_name, data_type, is_nullable, column_default"
                " FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = %s ORDER BY 1",
                (table,),
            ).fetchall()
            indexes = pg.execute(
                "SELECT indexname, replace(indexdef, current_schema() || '.', '') FROM pg_indexes"
                " WHERE schemaname = current_schema() AND tablename = %s ORDER BY 1",
                (table,),
            ).fetchall()
            shape[table] = (columns, indexes)
    return shape


def test_fresh_database_has_the_schema_of_an_upgraded_one(db_url: str, tmp_path: Path) -> None:
    """The migrations alone build the same tables as v1 code plus the migrations: a migration
    that only works on a fresh database, or on an old one, fails here."""
    write_v1_database(db_url)
    Database.connect(db_url).close()
    upgraded_db = Database.connect(db_url)
    Index(upgraded_db)
    upgraded_db.close()
    if db_url.startswith("sqlite:///"):
        fresh_url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    else:
        fresh_url = fresh_database(db_url.split("?")[0])
    fresh_db = Database.connect(fresh_url)
    Index(fresh_db)
    fresh_db.close()
    assert schema_shape(fresh_url) == schema_shape(db_url)


def steps(dialect: str, *sql: str) -> tuple[Migration, ...]:
    """The real migrations followed by test migrations latest+1, latest+2, ... from `sql`."""
    real = [
        Migration(n, name, split_statements(text, dialect, f"{n:04d}")[0])
        for n, name, text in migration_files()
    ]
    extra = [
        Migration(n, f"test_{n}", split_statements(text, dialect, f"test {n}")[0])
        for n, text in enumerate(sql, latest_version() + 1)
    ]
    return (*real, *extra)


def test_upgrade_runs_each_step_in_order_in_one_transaction(db_url: str) -> None:
    db = Database.connect(db_url)
    try:
        Index(db).record_instance(
            InstanceRecord("1.2.3", "1.2.3.1", "1.2.3.1.1", CT_IMAGE, "CT", Path("/x"), "A", 1.0)
        )
        add_table = "CREATE TABLE notes (study_uid TEXT NOT NULL, note TEXT);"
        copy_rows = "INSERT INTO notes (study_uid, note) SELECT study_uid, state FROM studies;"
        broken = "INSERT INTO no_such_table VALUES (1);"
        with pytest.raises(Exception, match="no_such_table"):
            migrate(db, steps(db.dialect, add_table, copy_rows, broken))
        assert schema_version(db) == latest_version(), "a failed step rolls the upgrade back"
        with pytest.raises(Exception, match="notes"), db.transaction() as cur:
            cur.execute("SELECT * FROM notes")
        assert migrate(db, steps(db.dialect, add_table, copy_rows)) == latest_version() + 2
        assert db.run(lambda cur: cur.execute("SELECT * FROM notes").fetchall()) == [
            ("1.2.3", "RECEIVING")
        ]
        assert migrate(db, steps(db.dialect, add_table, copy_rows)) == latest_version() + 2, (
            "nothing to do"
        )
    finally:
        db.close()


def test_newer_database_is_refused_with_both_versions(db_url: str) -> None:
    db = Database.connect(db_url)
    try:
        Index(db)
        with db.transaction() as cur:
            cur.execute("UPDATE schema_version SET version = 42")
        with pytest.raises(DatabaseError) as info:
            Index(db)
        text = str(info.value)
        assert "schema version 42" in text and f"understands ({latest_version()})" in text
        assert schema_version(db) == 42, "left as it was"
    finally:
        db.close()
