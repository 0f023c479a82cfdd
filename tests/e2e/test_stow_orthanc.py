"""End to end with a real DICOMweb client: Orthanc with its DICOMweb plugin (Debian
orthanc-dicomweb) sends a study to the node by STOW-RS (`/dicom-web/servers/lungnode/stow`),
logged in as a [web] user of [web] stow_users; the node stores, analyses and delivers the
results back to Orthanc (by C-STORE) as for a study that came by C-STORE."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from node_process import NodeProcess, PhantomFiles
from orthanc import DICOMWEB_PASSWORD, DICOMWEB_USER, Orthanc, dicomweb_config, require_dicomweb
from ports import free_port

from scp_node.credentials import hash_password

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STOW_USER, STOW_PASSWORD = "orthanc", "orthanc-stow-pass-31"
WEB_TOKEN = "e2e-console-7f3a9c1b5d2e4f60"


def test_orthanc_sends_a_study_by_stow_rs_and_gets_its_results(
    tmp_path: Path, node_process: Callable[..., NodeProcess], phantom_ct: PhantomFiles
) -> None:
    require_dicomweb()
    web_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", rest_auth=(DICOMWEB_USER, DICOMWEB_PASSWORD))
    node = node_process(
        destinations={"pacs": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"},
        send_results_to="pacs",
        overrides={
            "web__port": web_port,
            "web__token": WEB_TOKEN,
            "web__users": f"{STOW_USER}:{hash_password(STOW_PASSWORD)}",
            "web__stow_users": f"{STOW_USER}:ORTHANC_WEB",
            "security__allowed_calling_aets": "ORTHANC_WEB",
        },
    )
    server = {
        "Url": f"http://127.0.0.1:{web_port}/dicom-web/",
        "Username": STOW_USER,
        "Password": STOW_PASSWORD,
    }
    config = dicomweb_config()
    config["DicomWeb"] = {**config["DicomWeb"], "Servers": {"lungnode": server}}  # type: ignore[dict-item]
    pacs.extra_config = config
    study_uid = phantom_ct.study.study_instance_uid
    with pacs, node:
        for path in phantom_ct.files:
            pacs.upload(path)
        study_id = pacs.study_id(study_uid)
        pacs.post_json("/dicom-web/servers/lungnode/stow", {"Resources": [study_id]})

        status = node.wait_for(
            lambda s: any(x["state"] == "DELIVERED" for x in s["studies"]), 240, "DELIVERED"
        )
        deadline = time.monotonic() + 30
        modalities: set[str] = set()
        while time.monotonic() < deadline and "SR" not in modalities:
            modalities = {
                s["MainDicomTags"].get("Modality", "") for s in pacs.series_of_study(study_uid)
            }
            time.sleep(0.5)
        log = node.log()
    assert "SR" in modalities, log[-3000:]
    studies = [s for s in status["studies"] if s["study_uid"] == study_uid]
    assert len(studies) == 1
    assert "STOW-RS stored calling_ae=ORTHANC_WEB" in log
    stored = log.count("STOW-RS stored calling_ae=ORTHANC_WEB")
    assert stored == len(phantom_ct.files)
