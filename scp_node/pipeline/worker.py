"""Analysis worker: claims a READY study, runs the classifier, stores the result objects (SR, SEG,
GSPS, key images, KOS), fills the outbox with what each destination receives.

The model is loaded once per worker process. With [pipeline] analysis_processes > 1 the node
runs one AnalysisWorker in each of that many processes (scp_node.pipeline.analysis_pool); on a
GPU one process is the recommended setting (CNN calls of several studies are not batched together).
A job whose worker dies keeps its lease until it expires and is then claimed again (an analysis
process that dies has its job released at once by the pool); `Index.complete_job` refuses a
stale worker, so each study version yields exactly one result set.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset

from classifier.analyze import analyze_study
from classifier.model.inference import LesionClassifier
from classifier.results.encode import encode, kind_of, warm_up
from classifier.types import StudyResult
from scp_node.config import Config
from scp_node.metrics import METRICS
from scp_node.ops.audit import OUTCOME_SERIOUS_FAILURE, AuditLog
from scp_node.pipeline.routing import destinations_for
from scp_node.pipeline.source_check import source_mismatch
from storage.index import Index
from storage.instance_store import InstanceStore
from storage.records import Job, ResultObject
from storage.states import ResultKind

log = logging.getLogger("lungnode.worker")


class SourceMismatch(Exception):
    """The source instances as read for the analysis do not name the indexed patient/study."""


@dataclasses.dataclass(frozen=True)
class _Analysis:
    """What the analysis of one study version hands the encoders, and when it ran."""

    result: StudyResult
    sources: list[Dataset]
    key_pixels: dict[int, np.ndarray] | None  # CT slice index -> HU image of each key slice
    started: float
    done: float


@dataclasses.dataclass(frozen=True)
class _Routing:
    """Where a result goes: the destinations, the kinds each receives, the problems met."""

    destinations: list[str]
    wanted: dict[str, tuple[ResultKind, ...]]
    problems: list[str]

    @property
    def kinds(self) -> set[ResultKind]:
        """The kinds to build: the SR always, and whatever any destination receives."""
        return {ResultKind.SR}.union(*self.wanted.values())


class AnalysisWorker:
    """Runs one analysis job at a time; `run_once` is called by the scheduler's worker tick."""

    def __init__(
        self,
        config: Config,
        store: InstanceStore,
        index: Index,
        worker_id: str,
        *,
        on_claim: Callable[[Job], None] | None = None,
    ) -> None:
        """`on_claim(job)` is called with each job claimed, before its analysis (an analysis
        process tells the node which job it holds, see scp_node.pipeline.analysis_pool)."""
        self._config = config
        self._on_claim = on_claim
        self._store = store
        self._index = index
        self._worker_id = worker_id
        self._classifier: LesionClassifier | None = None
        self._warmed_up = False

    @property
    def classifier(self) -> LesionClassifier:
        """The model, loaded on first use and kept for the life of the process."""
        if self._classifier is None:
            started = time.monotonic()
            self._classifier = LesionClassifier.load(self._config.classifier.model)
            info = self._classifier.info
            log.info(
                "model loaded name=%s version=%s sha256=%s in %.1f s",
                info.name,
                info.version,
                info.sha256[:16],
                time.monotonic() - started,
            )
            METRICS.model_loaded(info.name, info.version, info.sha256)
        return self._classifier

    def run_once(self) -> bool:
        """Claim and process one job; returns False when no job was waiting."""
        if not self._warmed_up:  # the first tick, normally while no study is waiting yet
            started = time.monotonic()
            warm_up()
            self._warmed_up = True
            log.debug("encoders warmed up in %.2f s", time.monotonic() - started)
        now = time.time()
        job = self._index.claim_job(self._worker_id, self._config.pipeline.job_lease_seconds, now)
        if job is None:
            return False
        if self._on_claim is not None:
            self._on_claim(job)
        log.info(
            "analysis started study=%s version=%d attempt=%d",
            job.study_uid,
            job.version,
            job.attempts,
        )
        try:
            with self._lease_kept(job):
                self._process(job)
        except SourceMismatch as exc:  # never retried: the same files give the same answer
            reason = f"study not reported: {exc}"
            log.error("analysis refused study=%s: %s", job.study_uid, reason)
            self._index.fail_job(job, reason, retry=False, now=time.time())
            self._audit_mismatch(job, reason)
        except Exception as exc:  # a bad study must never stop the worker
            retry = job.attempts < self._config.pipeline.max_job_attempts
            reason = f"analysis failed: {type(exc).__name__}: {exc}"
            log.error(
                "analysis failed study=%s attempt=%d retry=%s: %s",
                job.study_uid,
                job.attempts,
                retry,
                reason,
            )
            log.debug("%s", traceback.format_exc())
            self._index.fail_job(job, reason, retry=retry, now=time.time())
        return True

    def _audit_mismatch(self, job: Job, reason: str) -> None:
        """A Security Alert in the audit log: the study was failed, not reported."""
        config = self._config
        path = config.security.audit_log or config.storage.root / "audit.log"
        audit = AuditLog(path, config.node.ae_title)
        try:
            audit.study_failed(
                self._worker_id,
                study_uid=job.study_uid,
                reason=reason,
                outcome=OUTCOME_SERIOUS_FAILURE,
            )
        finally:
            audit.close()

    @contextmanager
    def _lease_kept(self, job: Job) -> Iterator[None]:
        """Renew the job's lease every third of its length while the analysis runs."""
        lease = self._config.pipeline.job_lease_seconds
        done = threading.Event()

        def renew() -> None:
            while not done.wait(lease / 3):
                if not self._index.renew_lease(job, lease, time.time()):
                    log.warning("lease lost study=%s version=%d", job.study_uid, job.version)
                    return

        renewer = threading.Thread(target=renew, name=f"lease-{job.job_id}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()

    def _process(self, job: Job) -> None:
        """Analyse one study version, encode its result objects into the store and fill the
        outbox; each step below is one method."""
        model = self._model_detail()
        analysis = self._analyse(job, model)
        routing = self._route(job, analysis.result)
        results = self._write(self._encode(job, analysis, routing.kinds))
        encoded = time.time()
        if self._complete(job, analysis.result, results, routing):
            self._record_done(job, analysis, results, routing, model, encoded)

    def _model_detail(self) -> dict[str, object]:
        """The model's name, version and weights digest, for the study's events."""
        info = self.classifier.info
        return {"model": info.name, "model_version": info.version, "sha256": info.sha256}

    def _analyse(self, job: Job, model: dict[str, object]) -> _Analysis:
        """Run the classifier on the study's files; SourceMismatch when the files read do not
        name the indexed patient and study."""
        study = self._index.study_files(job.study_uid)
        started = time.time()
        self._index.events.add(job.study_uid, job.version, "analysis_started", detail=model)
        analysis = analyze_study(study, self._config.classifier, self.classifier)
        done = time.time()
        result, sources = analysis.result, analysis.sources
        # The key images need the key slices' pixels; keep those, free the volumes.
        key_pixels = (
            {
                lesion.key_slice_index: analysis.ct.array[lesion.key_slice_index].copy()
                for lesion in result.lesions
            }
            if analysis.ct is not None
            else None
        )
        del analysis  # frees the CT and SUV volumes before encoding
        mismatch = source_mismatch(
            job.study_uid, self._index.patient_digests(job.study_uid), sources
        )
        if mismatch is not None:
            raise SourceMismatch(mismatch)
        for reason in result.skipped:
            log.info("analysis note study=%s: %s", job.study_uid, reason)
        return _Analysis(result, sources, key_pixels, started, done)

    def _route(self, job: Job, result: StudyResult) -> _Routing:
        """The destinations of the result and the kinds each receives ([routing]); `sender`
        routing names the AEs that sent the analysed series (every series when none was)."""
        analysed_series = [uid for uid in (result.ct_series_uid, result.pet_series_uid) if uid]
        senders = self._index.senders(job.study_uid, analysed_series or None)
        destinations, problems = destinations_for(self._config, senders)
        for problem in problems:
            log.warning("routing study=%s: %s", job.study_uid, problem)
        wanted = {name: self._config.objects_for(name) for name in destinations}
        return _Routing(destinations, wanted, problems)

    def _encode(self, job: Job, analysis: _Analysis, kinds: set[ResultKind]) -> list[Dataset]:
        """The result objects of `kinds` (the SR always), a new version naming its
        predecessor."""
        repaired: list[str] = []
        objects = encode(
            analysis.result,
            analysis.sources,
            predecessor=_read_predecessor(job.previous_sr_path),
            instance_number=job.version,
            kinds=kinds,
            histology_min_probability=self._config.results.histology_min_probability,
            histology=self._config.results.histology,
            key_pixels=analysis.key_pixels,
            notes=repaired,
        )
        if repaired:
            log.info("source attributes repaired study=%s: %s", job.study_uid, "; ".join(repaired))
        return objects

    def _write(self, objects: list[Dataset]) -> list[ResultObject]:
        """Write each result object to the store; the rows the index records of them."""
        results = []
        for ds in objects:
            path = self._store.write_dataset(ds)
            results.append(
                ResultObject(
                    sop_uid=ds.SOPInstanceUID,
                    series_uid=ds.SeriesInstanceUID,
                    sop_class_uid=ds.SOPClassUID,
                    path=path,
                    kind=kind_of(ds),
                )
            )
        return results

    def _complete(
        self, job: Job, result: StudyResult, results: list[ResultObject], routing: _Routing
    ) -> bool:
        """Record the results and their outbox rows; False (logged) when the job's lease was
        lost or new instances arrived meanwhile."""
        notes = routing.problems if result.analysed else [*result.skipped, *routing.problems]
        if self._index.complete_job(
            job, results, routing.wanted, time.time(), reason="; ".join(notes) or None
        ):
            return True
        log.warning(
            "analysis result discarded study=%s version=%d: the job lease was lost or new "
            "instances arrived; a new version will be analysed",
            job.study_uid,
            job.version,
        )
        return False

    def _record_done(
        self,
        job: Job,
        analysis: _Analysis,
        results: list[ResultObject],
        routing: _Routing,
        model: dict[str, object],
        encoded: float,
    ) -> None:
        """The study's events (analysis done, encoded, with their durations) and the log line."""
        result = analysis.result
        ev = self._index.events
        ev.add(
            job.study_uid,
            job.version,
            "analysis_done",
            at=analysis.done,
            stage="analysis",
            duration_s=analysis.done - analysis.started,
            lesions=len(result.lesions),
            detail=model,
        )
        ev.add(
            job.study_uid,
            job.version,
            "encoded",
            at=encoded,
            stage="encoding",
            duration_s=encoded - analysis.done,
            objects=",".join(r.kind for r in results),
        )
        log.info(
            "analysis done study=%s version=%d lesions=%d objects=%s destinations=%s %s",
            job.study_uid,
            job.version,
            len(result.lesions),
            ",".join(r.kind for r in results),
            ",".join(routing.destinations) or "none",
            " ".join(f"{k}={v:.2f}s" for k, v in result.timings_s.items()),
        )


def _read_predecessor(path: Path | None) -> pydicom.Dataset | None:
    if path is None or not path.exists():
        return None
    return pydicom.dcmread(path, stop_before_pixels=True)
