"""`lungnode check-config` (every problem at once, exit 1 on any error) and `lungnode selftest`
(a phantom through the running node's C-STORE to a loopback destination, with its turnaround),
offline and against a running node with a DCMTK storescp destination."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from configs import config_environ
from dcmtk import StorescpServer
from node_process import NodeProcess
from tls_certificates import make_certificates

from classifier.model.bundled import BUNDLED_MODEL
from classifier.model.calibration import PlattCalibration, write_calibration
from classifier.model.inference import sha256_of
from scp_node.app.check_config import ERROR, OK, WARNING, check_config, failed
from scp_node.app.selftest import SelftestError, choose
from scp_node.config import DEFAULT_CONFIG

DAY = 86400.0


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scp_node", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_config_names_every_problem_at_once(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    model = tmp_path / "model.keras"
    shutil.copy(BUNDLED_MODEL, model)
    (tmp_path / "model.keras.sha256").write_text("0" * 64 + "  model.keras\n")
    ini = tmp_path / "bad.ini"
    ini.write_text(
        "[node]\nport = 0\nmax_associations = many\n"
        "[storage]\nroot = store\nretention_without_destination = maybe\n"
        "[routing]\nsend_results_to = nowhere\n"
        f"[classifier]\nmodel = {model}\n"
        f"[destinations]\nPACS = PACS@127.0.0.1:{free_port()}\n"
        "[bogus]\nkey = 1\n"
    )
    started = time.monotonic()
    proc = _run_cli("check-config", "-c", str(ini), "--timeout", "2", env={**_env()})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    for expected in (
        "[node] port",
        "[node] max_associations",
        "[storage] retention_without_destination",
        "[routing] send_results_to",
        "[bogus]",
        "differs from " + "0" * 64,
        "[destinations] PACS",
    ):
        assert expected in out, (expected, out)
    assert out.count("ERROR") == 7, out
    assert time.monotonic() - started < 60
    # --json carries the same findings
    proc = _run_cli("check-config", "-c", str(ini), "--timeout", "2", "--json", env=_env())
    report = json.loads(proc.stdout)
    assert report["ok"] is False and len(report["findings"]) >= 7


def test_check_config_tls_expiry_warns_within_30_days_and_fails_once_expired(
    tmp_path: Path,
) -> None:
    certs = make_certificates(tmp_path / "tls")  # valid for 2 days
    environ = config_environ(
        storage__root=tmp_path / "store",
        security__tls_certificate=certs.node_cert,
        security__tls_private_key=certs.node_key,
        security__tls_ca_certificates=certs.ca,
    )
    findings = check_config(DEFAULT_CONFIG, environ)
    tls = [f for f in findings if f.check == "tls"]
    assert {f.level for f in tls} == {OK, WARNING}, tls  # the key matches; expires in 2 days
    assert any("expires in" in f.message for f in tls) and not failed(findings)
    (unmapped,) = [f for f in tls if f.subject == "[security] tls_client_ae_titles"]
    assert unmapped.level == WARNING and "may present any AE title" in unmapped.message
    mapped = dict(environ, LUNGNODE__SECURITY__TLS_CLIENT_AE_TITLES="CN=peer => STORESCU")
    assert not [f for f in check_config(DEFAULT_CONFIG, mapped) if f.subject == unmapped.subject]
    later = check_config(DEFAULT_CONFIG, environ, now=time.time() + 3 * DAY)
    expired = [f for f in later if f.check == "tls" and f.level == ERROR]
    assert {f.subject for f in expired} == {
        "[security] tls_certificate",
        "[security] tls_ca_certificates",
    }
    assert all("expired on" in f.message for f in expired) and failed(later)
    # a key that does not belong to the certificate
    environ["LUNGNODE__SECURITY__TLS_PRIVATE_KEY"] = str(certs.peer_key)
    wrong = check_config(DEFAULT_CONFIG, environ)
    assert any(f.level == ERROR and f.subject == "[security] tls_private_key" for f in wrong), wrong


def test_check_config_reports_the_models_calibration(tmp_path: Path) -> None:
    model = tmp_path / "model.keras"
    shutil.copy(BUNDLED_MODEL, model)
    environ = config_environ(storage__root=tmp_path / "store", classifier__model=model)

    def calibration_findings() -> list:
        return [f for f in check_config(DEFAULT_CONFIG, environ) if "calibrat" in f.message]

    (missing,) = calibration_findings()
    assert missing.level == WARNING and "raw lesion score" in missing.message
    write_calibration(model, PlattCalibration(1.5, -1.4), sha256_of(model), {})
    (applied,) = calibration_findings()
    assert applied.level == OK and "calibrated: Platt" in applied.message
    write_calibration(model, None, sha256_of(model), {"held_out": {}})
    (kept,) = calibration_findings()
    assert kept.level == OK and "raw lesion score, kept by the real-CT protocol" in kept.message
    write_calibration(model, PlattCalibration(1.5, -1.4), "0" * 64, {})
    (stale,) = calibration_findings()
    assert stale.level == ERROR and "fitted for weights sha256 000000000000" in stale.message


def test_loopback_selftest_refuses_routing_that_sends_elsewhere(
    make_config: Callable[..., object],
) -> None:
    loopback = "LUNGNODE-TEST@127.0.0.1:11199"
    with pytest.raises(SelftestError, match="no destination named selftest"):
        choose(make_config(), None)  # type: ignore[arg-type]
    config = make_config(destinations__selftest=loopback, routing__send_results_to="sender")
    with pytest.raises(SelftestError, match="add it to \\[security\\] allowed_calling_aets"):
        choose(config, None)  # type: ignore[arg-type]
    config = make_config(
        destinations__selftest=loopback,
        destinations__pacs="PACS@10.0.0.5:104",
        routing__send_results_to="sender,pacs",
        security__allowed_calling_aets="LUNGNODE-TEST",
    )
    with pytest.raises(SelftestError, match="would also go to pacs"):
        choose(config, None)  # type: ignore[arg-type]
    config = make_config(
        destinations__selftest=loopback,
        routing__send_results_to="sender",
        security__allowed_calling_aets="LUNGNODE-TEST",
    )
    target, is_loopback = choose(config, None)  # type: ignore[arg-type]
    assert (target.name, is_loopback) == ("selftest", True)


@pytest.mark.e2e
@pytest.mark.slow
def test_check_config_and_selftest_against_a_running_node(
    tmp_path: Path, node_process: Callable[..., NodeProcess], free_port: Callable[[], int]
) -> None:
    with StorescpServer(tmp_path / "archive") as archive:
        node = node_process(
            destinations={
                "archive": f"STORESCP@127.0.0.1:{archive.port}",
                "selftest": f"LUNGNODE-TEST@127.0.0.1:{free_port()}",
            },
            send_results_to="sender",
            quiet_seconds=1.0,
            allowed_calling_aets="ORTHANC,STORESCU,STORESCP,LUNGNODE-TEST",
        )
        with node:
            proc = node.cli("check-config", "--timeout", "5")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert proc.stdout.count("C-ECHO answered") == 1, proc.stdout  # archive
            assert "lungnode selftest's own" in proc.stdout  # listened on only by selftest
            # loopback: the selftest listens as LUNGNODE-TEST and the results come back to it
            proc = node.cli("selftest", "--timeout", "240", "--json")
            assert proc.returncode == 0, proc.stdout + proc.stderr + node.log()[-3000:]
            result = json.loads(proc.stdout)
            stages = result["stages_s"]
            for stage in ("transfer", "completion wait", "queued", "analysis", "delivery"):
                assert stages[stage] >= 0, stages
            assert stages["turnaround"] >= stages["analysis"] + stages["completion wait"]
            assert "SR" in result["objects"] and result["state"] == "DELIVERED"
            # the destination the administrator names: the archive receives the results
            proc = node.cli("selftest", "--destination", "archive", "--timeout", "240")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "turnaround" in proc.stdout and "delivery" in proc.stdout
            study_uid = proc.stdout.split()[2].rstrip(":")
            received = [pydicom.dcmread(p, stop_before_pixels=True) for p in archive.received()]
            assert any(ds.Modality == "SR" and ds.StudyInstanceUID == study_uid for ds in received)
            # the archive stops: check-config says so and fails
            archive.stop()
            proc = node.cli("check-config", "--timeout", "3")
            assert proc.returncode == 1
            assert "ERROR    echo      [destinations] archive" in proc.stdout, proc.stdout


def _env() -> dict[str, str]:
    import os

    from scp_node.config import ENV_PREFIX

    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
