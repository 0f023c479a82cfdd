"""The analysis worker on a real store, index and the bundled model (no network)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pydicom
import pytest
from in_process import store_and_index
from node_process import PhantomFiles

from classifier.datasets.phantom import generate_study
from scp_node.config import Config
from scp_node.pipeline.worker import AnalysisWorker
from storage.database import Database
from storage.index import Index
from storage.instance_store import InstanceStore
from storage.states import ResultKind


@pytest.fixture()
def node(make_config: Callable[..., Config]) -> tuple[Config, InstanceStore, Index]:
    config = make_config(destinations__pacs="PACS@127.0.0.1:9", pipeline__job_lease_seconds=1)
    store = InstanceStore(config.storage.root, 0)
    index = Index(Database.connect(config.storage.database_url))
    return config, store, index


def test_worker_reports_a_ready_study_and_routes_to_the_sender(
    node, phantom_pet_ct: PhantomFiles
) -> None:
    config, store, index = node
    study = phantom_pet_ct.study
    store_and_index(store, index, study.ct + study.pet)
    worker = AnalysisWorker(config, store, index, "test-worker")
    assert worker.run_once() is False  # nothing READY yet
    assert index.mark_ready(time.time() + 60, config.pipeline.study_quiet_seconds)
    assert worker.run_once() is True
    status = index.status()
    (row,) = status["studies"]
    assert row["state"] == "REPORTED"
    outbox = status["outbox"]
    assert {o["destination"] for o in outbox} == {"pacs"}  # `sender` resolved by AE title
    written = [
        pydicom.dcmread(p, stop_before_pixels=True)
        for p in store.root.joinpath(study.study_instance_uid).rglob("*.dcm")
    ]
    results = {ds.SOPInstanceUID: ds.Modality for ds in written if ds.Modality != "CT"}
    results = {uid: m for uid, m in results.items() if m != "PT"}
    # SR, SEG, GSPS, one key image per lesion plus the summary, KOS: all to the one peer.
    assert sorted(set(results.values())) == ["KO", "OT", "PR", "SEG", "SR"]
    assert {o["sop_instance_uid"] for o in outbox} == set(results)


def test_a_destination_line_overrides_result_objects(
    make_config: Callable[..., Config], phantom_pet_ct: PhantomFiles
) -> None:
    config = make_config(
        destinations__pacs="PACS@127.0.0.1:9",
        destinations__viewer="VIEWER@127.0.0.1:9 result_objects=sr,gsps,ko",
        routing__send_results_to="pacs, viewer",
        routing__result_objects="sr, seg",
    )
    assert config.objects_for("viewer") == (ResultKind.SR, ResultKind.GSPS, ResultKind.KO)
    assert config.objects_for("PACS") == (ResultKind.SR, ResultKind.SEG)
    store = InstanceStore(config.storage.root, 0)
    index = Index(Database.connect(config.storage.database_url))
    study = phantom_pet_ct.study
    store_and_index(store, index, study.ct + study.pet)
    index.mark_ready(time.time() + 60, 0)
    assert AnalysisWorker(config, store, index, "test-worker").run_once()
    modality = {
        ds.SOPInstanceUID: ds.Modality
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in store.root.rglob("*.dcm"))
    }
    sent: dict[str, list[str]] = {}
    for row in index.status()["outbox"]:
        sent.setdefault(row["destination"], []).append(modality[row["sop_instance_uid"]])
    assert sorted(sent["pacs"]) == ["SEG", "SR"]
    assert sorted(sent["viewer"]) == ["KO", "PR", "SR"]
    # Nothing is built that no destination receives.
    assert "OT" not in modality.values()


@pytest.mark.slow
def test_new_instances_after_the_report_give_a_second_version_naming_the_first(
    node, phantom_ct: PhantomFiles
) -> None:
    config, store, index = node
    study = phantom_ct.study
    worker = AnalysisWorker(config, store, index, "test-worker")
    store_and_index(store, index, study.ct[:-1])
    index.mark_ready(time.time() + 60, 0)
    assert worker.run_once()
    store_and_index(store, index, study.ct[-1:])
    index.mark_ready(time.time() + 120, 0)
    assert worker.run_once()
    reports = [pydicom.dcmread(p) for p in store.root.rglob("*.dcm")]
    reports = [ds for ds in reports if ds.Modality == "SR"]
    assert len(reports) == 2
    first, second = sorted(reports, key=lambda ds: int(ds.InstanceNumber))
    predecessor = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID


@pytest.mark.slow
def test_lease_is_renewed_while_an_analysis_runs(node) -> None:
    config, store, index = node
    study = generate_study(seed=5, histology="G", ct_size=64, ct_slices=12, pet=False)
    store_and_index(store, index, study.ct)
    index.mark_ready(time.time() + 60, 0)
    job = index.claim_job("slow-worker", config.pipeline.job_lease_seconds, time.time())
    assert job is not None
    worker = AnalysisWorker(config, store, index, "slow-worker")
    with worker._lease_kept(job):
        time.sleep(2.5)  # 2.5 leases: without renewal another worker would take the job
        assert index.claim_job("other-worker", 1, time.time()) is None
    time.sleep(1.2)
    assert index.claim_job("other-worker", 1, time.time()) is not None


def test_study_from_an_unknown_sender_is_reported_with_a_reason_a_person_can_act_on(node) -> None:
    config, store, index = node
    study = generate_study(seed=6, histology="B", ct_size=64, ct_slices=16, pet=False)
    store_and_index(store, index, study.ct, calling_aet="MODALITY1")
    index.mark_ready(time.time() + 60, 0)
    assert AnalysisWorker(config, store, index, "test-worker").run_once()
    (row,) = index.status()["studies"]
    assert row["state"] == "DELIVERED"  # nothing to send
    assert "'MODALITY1' is not in [destinations]" in row["reason"]
    assert index.status()["outbox"] == []


def test_study_that_cannot_be_analysed_gets_an_sr_saying_why(node) -> None:
    config, store, index = node
    study = generate_study(seed=7, histology="A", ct_size=64, ct_slices=16, pet=True)
    store_and_index(store, index, study.pet)  # no CT at all
    index.mark_ready(time.time() + 60, 0)
    assert AnalysisWorker(config, store, index, "test-worker").run_once()
    (row,) = index.status()["studies"]
    assert row["state"] == "REPORTED", row
    assert "no CT series qualifies for analysis" in row["reason"]
    (sr,) = [
        ds for ds in (pydicom.dcmread(p) for p in store.root.rglob("*.dcm")) if ds.Modality == "SR"
    ]
    texts = " ".join(str(e.value) for e in sr.iterall() if e.keyword == "TextValue")
    assert "no CT series qualifies for analysis" in texts
    evidence = {
        ref.ReferencedSOPInstanceUID
        for item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {ds.SOPInstanceUID for ds in study.pet}


@pytest.mark.parametrize(
    ("keyword", "value", "named"),
    [
        ("PatientID", "OTHER-PATIENT", "Patient ID"),
        ("PatientBirthDate", "19991231", "Patient's Birth Date"),
        ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.99", "Study Instance UID"),
    ],
)
def test_sources_read_otherwise_than_indexed_fail_the_study_audited(
    node, keyword: str, value: str, named: str
) -> None:
    """Defence in depth (issue 17): a stored slice whose header pydicom reads with another
    patient or study than the index holds (as a header read that disagreed with pydicom
    would leave it) fails the study, audited, and nothing is encoded or sent."""
    config, store, index = node
    study = generate_study(seed=8, histology="A", ct_size=64, ct_slices=16, pet=False)
    for ds in study.ct:
        ds.PatientBirthDate = "19600101"
    store_and_index(store, index, study.ct)
    victim = next(store.root.rglob("*.dcm"))
    ds = pydicom.dcmread(victim)
    setattr(ds, keyword, value)  # the file now reads otherwise than its index row
    ds.save_as(victim, enforce_file_format=True)
    index.mark_ready(time.time() + 60, 0)
    assert AnalysisWorker(config, store, index, "test-worker").run_once()
    (row,) = index.status()["studies"]
    assert row["state"] == "FAILED", row
    assert f"names another {named} than the index holds" in row["reason"]
    assert index.status()["outbox"] == []
    assert {p.name for p in store.root.rglob("*.dcm")} == {
        f"{ds.SOPInstanceUID}.dcm" for ds in study.ct
    }, "no result object was written"
    audit = (config.security.audit_log or config.storage.root / "audit.log").read_text()
    (line,) = [json.loads(x) for x in audit.splitlines() if "source-mismatch" in x]
    assert line["StudyInstanceUID"] == study.study_instance_uid
    assert line["EventOutcomeIndicator"] == 8
    assert value not in audit and "19600101" not in audit
