"""The node's parts in process, on a real store and SQLite index: a started `Receiver`
(`RunningNode`), datasets committed and indexed as the receiver does it (`store_and_index`), an
`Outbox` holding one analysed study's result, and the files they handle (`make_ct`,
`result_dataset`). Fixtures in conftest.py wrap them; tests needing their own
configuration build them directly."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from configs import make_config
from ports import free_port
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from scp_node.config import Config
from scp_node.dicom.instance_header import read_header
from scp_node.dicom.sop_classes import STORAGE_SOP_CLASSES
from scp_node.receive.receiver import Receiver
from storage.database import Database
from storage.index import Index, InstanceRecord, ResultObject
from storage.instance_store import InstanceStore

CT_IMAGE_STORAGE = STORAGE_SOP_CLASSES["CT Image Storage"]
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
STUDY_UID = "1.2.826.0.1.3680043.8.498.2"
NOW = 1_700_000_000.0

# The receiver under test: DCMTK's default calling AEs allowed, no free-space floor.
RECEIVER_CONFIG: dict[str, object] = {
    "storage__min_free_mb": 0,
    "security__allowed_calling_aets": "STORESCU,ECHOSCU",
    "security__require_called_aet": "yes",
}
# The sender under test: three quick attempts, retries far enough apart to see the backoff.
SENDER_CONFIG: dict[str, object] = {
    "sender__initial_backoff_seconds": 100,
    "sender__max_backoff_seconds": 1000,
    "sender__timeout_seconds": 5,
    "sender__max_attempts": 3,
}


def make_ct(
    path: Path,
    *,
    sop_uid: str | None = None,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    series_uid: str = "1.2.826.0.1.3680043.8.498.1.1",
    syntax: str = ExplicitVRLittleEndian,
    size: int = 64,
) -> Path:
    """Write a small, valid CT Image Storage file with 16-bit pixels in `syntax` (uncompressed)."""
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "Test^Receiver"
    ds.PatientID = "RCV-1"
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    pixels = (np.arange(size * size, dtype=np.uint16).reshape(size, size) * 7) % 4096
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return path


def store_and_index(
    store: InstanceStore, index: Index, datasets: Iterable[Dataset], calling_aet: str = "PACS"
) -> list[Path]:
    """Commit each dataset to the store and index it from its own header read, as the receiver
    does for a C-STORE from `calling_aet`; returns the stored paths."""
    paths = []
    for ds in datasets:
        temp = store.temp_path()
        ds.save_as(temp, enforce_file_format=True)
        path, _ = store.commit(temp, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        index.record_instance(read_header(path).record(path, calling_aet, time.time()))
        paths.append(path)
    return paths


class RunningNode:
    """A started Receiver with its store and SQLite index, for one test."""

    def __init__(
        self, tmp: Path, *, intake_paused: Callable[[], bool] | None = None, **overrides: object
    ) -> None:
        """`overrides`: config keys as `section__key` (support/configs.py) over RECEIVER_CONFIG;
        `intake_paused`: the console's switch as the Receiver reads it."""
        self.config = make_config(
            tmp / "store", **{**RECEIVER_CONFIG, "node__port": free_port(), **overrides}
        )
        self.store = InstanceStore(self.config.storage.root, self.config.storage.min_free_mb)
        self.database = Database.connect(f"sqlite:///{tmp / 'index.sqlite'}")
        self.index = Index(self.database)
        self.stored: list[str] = []
        self.receiver = Receiver(
            self.config,
            self.store,
            self.index,
            on_stored=lambda r: self.stored.append(r.sop_uid),
            intake_paused=intake_paused,
        )
        self.receiver.start()

    @property
    def port(self) -> int:
        return self.receiver.port

    @property
    def ae_title(self) -> str:
        return self.config.node.ae_title

    def files(self) -> list[Path]:
        """Every file under the store root except the index database and the audit log."""
        return sorted(
            p
            for p in self.store.root.rglob("*")
            if p.is_file() and "index.sqlite" not in p.name and p.name != "audit.log"
        )

    def close(self) -> None:
        self.receiver.stop(grace_seconds=2)
        self.database.close()


def sender_config(tmp: Path, dest_port: int, **overrides: object) -> Config:
    """SENDER_CONFIG with the destination PACS = STORESCP@127.0.0.1:`dest_port`."""
    return make_config(
        tmp / "store",
        **{**SENDER_CONFIG, "destinations__pacs": f"STORESCP@127.0.0.1:{dest_port}", **overrides},
    )


def result_dataset(sop_class: str) -> Dataset:
    """A small result object of `sop_class` in the study (what the worker would write)."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, generate_uid()
    ds.Modality = "SR"
    ds.PatientName, ds.PatientID = "Test^Sender", "SND-1"
    ds.ValueType = "CONTAINER"
    return ds


class Outbox:
    """An index with one analysed study whose result object waits in the outbox."""

    def __init__(self, tmp: Path, config: Config) -> None:
        self.config = config
        self.store = InstanceStore(config.storage.root, 0)
        self.database = Database.connect(f"sqlite:///{tmp / 'index.sqlite'}")
        self.index = Index(self.database)

    def add_result(self, sop_class: str = BASIC_TEXT_SR, destination: str = "pacs") -> Dataset:
        (ds,) = self.add_results([result_dataset(sop_class)], destination)
        return ds

    def add_results(
        self, datasets: list[Dataset], destination: str | list[str] = "pacs"
    ) -> list[Dataset]:
        """Store `datasets` as the results of one analysed study, one outbox row each per
        destination."""
        results = []
        for ds in datasets:
            path = self.store.write_dataset(ds)
            results.append(
                ResultObject(ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, path, "SR")
            )
        self.index.record_instance(
            InstanceRecord(
                study_uid=STUDY_UID,
                series_uid="1.2.826.0.1.3680043.8.498.2.1",
                sop_uid=generate_uid(),
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                modality="CT",
                path=self.store.root / "input.dcm",
                calling_aet="STORESCU",
                received_at=NOW - 100,
            )
        )
        assert self.index.mark_ready(NOW - 50, 10) == [STUDY_UID]
        job = self.index.claim_job("test-worker", 60, NOW - 40)
        assert job is not None
        destinations = [destination] if isinstance(destination, str) else destination
        assert self.index.complete_job(job, results, destinations, NOW - 30)
        return datasets

    def row(self) -> dict[str, object]:
        (row,) = self.index.status()["outbox"]
        return row

    def study_state(self) -> str:
        (study,) = self.index.status()["studies"]
        return str(study["state"])
