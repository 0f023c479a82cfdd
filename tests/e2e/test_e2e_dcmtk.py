"""End to end with DCMTK: storescu sends a study to the running node, storescp receives the SR.

Also: the real Lung-PET-CT-Dx CT series, a restart while a study is RECEIVING, a destination
that is down and comes up later, and a calling AE that is not on the allow-list.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from dcmtk import StorescpServer, run_echoscu, run_storescu
from dicom_validators import run_dciodvfy, run_dsrdump
from node_process import NodeProcess, PhantomFiles

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REAL_STUDY = Path("lung-pet-ct-dx") / "Lung-PET-CT-Dx" / "Lung_Dx-A0002"  # in shared_data


def _node(node_process: Callable[..., NodeProcess], storescp_port: int, **kw: Any) -> NodeProcess:
    return node_process(archive_port=storescp_port, **kw)


def _send(files: list[Path], node: NodeProcess, calling_ae: str = "STORESCU") -> None:
    proc = run_storescu(
        files, node.port, calling_ae=calling_ae, called_ae=node.ae_title, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_storescu_to_node_to_storescp_pet_ct(
    tmp_path: Path, node_process: Callable[..., NodeProcess], phantom_pet_ct: PhantomFiles
) -> None:
    study, files = phantom_pet_ct.study, phantom_pet_ct.files
    with StorescpServer(tmp_path / "archive") as archive, _node(node_process, archive.port) as node:
        assert run_echoscu(node.port, called_ae=node.ae_title).returncode == 0
        _send(files, node)
        found = archive.wait_for_modalities({"SR", "SEG"}, node.log)
        status = node.wait_for(
            lambda s: [x["state"] for x in s["studies"]] == ["DELIVERED"], 60, "DELIVERED"
        )
    (sr,) = found["SR"]
    (seg,) = found["SEG"]
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == study.study_instance_uid
    assert run_dciodvfy(Path(sr.filename)) == []
    assert run_dciodvfy(Path(seg.filename)) == []
    assert "Measurement Report" in run_dsrdump(Path(sr.filename))
    report = hd.sr.srread(sr.filename)
    assert report.content.get_volumetric_roi_measurement_groups()
    (row,) = status["studies"]
    assert row["instances"] == len(files) and row["series"] == 2


def test_real_lung_pet_ct_dx_series(
    tmp_path: Path, node_process: Callable[..., NodeProcess], shared_data: Path
) -> None:
    real_study = shared_data / REAL_STUDY
    assert real_study.is_dir(), f"shared data is present but {real_study} is not"
    files = sorted(real_study.rglob("*.dcm"))
    assert len(files) == 60
    with StorescpServer(tmp_path / "archive") as archive, _node(node_process, archive.port) as node:
        _send(files, node)
        found = archive.wait_for_modalities({"SR"}, node.log, timeout=300)
        node.wait_for(
            lambda s: [x["state"] for x in s["studies"]] == ["DELIVERED"], 120, "DELIVERED"
        )
        found = archive.by_modality()  # the SEG may arrive after the SR: read again once delivered
    (sr,) = found["SR"]
    assert run_dciodvfy(Path(sr.filename)) == []
    series_of = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series_of[ds.SOPInstanceUID] = ds.SeriesInstanceUID
    evidence = {
        item.ReferencedSOPInstanceUID
        for study_item in sr.CurrentRequestedProcedureEvidenceSequence
        for series_item in study_item.ReferencedSeriesSequence
        for item in series_item.ReferencedSOPSequence
    }
    analysed = {uid for uid in evidence if uid in series_of}
    # one CT series of the two is analysed, every slice of it referenced; the rest is the SEG
    assert len(analysed) == 30
    assert len({series_of[uid] for uid in analysed}) == 1
    assert {ds.SOPInstanceUID for ds in found.get("SEG", [])} == evidence - analysed


def test_restart_while_receiving_completes_once(
    tmp_path: Path, node_process: Callable[..., NodeProcess], phantom_ct: PhantomFiles
) -> None:
    files = phantom_ct.files
    with StorescpServer(tmp_path / "archive") as archive:
        node = _node(node_process, archive.port, quiet_seconds=600)
        with node:
            _send(files, node)
            status = node.status()
            assert [s["state"] for s in status["studies"]] == ["RECEIVING"]
        node.configure(pipeline__study_quiet_seconds=1)
        with node:
            node.wait_for(
                lambda s: [x["state"] for x in s["studies"]] == ["DELIVERED"],
                180,
                "DELIVERED after restart",
            )
            node.stop_settled()  # any duplicate delivery would be in the archive now
        found = archive.by_modality()
    assert len(found["SR"]) == 1


def test_destination_down_then_up(
    tmp_path: Path, node_process: Callable[..., NodeProcess], phantom_ct: PhantomFiles
) -> None:
    files = phantom_ct.files
    archive = StorescpServer(tmp_path / "archive")  # not started yet: the destination is down
    with _node(node_process, archive.port) as node:
        _send(files, node)
        status = node.wait_for(
            lambda s: any(o["attempts"] >= 1 and o["last_error"] for o in s["outbox"]),
            180,
            "a failed delivery attempt",
        )
        assert all(o["state"] == "PENDING" for o in status["outbox"])
        assert [s["state"] for s in status["studies"]] == ["REPORTED"]
        with archive:
            node.wait_for(
                lambda s: [x["state"] for x in s["studies"]] == ["DELIVERED"],
                120,
                "DELIVERED once the destination is up",
            )
            found = archive.by_modality()
    assert len(found["SR"]) == 1


def test_calling_ae_not_on_allow_list_is_rejected(
    node_process: Callable[..., NodeProcess], phantom_ct: PhantomFiles
) -> None:
    files = phantom_ct.files
    with _node(node_process, 9) as node:
        proc = run_storescu(files, node.port, calling_ae="INTRUDER", called_ae=node.ae_title)
        assert proc.returncode != 0
        assert "rejected" in (proc.stdout + proc.stderr).lower()
        assert node.status()["studies"] == []
        assert not list((node.workdir / "store").rglob("*.dcm"))
        assert "INTRUDER" in node.log()


def test_sigterm_stops_the_node_cleanly(node_process: Callable[..., NodeProcess]) -> None:
    node = node_process()
    node.start()
    assert node.stop() == 0
    assert "lungnode stopped" in node.log()


def test_python_m_scp_node_and_console_script_agree() -> None:
    import shutil
    import sys

    script = Path(sys.executable).parent / "lungnode"
    assert script.exists() or shutil.which("lungnode"), "console script lungnode not installed"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "serve" in proc.stdout
