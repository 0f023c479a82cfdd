"""STOW-RS in `lungnode serve` with [node] receiver_processes > 1: the serve process takes STOW-RS
with its own InstanceIntake."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest
from in_process import make_ct
from node_process import NodeProcess
from ports import free_port
from stow_node import (
    CONTENT_TYPE,
    STOW_TOKEN,
    WEB_TOKEN,
    multipart_body,
)

STUDY = "1.2.826.0.1.3680043.8.498.77"


@pytest.mark.slow
def test_stow_rs_beside_receiver_processes(
    tmp_path: Path, node_process: Callable[..., NodeProcess]
) -> None:
    """With [node] receiver_processes > 1 the serve process takes STOW-RS with its own
    InstanceIntake (its own durability mark); the study is indexed and survives a stop."""
    web_port = free_port()
    node = node_process(
        role="receiver",
        allowed_calling_aets="STORESCU,DICOMWEB",
        overrides={
            "node__receiver_processes": 2,
            "web__port": web_port,
            "web__token": WEB_TOKEN,
            "web__stow_token": STOW_TOKEN,
        },
    )
    files = [
        make_ct(tmp_path / f"ct{i}.dcm", study_uid=STUDY, series_uid=STUDY + ".1") for i in range(3)
    ]
    with node:
        url = f"http://127.0.0.1:{web_port}/dicom-web/studies"
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.post(
                    url,
                    content=multipart_body(files),
                    headers={"content-type": CONTENT_TYPE, "authorization": f"Bearer {STOW_TOKEN}"},
                    timeout=60,
                )
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, node.log()[-3000:]
                time.sleep(0.2)
        assert response.status_code == 200, response.text
        assert node.stop() == 0
    status = node.status()
    (study,) = [s for s in status["studies"] if s["study_uid"] == STUDY]
    stored = {p.stem for p in node.store.rglob("*.dcm")}
    assert stored == {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
    }
    assert "STOW-RS stored calling_ae=DICOMWEB" in node.log()
