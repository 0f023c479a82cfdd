"""PostgreSQL scale-out: several nodes (connections) share one queue and outbox safely.

Each test opens two or more Database connections to one database, as separate processes on
separate machines would, and races them from threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from postgres_server import fresh_database

from storage.database import Cursor, Database, DatabaseError
from storage.index import Index, InstanceRecord, ResultObject, open_index

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
STUDIES = 12


def record(study: str, n: int, at: float = 100.0) -> InstanceRecord:
    series = f"{study}.1"
    return InstanceRecord(
        study, series, f"{series}.{n}", CT_IMAGE, "CT", Path(f"/s/{n}.dcm"), "PACS", at
    )


@pytest.fixture
def nodes(postgres_url: str) -> Iterator[list[Index]]:
    """Three Index objects on three connections to one fresh database."""
    url = fresh_database(postgres_url)
    indexes = [Index(Database.connect(url)) for _ in range(3)]
    yield indexes
    for index in indexes:
        index.db.close()


def race(workers: list[Callable[[], None]]) -> None:
    """Start every worker at once and wait; re-raise the first error."""
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def run(work: Callable[[], None]) -> None:
        barrier.wait()
        try:
            work()
        except BaseException as exc:  # noqa: BLE001  (re-raised below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]


def make_ready(index: Index, studies: int = STUDIES) -> list[str]:
    uids = [f"1.2.3.{i}" for i in range(1, studies + 1)]
    for uid in uids:
        index.record_instance(record(uid, 1))
    assert sorted(index.mark_ready(now=200.0, quiet_seconds=30.0)) == sorted(uids)
    return uids


def test_concurrent_claims_never_share_a_job(nodes: list[Index]) -> None:
    uids = make_ready(nodes[0])
    claimed: dict[str, list[str]] = {"a": [], "b": []}

    def worker(index: Index, name: str) -> Callable[[], None]:
        def loop() -> None:
            while (job := index.claim_job(name, 60, now=201.0)) is not None:
                claimed[name].append(job.study_uid)

        return loop

    race([worker(nodes[0], "a"), worker(nodes[1], "b")])
    assert not set(claimed["a"]) & set(claimed["b"])
    assert sorted(claimed["a"] + claimed["b"]) == sorted(uids)


def test_concurrent_outbox_callers_never_share_a_row(nodes: list[Index]) -> None:
    uids = make_ready(nodes[0], studies=4)
    while (job := nodes[0].claim_job("w", 60, now=201.0)) is not None:
        sr = ResultObject(f"{job.study_uid}.9.1", f"{job.study_uid}.9", SR_CLASS, Path("/r"), "SR")
        assert nodes[0].complete_job(job, [sr], ["P1", "P2", "P3"], now=202.0)
    taken: dict[int, list[str]] = {0: [], 1: []}

    def sender(i: int) -> Callable[[], None]:
        def loop() -> None:
            while batch := nodes[i].due_outbox(now=203.0, limit=2):
                taken[i].extend(item.outbox_id for item in batch)
                for item in batch:
                    nodes[i].outbox_sent(item, now=204.0)

        return loop

    race([sender(0), sender(1)])
    assert not set(taken[0]) & set(taken[1])
    assert len(taken[0]) + len(taken[1]) == len(uids) * 3
    states = {s["study_uid"]: s["state"] for s in nodes[2].status()["studies"]}
    assert states == dict.fromkeys(uids, "DELIVERED"), "the last row of each study delivers it"


def test_concurrent_schedulers_enqueue_one_job_per_study(nodes: list[Index]) -> None:
    uids = [f"1.2.4.{i}" for i in range(1, STUDIES + 1)]
    for uid in uids:
        nodes[0].record_instance(record(uid, 1))
    made_ready: list[list[str]] = [[], [], []]

    def tick(i: int) -> Callable[[], None]:
        return lambda: made_ready[i].extend(nodes[i].mark_ready(now=200.0, quiet_seconds=30.0))

    race([tick(0), tick(1), tick(2)])
    assert sorted(made_ready[0] + made_ready[1] + made_ready[2]) == sorted(uids)
    jobs = []
    while (job := nodes[0].claim_job("w", 60, now=201.0)) is not None:
        jobs.append(job.study_uid)
    assert sorted(jobs) == sorted(uids)


def test_concurrent_receivers_count_every_instance_once(nodes: list[Index]) -> None:
    study = "1.2.5"

    def receiver(i: int) -> Callable[[], None]:
        def loop() -> None:
            for n in range(60):
                nodes[i].record_instance(record(study, n, at=100.0 + n))  # all send everything

        return loop

    race([receiver(0), receiver(1), receiver(2)])
    (row,) = nodes[0].status()["studies"]
    assert row["instances"] == 60 and row["version"] == 1
    assert len(nodes[1].study_files(study).paths) == 60


def test_new_instance_racing_completion_yields_one_consistent_outcome(nodes: list[Index]) -> None:
    (study,) = make_ready(nodes[0], studies=1)
    job = nodes[0].claim_job("w", 60, now=201.0)
    assert job is not None
    outcome: dict[str, bool] = {}
    sr = ResultObject(f"{study}.9.1", f"{study}.9", SR_CLASS, Path("/r"), "SR")
    race(
        [
            lambda: outcome.setdefault("completed", nodes[0].complete_job(job, [sr], ["P"], 202.0)),
            lambda: outcome.setdefault("recorded", nodes[1].record_instance(record(study, 2))),
        ]
    )
    assert outcome["recorded"]
    (row,) = nodes[2].status()["studies"]
    # either the result made it first (REPORTED v1, then the instance made v2), or not at all
    assert (row["state"], row["version"]) == ("RECEIVING", 2)
    assert len(nodes[2].status()["outbox"]) == (1 if outcome["completed"] else 0)


def test_pool_replaces_connections_the_server_dropped(postgres_url: str) -> None:
    """A server restart or failover drops every connection: the pool checks each connection
    as it lends it and opens a new one, so no transaction of the node fails."""
    url = fresh_database(postgres_url)
    index = open_index(url, pool_size=2)
    other = open_index(url, pool_size=1)
    try:
        index.record_instance(record("1.2.6", 1))
        backends = {
            index.db.run(lambda cur: cur.execute("SELECT pg_backend_pid()").scalar())
            for _ in range(4)
        }
        for pid in backends:
            other.db.run(
                lambda cur, pid=pid: cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            )
        (row,) = index.status()["studies"]
        assert row["instances"] == 1
        assert index.record_instance(record("1.2.6", 2)) is True
        after = index.db.run(lambda cur: cur.execute("SELECT pg_backend_pid()").scalar())
        assert after not in backends, "a new connection, not the terminated one"
    finally:
        index.close()
        other.close()


def test_pool_lets_threads_work_at_once(postgres_url: str) -> None:
    """pool_size connections: that many transactions run at the same time (a single shared
    connection would serialise them; each of these waits for all the others)."""
    url = fresh_database(postgres_url)
    index = open_index(url, pool_size=3)
    barrier = threading.Barrier(3, timeout=20)
    pids: list[int] = []

    def hold() -> None:
        def work(cur: Cursor) -> None:
            pids.append(cur.execute("SELECT pg_backend_pid()").scalar())
            barrier.wait()  # inside the transaction: all three are open together

        index.db.run(work, write=False)

    try:
        race([hold, hold, hold])
        assert len(set(pids)) == 3
    finally:
        index.close()


def test_pool_size_must_be_positive(postgres_url: str) -> None:
    with pytest.raises(DatabaseError, match="database_pool_size"):
        open_index(postgres_url, pool_size=0)
