"""Prometheus metrics of the node (`/metrics`), with prometheus-client.

Two kinds of numbers:

- counted in this process, where the thing happens: C-STORE requests received per calling AE
  and status, bytes received, result C-STOREs sent per called AE and outcome, bytes sent
  (hooks in receiver.py and sender.py call `METRICS`). They start at 0 when the process starts,
  as Prometheus counters do.
- per receiver process (`ReceiverCollector`, read at each scrape): its open connections and
  associations, labelled by receiver number, so an administrator sees how they are spread.
- read from the index at each scrape (`IndexCollector`), so every process of the node reports
  the same node-wide numbers: studies by state, analysis queue depth, outbox pending and the age
  of its oldest row, dead letters, job lease expiries, and the histograms of each stage (waiting
  for completion, queued, analysis, encoding, delivery) and of study turnaround (first instance
  to the last result accepted by its destination), from the events of storage.events.

No label holds a UID, a patient's data or a free text from a peer: AE titles are label values
only when configured ([security] allowed_calling_aets, [destinations]); any other is `other`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger("lungnode.metrics")

OTHER = "other"
STAGES = ("waiting_for_completion", "queued", "analysis", "encoding", "delivery")
BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)


class NodeMetrics:
    """The process's registry and its counters; `METRICS` is the one instance."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._known_aes: frozenset[str] = frozenset()
        r = self.registry
        self.cstore_requests = Counter(
            "lungnode_cstore_requests",
            "C-STORE requests received, by calling AE title and DIMSE status",
            ["calling_ae", "status"],
            registry=r,
        )
        self.received_bytes = Counter(
            "lungnode_received_bytes",
            "Bytes of instances stored, by calling AE title",
            ["calling_ae"],
            registry=r,
        )
        self.sent_requests = Counter(
            "lungnode_sent_cstore_requests",
            "Result objects C-STOREd, by called AE title and outcome (sent, retry, dead; with "
            "Storage Commitment also committed, commit_retry, commit_dead)",
            ["called_ae", "outcome"],
            registry=r,
        )
        self.sent_bytes = Counter(
            "lungnode_sent_bytes",
            "Bytes of result objects accepted by their destination, by called AE title",
            ["called_ae"],
            registry=r,
        )
        self.build = Info("lungnode_build", "lungnode version", registry=r)
        self.model = Info("lungnode_model", "The analysis model loaded by this process", registry=r)
        self.associations = Gauge(
            "lungnode_associations_active", "DICOM associations open on the SCP", registry=r
        )
        self.analysis_paused = Gauge(
            "lungnode_analysis_paused",
            "1 while the analysis processes are paused for receiving "
            "([pipeline] analysis_share_while_receiving)",
            registry=r,
        )
        self.analysis_paused_seconds = Counter(
            "lungnode_analysis_paused_seconds",
            "Seconds the analysis processes were paused for receiving",
            registry=r,
        )
        self.free_disk = Gauge(
            "lungnode_free_disk_bytes", "Free bytes on the instance store's file system", registry=r
        )
        self.min_free_disk = Gauge(
            "lungnode_min_free_disk_bytes", "[storage] min_free_mb in bytes", registry=r
        )
        self.build.info({"version": version()})

    def configure(self, known_ae_titles: Iterable[str]) -> None:
        """The AE titles that may appear as label values (the configured peers)."""
        self._known_aes = frozenset(known_ae_titles)

    def ae(self, title: str) -> str:
        title = (title or "").strip()
        return title if title in self._known_aes else OTHER

    def cstore(self, calling_ae: str, status: int, nbytes: int = 0) -> None:
        """One C-STORE request answered with `status` (hook in receiver.py)."""
        ae = self.ae(calling_ae)
        self.cstore_requests.labels(ae, f"0x{status:04X}").inc()
        if nbytes:
            self.received_bytes.labels(ae).inc(nbytes)

    def sent(self, called_ae: str, outcome: str, path: Path | str | None = None) -> None:
        """One result C-STORE, or Storage Commitment, with its outcome (hook in sender.py and
        storage_commitment.py)."""
        ae = self.ae(called_ae)
        self.sent_requests.labels(ae, outcome).inc()
        if outcome == "sent" and path is not None:
            try:
                self.sent_bytes.labels(ae).inc(Path(path).stat().st_size)
            except OSError:
                pass

    def watch(
        self,
        *,
        store_root: Path,
        min_free_mb: int,
        associations: Callable[[], int] | None,
    ) -> None:
        """Gauges read at scrape time: free disk, associations open."""
        self.free_disk.set_function(lambda: float(free_bytes(store_root)))
        self.min_free_disk.set(min_free_mb * 1024 * 1024)
        if associations is not None:
            self.associations.set_function(lambda: float(associations()))

    def model_loaded(self, name: str, model_version: str, sha256: str) -> None:
        self.model.info({"name": name, "version": model_version, "sha256": sha256})


