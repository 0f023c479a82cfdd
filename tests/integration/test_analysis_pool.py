"""[pipeline] analysis_processes: analyses in several spawned processes on a real store, index
and the bundled model; overlap, exactly-once reports, a killed process' job retried."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator

import pydicom
import pytest
from in_process import store_and_index
from node_process import PhantomFiles
from waiting import wait_until

from classifier.datasets.phantom import generate_study
from scp_node.config import Config
from scp_node.pipeline.analysis_pool import AnalysisPool
from storage.database import Database
from storage.index import Index
from storage.instance_store import InstanceStore
from storage.records import Job

TIMEOUT_S = 240.0


@pytest.fixture()
def node(make_config: Callable[..., Config]) -> tuple[Config, InstanceStore, Index]:
    config = make_config(
        destinations__pacs="PACS@127.0.0.1:9",
        pipeline__analysis_processes=2,
        pipeline__tick_seconds=0.1,
        pipeline__job_lease_seconds=600,  # a killed process' job must not wait for its lease
    )
    store = InstanceStore(config.storage.root, 0)
    index = Index(Database.connect(config.storage.database_url))
    return config, store, index


@pytest.fixture()
def pool(node: tuple[Config, InstanceStore, Index]) -> Iterator[AnalysisPool]:
    config, _, index = node
    running = AnalysisPool(config, index, config.pipeline.analysis_processes)
    running.start()
    yield running
    running.stop(drain_seconds=30)


def _wait_reported(index: Index, study_uids: set[str]) -> dict[str, str]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        states = {row["study_uid"]: row["state"] for row in index.status()["studies"]}
        if all(states.get(uid) in ("REPORTED", "FAILED") for uid in study_uids):
            return states
        time.sleep(0.2)
    raise AssertionError(f"studies not reported within {TIMEOUT_S:.0f} s: {states}")


def _sr_count(store: InstanceStore, study_uid: str) -> int:
    written = [
        pydicom.dcmread(p, stop_before_pixels=True)
        for p in store.root.joinpath(study_uid).rglob("*.dcm")
    ]
    return sum(ds.Modality == "SR" for ds in written)


def test_two_processes_analyse_two_studies_at_once_each_reported_once(
    node, pool: AnalysisPool, phantom_pet_ct: PhantomFiles
) -> None:
    config, store, index = node
    other = generate_study(seed=22, histology="A", ct_size=96, ct_slices=32, pet=True)
    studies = {phantom_pet_ct.study.study_instance_uid, other.study_instance_uid}
    store_and_index(store, index, phantom_pet_ct.datasets)
    store_and_index(store, index, [*other.ct, *other.pet])
    assert len(pool.worker_ids) == 2 and pool.model_info is not None
    assert set(index.mark_ready(time.time() + 60, config.pipeline.study_quiet_seconds)) == studies

    states = _wait_reported(index, studies)
    assert {states[uid] for uid in studies} == {"REPORTED"}
    spans, workers = {}, {}
    for uid in studies:
        events = index.events.of_study(uid)
        kinds = [e["kind"] for e in events]
        assert kinds.count("analysis_done") == 1, kinds
        assert kinds.count("claimed") == 1, kinds
        (claimed,) = [e for e in events if e["kind"] == "claimed"]
        workers[uid] = claimed["detail"]["worker"]
        started = next(e["at"] for e in events if e["kind"] == "analysis_started")
        done = next(e["at"] for e in events if e["kind"] == "analysis_done")
        spans[uid] = (started, done)
        assert _sr_count(store, uid) == 1
    # Two processes, two studies: claimed by different processes, analyses overlapping in time.
    assert set(workers.values()) == set(pool.worker_ids)
    (a0, a1), (b0, b1) = spans.values()
    assert max(a0, b0) < min(a1, b1), spans


def _one_job_running(node, pool: AnalysisPool, study: PhantomFiles) -> tuple[str, Job]:
    """Store and index `study`, mark it ready, wait until a process runs its job: (worker, job)."""
    config, store, index = node
    store_and_index(store, index, study.datasets)
    uid = study.study.study_instance_uid
    assert index.mark_ready(time.time() + 60, config.pipeline.study_quiet_seconds) == [uid]
    running = wait_until(pool.running_jobs, TIMEOUT_S, "a process to claim the job")
    ((worker, job),) = running.items()
    return worker, job


def test_a_process_killed_mid_analysis_has_its_job_retried(
    node, pool: AnalysisPool, phantom_pet_ct: PhantomFiles
) -> None:
    config, store, index = node
    uid = phantom_pet_ct.study.study_instance_uid
    worker, job = _one_job_running(node, pool, phantom_pet_ct)
    assert job.study_uid == uid and job.attempts == 1
    os.kill(pool.pids()[worker], signal.SIGKILL)

    assert _wait_reported(index, {uid})[uid] == "REPORTED"
    events = index.events.of_study(uid)
    kinds = [e["kind"] for e in events]
    (retry,) = [e for e in events if e["kind"] == "retry_analysis"]
    assert "died during the analysis" in retry["detail"]["reason"]
    assert kinds.count("claimed") == 2 and kinds.count("analysis_done") == 1, kinds
    assert "lease_expired" not in kinds  # released at once, not after the 600 s lease
    assert _sr_count(store, uid) == 1
    wait_until(
        lambda: len(pool.worker_ids) == 2 and worker not in pool.worker_ids,
        TIMEOUT_S,
        "a process to replace the killed one",
    )
    assert pool.restarts == 1


def _lease_until(index: Index, job_id: str) -> float:
    return float(
        index.db.run(
            lambda cur: cur.execute(
                "SELECT lease_until FROM jobs WHERE job_id = :job_id", {"job_id": job_id}
            ).scalar(),
            write=False,
        )
    )


def test_pausing_a_process_renews_the_lease_of_its_job(
    node, pool: AnalysisPool, phantom_pet_ct: PhantomFiles
) -> None:
    # The process renews its lease only every 200 s here (a third of 600): whatever lease the
    # job holds after pause() beyond its claim's is the pool's renewal.
    config, _, index = node
    uid = phantom_pet_ct.study.study_instance_uid
    _, job = _one_job_running(node, pool, phantom_pet_ct)
    claimed_until = _lease_until(index, job.job_id)
    time.sleep(0.5)
    before = time.time()
    try:
        assert pool.pause() == 2  # both processes; one of them runs the job
        renewed_until = _lease_until(index, job.job_id)
    finally:
        pool.resume()
    assert renewed_until >= before + config.pipeline.job_lease_seconds > claimed_until + 0.4
    assert _wait_reported(index, {uid})[uid] == "REPORTED"
