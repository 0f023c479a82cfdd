"""`lungnode selftest`: a generated phantom study through the running node, and its turnaround.

The study (a CT phantom with one lesion, patient SELFTEST^LUNGNODE, accession SELFTEST, fresh
UIDs each run) goes to the running node's own C-STORE SCP ([node] host and port, over TLS when
the node speaks it); `selftest` then follows the study in the node's index (the same -c file)
until its results were accepted, and prints the turnaround broken down: transfer, completion
wait, queued, analysis (and encoding), delivery.

Where the results go, two ways:

- loopback (the default): [destinations] has an entry named `selftest` on this machine, e.g.
  `selftest = LUNGNODE-TEST@127.0.0.1:11199`. `lungnode selftest` listens there itself (an
  in-process storage SCP with that AE title) and sends the study as that AE title, so
  `[routing] send_results_to = sender` returns the results to it. It refuses to run when the
  routing would also send the phantom's results anywhere else (a test study has no place in a
  clinical PACS).
- `--destination NAME`: a destination the administrator chose (e.g. a test PACS). The study is
  sent as that destination's AE title; the run waits until the index says every result was
  accepted. It refuses when routing would not send the results to NAME.

The study stays in the node like any other (status, console) until retention removes it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from scp_node.config import Config, ConfigError, Destination
from scp_node.pipeline.routing import destinations_for

LOOPBACK_NAME = "selftest"
PATIENT_NAME = "SELFTEST^LUNGNODE"
PATIENT_ID = "LUNGNODE-SELFTEST"
ACCESSION = "SELFTEST"


class SelftestError(RuntimeError):
    """The self-test could not run or did not finish; the message says why."""


@dataclass
class Turnaround:
    study_uid: str
    instances: int
    sent_as: str
    destination: str
    stages: dict[str, float] = field(default_factory=dict)  # seconds, in pipeline order
    objects: list[str] = field(default_factory=list)  # result modalities received / accepted
    state: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "instances": self.instances,
            "sent_as": self.sent_as,
            "destination": self.destination,
            "stages_s": self.stages,
            "objects": self.objects,
            "state": self.state,
        }

    def text(self) -> str:
        lines = [
            f"selftest study {self.study_uid}: {self.instances} CT instances sent as "
            f"{self.sent_as}, results to {self.destination}: {self.state}"
        ]
        lines += [f"  {name:<16} {seconds:8.2f} s" for name, seconds in self.stages.items()]
        if self.objects:
            lines.append(f"  result objects   {', '.join(self.objects)}")
        return "\n".join(lines)


def _is_local(host: str) -> bool:
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        if host == "localhost":
            return True
    try:
        local = {i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None)}
        return host in local
    except OSError:
        return False


def choose(config: Config, destination: str | None) -> tuple[Destination, bool]:
    """The destination the results go to and whether it is the loopback one."""
    if destination is None:
        found = config.destination(LOOPBACK_NAME)
        if found is None:
            raise SelftestError(
                f"no destination named {LOOPBACK_NAME} in [destinations]: add one on this "
                f"machine, e.g. {LOOPBACK_NAME} = LUNGNODE-TEST@127.0.0.1:11199 (with "
                "[routing] send_results_to = sender), or name a configured destination with "
                "--destination"
            )
        if not _is_local(found.host):
            raise SelftestError(f"destination {found}: not on this machine (loopback expected)")
        loopback = True
    else:
        found = config.destination(destination)
        if found is None:
            raise SelftestError(
                f"--destination {destination}: not in [destinations] "
                f"({', '.join(config.destinations) or 'none defined'})"
            )
        loopback = False
    security = config.security
    if not (security.allow_any_calling_aet or found.ae_title in security.allowed_calling_aets):
        raise SelftestError(
            f"the phantom is sent as {found.ae_title} (the AE title of destination {found.name}), "
            "which the node does not admit: add it to [security] allowed_calling_aets"
        )
    routed, _ = destinations_for(config, [found.ae_title])
    if found.name not in routed:
        raise SelftestError(
            f"[routing] send_results_to = {', '.join(config.send_results_to)} does not send a "
            f"study from {found.ae_title} to {found.name}; use send_results_to = sender"
        )
    others = [n for n in routed if n != found.name]
    if loopback and others:
        raise SelftestError(
            f"the phantom's results would also go to {', '.join(others)}; the loopback "
            "self-test runs only where they come back to it alone (send_results_to = sender), "
            "or pass --destination to choose a destination on purpose"
        )
    return found, loopback


def phantom() -> list[Any]:
    """A small CT phantom with fresh UIDs, marked as a self-test."""
    from pydicom.uid import generate_uid

    from classifier.datasets.phantom import generate_study

    study = generate_study(
        seed=int(time.time()) % 10_000, histology="A", ct_size=64, ct_slices=24, pet=False
    )
    study_uid, series_uid = generate_uid(), generate_uid()
    datasets = list(study.ct)
    for ds in datasets:
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.AccessionNumber = ACCESSION
        ds.StudyDescription = "lungnode selftest (phantom, not a patient)"
    return datasets


class LoopbackReceiver:
    """A storage SCP in this process that notes the self-test study's result objects."""

    def __init__(self, destination: Destination, study_uid: str) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        self.study_uid = study_uid
        self.received: list[tuple[float, str]] = []  # (time, Modality)
        self._lock = threading.Lock()
        ae = AE(ae_title=destination.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        try:
            self._server = ae.start_server(
                (destination.host, destination.port),
                block=False,
                evt_handlers=[(evt.EVT_C_STORE, self._store)],
            )
        except OSError as exc:
            raise SelftestError(
                f"cannot listen on {destination.host}:{destination.port} for the results "
                f"({exc}); is another selftest running?"
            ) from None

    def _store(self, event: Any) -> int:
        ds = event.dataset
        if str(getattr(ds, "StudyInstanceUID", "")) == self.study_uid:
            with self._lock:
                self.received.append((time.time(), str(getattr(ds, "Modality", "?"))))
        return 0x0000

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()


def _send(config: Config, datasets: list[Any], calling_ae: str, timeout: float) -> None:
    from pynetdicom import AE

    from scp_node.dicom.pynetdicom_adapter.no_delay import NO_DELAY

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    host = config.node.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    tls_args = None
    if config.security.tls_enabled:
        from scp_node.dicom.tls import client_context

        tls_args = (client_context(config.security), host)
    assoc = ae.associate(
        host,
        config.node.port,
        ae_title=config.node.ae_title,
        tls_args=tls_args,
        evt_handlers=[NO_DELAY],
    )
    if not assoc.is_established:
        raise SelftestError(
            f"the node at {host}:{config.node.port} ({config.node.ae_title}) did not accept an "
            f"association from {calling_ae}; is `lungnode serve` running with this config?"
        )
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code != 0x0000:
                shown = "no answer" if code is None else f"0x{int(code):04X}"
                raise SelftestError(f"the node answered C-STORE with {shown}")
    finally:
        if assoc.is_established:
            assoc.release()


def run_selftest(
    config: Config, *, destination: str | None = None, timeout: float = 300.0
) -> Turnaround:
    """Send the phantom, follow it to delivery, return the turnaround; SelftestError if not."""
    from pynetdicom import _config

    from storage.index import open_index

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    target, loopback = choose(config, destination)
    datasets = phantom()
    study_uid = str(datasets[0].StudyInstanceUID)
    receiver = LoopbackReceiver(target, study_uid) if loopback else None
    index = open_index(config.storage.database_url, pool_size=1)
    try:
        started = time.time()
        _send(config, datasets, target.ae_title, min(timeout, 60.0))
        sent = time.time()
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            row = next((s for s in index.status()["studies"] if s["study_uid"] == study_uid), None)
            state = row["state"] if row else "not indexed"
            if state in ("DELIVERED", "FAILED"):
                break
            outbox = [o for o in index.status()["outbox"] if o["study_uid"] == study_uid]
            if any(o["state"] == "DEAD" for o in outbox):
                state = "dead letters"
                break
            time.sleep(0.25)
        events = index.events.of_study(study_uid)
        outbox = [o for o in index.status()["outbox"] if o["study_uid"] == study_uid]
    finally:
        index.close()
        if receiver is not None:
            receiver.close()
    result = Turnaround(
        study_uid=study_uid,
        instances=len(datasets),
        sent_as=target.ae_title,
        destination=str(target),
        state=state,
    )
    result.stages = _stages(events, started, sent)
    if receiver is not None:
        result.objects = sorted({m for _, m in receiver.received})
    else:
        result.objects = [f"{len([o for o in outbox if o['state'] == 'SENT'])} accepted"]
    if state != "DELIVERED":
        raise SelftestError(
            f"study {study_uid} did not reach DELIVERED within {timeout:g} s (state: {state}); "
            "see `lungnode status` and the node's log\n" + result.text()
        )
    return result


def _stages(events: list[dict[str, Any]], started: float, sent: float) -> dict[str, float]:
    """Seconds of each stage from the study's timeline (first occurrence of each event)."""
    at: dict[str, float] = {}
    durations: dict[str, float] = {}
    for e in events:
        at.setdefault(e["kind"], float(e["at"]))
        if e["stage"] and e["duration_s"] is not None:
            durations.setdefault(e["stage"], float(e["duration_s"]))
    stages = {"transfer": sent - started}
    if "ready" in at:
        stages["completion wait"] = at["ready"] - sent
    if "ready" in at and "claimed" in at:
        stages["queued"] = at["claimed"] - at["ready"]
    if "analysis" in durations:
        stages["analysis"] = durations["analysis"]
    if "encoding" in durations:
        stages["encoding"] = durations["encoding"]
    if "reported" in at and "delivered" in at:
        stages["delivery"] = at["delivered"] - at["reported"]
    if "delivered" in at:
        stages["turnaround"] = at["delivered"] - started
    return stages


__all__ = ["ConfigError", "SelftestError", "Turnaround", "run_selftest"]
