"""End to end against a real PACS: Orthanc pushes a PET/CT study to the node, and the SR, SEG,
GSPS, key images and KOS come back into the same study.

Orthanc (Debian package) runs on loopback ports with its own configuration; the node runs as a
subprocess with the shipped config.ini. Nothing is mocked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from dicom_validators import run_dciodvfy
from node_process import NodeProcess, PhantomFiles
from orthanc import Orthanc
from viewer_readers import dcmqi_read_seg, dcmqi_read_sr, ohif_hydrate, segment_volumes_in_sr

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RESULT_MODALITIES = {"SR", "SEG", "PR", "OT", "KO"}


def _result_series(pacs: Orthanc, study_uid: str) -> dict[str, dict]:
    return {
        s["MainDicomTags"].get("Modality", ""): s
        for s in pacs.series_of_study(study_uid)
        if s["MainDicomTags"].get("Modality") in RESULT_MODALITIES
    }


def test_orthanc_pushes_pet_ct_study_and_receives_sr_and_seg(
    tmp_path: Path, node_process: Callable[..., NodeProcess], phantom_pet_ct: PhantomFiles
) -> None:
    study, files = phantom_pet_ct.study, phantom_pet_ct.files

    pacs = Orthanc(tmp_path / "orthanc")
    node = node_process(destinations={"pacs": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"})
    pacs.modalities = {"lungnode": (node.ae_title, "127.0.0.1", node.port)}
    with pacs, node:
        for path in files:
            pacs.upload(path)
        pacs.store_study_to("lungnode", study.study_instance_uid)

        deadline = time.monotonic() + 180
        found: dict[str, dict] = {}
        while time.monotonic() < deadline and set(found) != RESULT_MODALITIES:
            found = _result_series(pacs, study.study_instance_uid)
            time.sleep(1)
        assert set(found) == RESULT_MODALITIES, f"results not in Orthanc\n{node.log()[-4000:]}"
        stored = {m: pacs.instance_file(s["Instances"][0]) for m, s in found.items()}

        sr_instance = found["SR"]["Instances"][0]
        sr_path = tmp_path / "sr.dcm"
        sr_path.write_bytes(pacs.instance_file(sr_instance))
        status = node.wait_for(
            lambda s: any(x["state"] == "DELIVERED" for x in s["studies"]), 60, "DELIVERED"
        )

    sr = pydicom.dcmread(sr_path)
    assert sr.SOPClassUID == SR_CLASS
    assert sr.StudyInstanceUID == study.study_instance_uid
    assert sr.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in study.ct + study.pet}
    assert sr.PatientID == study.ct[0].PatientID
    referenced = {
        item.ReferencedSOPInstanceUID
        for study_item in sr.CurrentRequestedProcedureEvidenceSequence
        for series_item in study_item.ReferencedSeriesSequence
        for item in series_item.ReferencedSOPSequence
    }
    assert {ds.SOPInstanceUID for ds in study.ct} <= referenced
    assert {ds.SOPInstanceUID for ds in study.pet} <= referenced
    assert "NOT FOR CLINICAL USE" in sr.SeriesDescription.upper()

    report = hd.sr.srread(sr_path)
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert groups, "the phantom's lesion was not reported"
    assert run_dciodvfy(sr_path) == []

    (row,) = [s for s in status["studies"] if s["study_uid"] == study.study_instance_uid]
    assert row["state"] == "DELIVERED"
    assert row["instances"] == len(files)
    sent = [o for o in status["outbox"] if o["study_uid"] == study.study_instance_uid]
    assert {o["state"] for o in sent} == {"SENT"}
    assert len(sent) == 4 + len(groups) + 1  # SR, SEG, GSPS, KOS, a key image each, summary
    assert {o["destination"] for o in sent} == {"pacs"}
    # Every kind as Orthanc stored it passes dciodvfy.
    for modality, data in stored.items():
        path = tmp_path / f"stored-{modality}.dcm"
        path.write_bytes(data)
        assert run_dciodvfy(path) == [], modality
    # The viewers' own readers take the SR and SEG as Orthanc stored them: dcmqi without a
    # warning, with the SEG's segment volumes equal to the SR's, and OHIF's hydration
    # ("track measurements") one rectangle and two lengths per finding.
    metadata = dcmqi_read_sr(sr_path, tmp_path)
    _, seg_volumes = dcmqi_read_seg(tmp_path / "stored-SEG.dcm", tmp_path)
    sr_volumes = segment_volumes_in_sr(metadata)
    assert sorted(seg_volumes) == sorted(sr_volumes) == list(range(1, len(groups) + 1))
    for number, volume in seg_volumes.items():
        assert volume == pytest.approx(sr_volumes[number], abs=0.001), number
    (hydrated,) = ohif_hydrate([sr_path], files)
    for group in groups:
        tools = [
            t for t in hydrated["tools"] if t["trackingUniqueIdentifier"] == group.tracking_uid
        ]
        assert sorted(t["toolType"] for t in tools) == ["Length", "Length", "RectangleROI"]
