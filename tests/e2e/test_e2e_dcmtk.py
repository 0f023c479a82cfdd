"""End to end with DCMTK: storescu sends a study to the running node, storescp receives the SR.

Also: the real Lung-PET-CT-Dx CT series, a restart while a study is RECEIVING, a destination
that is down and comes up later, and a calling AE that is not on the allow-list.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="module")
def delivering_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NodeProcess, StorescpServer]]:
    """One node delivering to a storescp for the tests that each send a study of their own and
    look only at that study (each start loads the model)."""
    workdir = tmp_path_factory.mktemp("delivering")
    with StorescpServer(workdir / "archive") as archive:
        with NodeProcess(workdir / "node", archive_port=archive.port) as node:
            yield node, archive


def _results_of(archive: StorescpServer, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
    """What `archive` received so far for one study, by Modality."""
    return {
        modality: mine
        for modality, found in archive.by_modality().items()
        if (mine := [ds for ds in found if ds.StudyInstanceUID == study_uid])
    }


def _wait_results(
    archive: StorescpServer, study_uid: str, kinds: set[str], node: NodeProcess, timeout: float
) -> dict[str, list[pydicom.Dataset]]:
    """`_results_of` once every modality in `kinds` has arrived for the study."""
    deadline = time.monotonic() + timeout
    found: dict[str, list[pydicom.Dataset]] = {}
    while time.monotonic() < deadline:
        found = _results_of(archive, study_uid)
        if kinds <= set(found):
            return found
        time.sleep(0.5)
    raise AssertionError(f"results {kinds} not received; got {set(found)}\n{node.log()[-4000:]}")


def _study_state(status: dict[str, Any], study_uid: str) -> list[str]:
    return [x["state"] for x in status["studies"] if x["study_uid"] == study_uid]


def test_storescu_to_node_to_storescp_pet_ct(
    delivering_node: tuple[NodeProcess, StorescpServer], phantom_pet_ct: PhantomFiles
) -> None:
    node, archive = delivering_node
    study, files = phantom_pet_ct.study, phantom_pet_ct.files
    uid = study.study_instance_uid
    assert run_echoscu(node.port, called_ae=node.ae_title).returncode == 0
    _send(files, node)
    found = _wait_results(archive, uid, {"SR", "SEG"}, node, 180)
    status = node.wait_for(lambda s: _study_state(s, uid) == ["DELIVERED"], 60, "DELIVERED")
    (sr,) = found["SR"]
    (seg,) = found["SEG"]
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == uid
    assert run_dciodvfy(Path(sr.filename)) == []
    assert run_dciodvfy(Path(seg.filename)) == []
    assert "Measurement Report" in run_dsrdump(Path(sr.filename))
    report = hd.sr.srread(sr.filename)
    assert report.content.get_volumetric_roi_measurement_groups()
    (row,) = [r for r in status["studies"] if r["study_uid"] == uid]
    assert row["instances"] == len(files) and row["series"] == 2


def test_real_lung_pet_ct_dx_series(
    delivering_node: tuple[NodeProcess, StorescpServer], shared_data: Path
) -> None:
    node, archive = delivering_node
    real_study = shared_data / REAL_STUDY
    assert real_study.is_dir(), f"shared data is present but {real_study} is not"
    files = sorted(real_study.rglob("*.dcm"))
    assert len(files) == 60
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    _send(files, node)
    _wait_results(archive, study_uid, {"SR"}, node, 300)
    node.wait_for(lambda s: _study_state(s, study_uid) == ["DELIVERED"], 120, "DELIVERED")
    found = _results_of(
        archive, study_uid
    )  # the SEG may arrive after the SR: read again once delivered
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