def version() -> str:
    try:
        from importlib.metadata import version as _version

        return _version("lungnode")
    except Exception:
        return "0+unknown"


def free_bytes(path: Path) -> int:
    """Free bytes for unprivileged writers on `path`'s file system (0 when it is missing)."""
    try:
        return int(shutil.disk_usage(path).free)
    except OSError:
        return 0


def histogram(
    name: str,
    doc: str,
    values: list[float],
    labels: dict[str, str] | None = None,
    family: HistogramMetricFamily | None = None,
) -> HistogramMetricFamily:
    """A cumulative histogram of `values` in BUCKETS (seconds)."""
    family = family or HistogramMetricFamily(
        name, doc, labels=list(labels) if labels else None, unit=""
    )
    buckets = [(str(float(b)), sum(1 for v in values if v <= b)) for b in BUCKETS]
    buckets.append(("+Inf", len(values)))
    family.add_metric(list((labels or {}).values()), buckets, sum(values))
    return family


class ReceiverCollector(Collector):
    """Open connections and associations of each receiver process, labelled by its number
    (1 for a receiver in the serve process); `rows()` gives (number, connections,
    associations) for each."""

    def __init__(self, rows: Callable[[], list[tuple[int, int, int]]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "lungnode_receiver_connections",
            "TCP connections open on each receiver process, associated or not",
            labels=["receiver"],
        )
        associations = GaugeMetricFamily(
            "lungnode_receiver_associations",
            "DICOM associations open on each receiver process",
            labels=["receiver"],
        )
        for number, open_connections, open_associations in self._rows():
            connections.add_metric([str(number)], open_connections)
            associations.add_metric([str(number)], open_associations)
        yield connections
        yield associations


class IndexCollector(Collector):
    """Node-wide numbers read from the index at each scrape; an index that does not answer
    gives `lungnode_index_up 0` instead of failing the scrape."""

    def __init__(self, index: Any) -> None:  # storage.index.Index
        self._index = index

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("lungnode_index_up", "1 when the index database answers")
        try:
            counts = self._index.console.counts()
            durations = self._index.events.durations()
            expiries = self._index.events.count("lease_expired")
            flags = self._index.console.flags()
        except Exception as exc:
            log.warning("metrics: the index did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        studies = GaugeMetricFamily(
            "lungnode_studies", "Studies in the index by state", labels=["state"]
        )
        from storage.states import StudyState

        for state in StudyState:
            studies.add_metric([state.value], counts["studies"].get(state.value, 0))
        yield studies
        yield GaugeMetricFamily(
            "lungnode_analysis_queue_depth",
            "Analysis jobs queued or running",
            value=counts["queue_depth"],
        )
        yield GaugeMetricFamily(
            "lungnode_outbox_pending",
            "Result objects waiting to be sent",
            value=counts["outbox_pending"],
        )
        oldest = counts["outbox_oldest_pending_at"]
        yield GaugeMetricFamily(
            "lungnode_outbox_oldest_pending_age_seconds",
            "Age of the oldest result object waiting to be sent (0 when none waits)",
            value=max(0.0, time.time() - float(oldest)) if oldest else 0.0,
        )
        yield GaugeMetricFamily(
            "lungnode_dead_letters",
            "Result objects given up on (resend from the console)",
            value=counts["dead_letters"],
        )
        yield CounterMetricFamily(
            "lungnode_job_lease_expiries",
            "Analysis jobs claimed again because their worker's lease ran out",
            value=expiries,
        )
        paused = GaugeMetricFamily(
            "lungnode_paused", "1 while intake or analysis is paused", labels=["what"]
        )
        for what in ("intake", "analysis"):
            paused.add_metric([what], 1 if flags.get(f"{what}_paused", {}).get("on") else 0)
        yield paused
        by_stage: dict[str, list[float]] = {s: [] for s in STAGES}
        turnaround: list[float] = []
        for stage, seconds in durations:
            if stage == "turnaround":
                turnaround.append(seconds)
            elif stage in by_stage:
                by_stage[stage].append(seconds)
        family = HistogramMetricFamily(
            "lungnode_stage_duration_seconds",
            "Seconds each study spent in each stage of the pipeline",
            labels=["stage"],
        )
        for stage, values in by_stage.items():
            histogram("", "", values, {"stage": stage}, family)
        yield family
        yield histogram(
            "lungnode_study_turnaround_seconds",
            "Seconds from a study's first instance to its last result accepted by the PACS",
            turnaround,
        )


METRICS = NodeMetrics()
