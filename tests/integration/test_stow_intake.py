"""STOW-RS intake (scp_node.web.stow) on the real web server in front of a real receiver: the
same checks, durability, audit and completion as C-STORE, the Store Instances Response of
PS3.18, and the hostile inputs C-STORE is tested with (oversized parts, wrong media type,
missing boundary, two patients, a reused SOP Instance UID, a slow client, bad credentials)."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from configs import make_config
from dcmtk import require_tool, run_storescu
from in_process import make_ct
from stow_node import (
    CONTENT_TYPE,
    STOW_TOKEN,
    WEB_TOKEN,
    StowNode,
    multipart_body,
    part,
    trickle,
)
from tls_certificates import make_certificates
from waiting import wait_until

from scp_node.app.check_config import web_warnings
from scp_node.config import ConfigError
from scp_node.credentials import hash_password
from scp_node.dicom.status import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    INSTANCE_IN_OTHER_STUDY,
    OUT_OF_RESOURCES,
    PATIENT_MISMATCH,
    SOP_CLASS_NOT_SUPPORTED,
)

STUDY = "1.2.826.0.1.3680043.8.498.77"
SERIES = STUDY + ".1"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[StowNode]:
    running = StowNode(tmp_path)
    yield running
    running.close()


def cts(tmp_path: Path, n: int, *, study: str = STUDY, name: str = "ct") -> list[Path]:
    return [
        make_ct(tmp_path / f"{name}{i}.dcm", study_uid=study, series_uid=study + ".1")
        for i in range(n)
    ]


def stow(
    node: StowNode,
    body: Any,
    *,
    path: str = "/dicom-web/studies",
    content_type: str = CONTENT_TYPE,
    token: str | None = STOW_TOKEN,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> httpx.Response:
    sent = {"content-type": content_type, **(headers or {})}
    if token is not None:
        sent["authorization"] = f"Bearer {token}"
    return httpx.post(node.url + path, content=body, headers=sent, timeout=timeout)


def referenced(response: httpx.Response) -> list[str]:
    items = response.json().get("00081199", {}).get("Value", [])
    return [item["00081155"]["Value"][0] for item in items]


def failed(response: httpx.Response) -> dict[str, int]:
    """SOP Instance UID ('' when unknown) -> Failure Reason."""
    items = response.json().get("00081198", {}).get("Value", [])
    return {
        (item["00081155"].get("Value") or [""])[0]: item["00081197"]["Value"][0] for item in items
    }


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def with_patient(path: Path, patient_id: str) -> Path:
    ds = pydicom.dcmread(path)
    ds.PatientID = patient_id
    ds.save_as(path)
    return path


def stored_uids(node: StowNode) -> set[str]:
    return {p.stem for p in node.files() if p.suffix == ".dcm"}


# ---- intake, response, durability, audit ------------------------------------------------------


def test_a_study_is_stored_indexed_audited_and_released(node: StowNode, tmp_path: Path) -> None:
    files = cts(tmp_path, 3)
    response = stow(node, multipart_body(files))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    assert sorted(referenced(response)) == sorted(sop_uid(f) for f in files)
    assert "00081198" not in response.json()
    # durable in the store, at the same paths a C-STORE would use, and indexed
    assert stored_uids(node) == {sop_uid(f) for f in files}
    assert list(node.store.incoming.iterdir()) == []
    study = node.index.console.study(STUDY)
    assert study is not None
    assert [(s["calling_ae"], s["instances"]) for s in study["instances_by_sender"]] == [
        ("DICOMWEB", 3)
    ]
    # the request was released like an association: completion is checked
    assert node.released == [node.config.pipeline.release_quiet_seconds]
    events = node.audit_events()
    stored = [e for e in events if e["Event"] == "instance-stored"]
    assert {e["SOPInstanceUID"] for e in stored} == {sop_uid(f) for f in files}
    assert {e["CallingAETitle"] for e in stored} == {"DICOMWEB"}
    ended = [e for e in events if e["Event"] == "association-released"]
    assert ended and ended[-1]["InstancesStored"] == 3
    # idempotent: the same instances again are answered as stored
    again = stow(node, multipart_body(files))
    assert again.status_code == 200 and len(referenced(again)) == 3


def test_a_study_sent_half_by_c_store_and_half_by_stow_rs_is_one_study(
    node: StowNode, tmp_path: Path
) -> None:
    require_tool("storescu")
    files = cts(tmp_path, 4)
    result = run_storescu(files[:2], node.port, called_ae=node.ae_title)
    assert result.returncode == 0, result.stderr
    response = stow(node, multipart_body(files[2:]))
    assert response.status_code == 200, response.text
    study = node.index.console.study(STUDY)
    assert study is not None
    senders = {s["calling_ae"]: s["instances"] for s in study["instances_by_sender"]}
    assert senders == {"STORESCU": 2, "DICOMWEB": 2}
    assert len(node.index.console.search(study_uid=STUDY)) == 1
    assert stored_uids(node) == {sop_uid(f) for f in files}


def test_study_in_the_path_refuses_instances_of_another_study(
    node: StowNode, tmp_path: Path
) -> None:
    files = cts(tmp_path, 1, study=STUDY + ".9")
    response = stow(node, multipart_body(files), path=f"/dicom-web/studies/{STUDY}")
    assert response.status_code == 409
    assert failed(response) == {sop_uid(files[0]): DATA_SET_DOES_NOT_MATCH_SOP_CLASS}
    assert stored_uids(node) == set()
    ok = stow(node, multipart_body(cts(tmp_path, 1, name="b")), path=f"/dicom-web/studies/{STUDY}")
    assert ok.status_code == 200
    assert stow(node, multipart_body(files), path="/dicom-web/studies/1.2.x").status_code == 400


# ---- hostile input ------------------------------------------------------------------------


def test_wrong_media_type_and_missing_boundary_are_refused(node: StowNode, tmp_path: Path) -> None:
    body = multipart_body(cts(tmp_path, 1))
    assert stow(node, body, content_type="application/dicom").status_code == 415
    assert stow(node, body, content_type="application/json").status_code == 415
    bulk = 'multipart/related; type="application/dicom+json"; boundary=x'
    assert stow(node, body, content_type=bulk).status_code == 415
    no_boundary = stow(node, body, content_type='multipart/related; type="application/dicom"')
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["error"]
    other_boundary = 'multipart/related; type="application/dicom"; boundary=nothere'
    assert stow(node, body, content_type=other_boundary).status_code == 400
    assert stow(node, b"", content_type=CONTENT_TYPE).status_code == 400
    assert stored_uids(node) == set()


def test_parts_that_are_not_storable_instances_fail_with_their_reasons(
    node: StowNode, tmp_path: Path
) -> None:
    good = cts(tmp_path, 1)[0]
    secondary = pydicom.dcmread(make_ct(tmp_path / "other.dcm", study_uid=STUDY))
    secondary.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.9"  # not among the node's SOP classes
    secondary.file_meta.MediaStorageSOPClassUID = secondary.SOPClassUID
    secondary.save_as(tmp_path / "other.dcm")
    body = (
        part(good.read_bytes())
        + part(b"not DICOM at all" * 100)
        + part((tmp_path / "other.dcm").read_bytes())
        + part(good.read_bytes(), media_type="text/plain")
        + b"--lungnode-test-boundary-3f2a--\r\n"
    )
    response = stow(node, body)
    assert response.status_code == 202, response.text
    assert referenced(response) == [sop_uid(good)]
    items = response.json()["00081198"]["Value"]
    reasons = sorted(item["00081197"]["Value"][0] for item in items)
    assert reasons == sorted([CANNOT_UNDERSTAND, SOP_CLASS_NOT_SUPPORTED, CANNOT_UNDERSTAND])
    assert failed(response)[str(secondary.SOPInstanceUID)] == SOP_CLASS_NOT_SUPPORTED
    assert stored_uids(node) == {sop_uid(good)}
    assert list(node.store.incoming.iterdir()) == []


def test_an_oversized_part_fails_and_is_never_kept(tmp_path: Path) -> None:
    node = StowNode(tmp_path, storage__max_instance_mb=1)
    try:
        small = cts(tmp_path, 1)[0]
        big = make_ct(tmp_path / "big.dcm", study_uid=STUDY, series_uid=SERIES, size=1024)
        response = stow(node, multipart_body([big, small]))
        assert response.status_code == 202, response.text
        assert referenced(response) == [sop_uid(small)]
        assert failed(response) == {sop_uid(big): OUT_OF_RESOURCES}  # named from its head
        assert stored_uids(node) == {sop_uid(small)}
        assert list(node.store.incoming.iterdir()) == []
    finally:
        node.close()


def test_a_request_over_the_body_or_part_count_limit_is_refused(tmp_path: Path) -> None:
    node = StowNode(tmp_path, web__stow_max_request_mb=1, web__stow_max_parts=2)
    try:
        big = make_ct(tmp_path / "big.dcm", study_uid=STUDY, series_uid=SERIES, size=1024)
        assert stow(node, multipart_body([big])).status_code == 413  # Content-Length
        chunks = trickle(multipart_body([big]), 64 * 1024, 0)  # chunked: counted as it comes
        assert stow(node, chunks).status_code == 413
        three = stow(node, multipart_body(cts(tmp_path, 3)))
        assert three.status_code == 413 and three.json()["stored"] == 2
        assert list(node.store.incoming.iterdir()) == []
    finally:
        node.close()


def test_two_patients_in_one_request_the_second_is_refused(node: StowNode, tmp_path: Path) -> None:
    first, second = cts(tmp_path, 2)
    with_patient(second, "SOMEONE-ELSE")
    response = stow(node, multipart_body([first, second]))
    assert response.status_code == 202
    assert referenced(response) == [sop_uid(first)]
    assert failed(response) == {sop_uid(second): PATIENT_MISMATCH}
    refused = [e for e in node.audit_events() if e["Event"] == "instance-refused"]
    assert [e["Status"] for e in refused] == ["0xC221"]


def test_a_sop_instance_uid_reused_in_another_study_is_refused(
    node: StowNode, tmp_path: Path
) -> None:
    (original,) = cts(tmp_path, 1)
    assert stow(node, multipart_body([original])).status_code == 200
    reused = make_ct(tmp_path / "reused.dcm", sop_uid=sop_uid(original), study_uid=STUDY + ".2")
    response = stow(node, multipart_body([reused]))
    assert response.status_code == 409
    assert failed(response) == {sop_uid(original): INSTANCE_IN_OTHER_STUDY}


def test_a_slow_client_is_cut_after_the_deadline(tmp_path: Path) -> None:
    node = StowNode(tmp_path, web__stow_timeout_seconds=1)
    try:
        body = multipart_body(cts(tmp_path, 1))
        response = stow(node, trickle(body, 512, 0.1))
        assert response.status_code == 408
        dropped = [e for e in node.audit_events() if e["Event"] == "connection-dropped"]
        assert dropped and "stow_timeout_seconds" in dropped[-1]["EventOutcomeDescription"]
        assert stored_uids(node) == set()
        assert list(node.store.incoming.iterdir()) == []
    finally:
        node.close()


def test_a_stored_instance_survives_with_the_index_row_before_the_answer(
    node: StowNode, tmp_path: Path
) -> None:
    """Durable before the 200: the file is at its final path and indexed when the client
    reads the answer (the commit path is storage.instance_store's, fsynced)."""
    (ct,) = cts(tmp_path, 1)
    assert stow(node, multipart_body([ct])).status_code == 200
    final = node.store.path_for(STUDY, STUDY + ".1", sop_uid(ct))
    assert final.read_bytes() == ct.read_bytes()
    assert node.index.console.study(STUDY) is not None


def test_paused_intake_refuses_both_doors_with_out_of_resources(tmp_path: Path) -> None:
    require_tool("storescu")
    paused = [True]
    node = StowNode(tmp_path, intake_paused=lambda: paused[0])
    try:
        first, second = cts(tmp_path, 2)
        response = stow(node, multipart_body([first]))
        assert response.status_code == 409
        assert failed(response) == {sop_uid(first): OUT_OF_RESOURCES}
        result = run_storescu([second], node.port, called_ae=node.ae_title, extra_args=["-d"])
        assert "0xa700" in (result.stderr + result.stdout).lower()
        assert stored_uids(node) == set()
        paused[0] = False
        assert stow(node, multipart_body([first])).status_code == 200
    finally:
        node.close()


def test_stow_rs_over_https_with_the_web_servers_tls(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs")
    node = StowNode(
        tmp_path,
        web__tls="yes",
        security__tls_certificate=certs.node_cert,
        security__tls_private_key=certs.node_key,
        security__tls_ca_certificates=certs.ca,
    )
    try:
        files = cts(tmp_path, 2)
        https = node.url.replace("http://", "https://")
        response = httpx.post(
            https + "/dicom-web/studies",
            content=multipart_body(files),
            headers={"content-type": CONTENT_TYPE, "authorization": f"Bearer {STOW_TOKEN}"},
            verify=ssl.create_default_context(cafile=str(certs.ca)),
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert stored_uids(node) == {sop_uid(f) for f in files}
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
            stow(node, multipart_body(files), timeout=5)
    finally:
        node.close()


# ---- credentials ----------------------------------------------------------------------------


def test_no_or_wrong_credentials_are_refused_audited_and_rate_limited(
    node: StowNode, tmp_path: Path
) -> None:
    body = multipart_body(cts(tmp_path, 1))
    missing = stow(node, body, token=None)
    assert missing.status_code == 401 and "Bearer" in missing.headers["www-authenticate"]
    assert stow(node, body, token=WEB_TOKEN).status_code == 401  # the console's is not STOW's
    statuses = [stow(node, body, token="wrong-token-000000000").status_code for _ in range(5)]
    assert statuses[-1] == 429
    assert stow(node, body).status_code == 429  # locked out, whatever it sends now
    failures = [
        e for e in node.audit_events() if e["Event"] == "user-login" and e["EventOutcomeIndicator"]
    ]
    assert len(failures) >= 5
    assert stored_uids(node) == set()


def test_a_stow_user_by_basic_auth_stores_as_its_own_calling_ae(tmp_path: Path) -> None:
    users = f"pacs:{hash_password('pacs-password-1')},nurse:{hash_password('nurse-pass-2')}"
    node = StowNode(
        tmp_path,
        web__users=users,
        web__stow_users="pacs:PACS_WEB, nurse:NOT_ALLOWED",
        security__allowed_calling_aets="STORESCU,PACS_WEB",
    )
    try:

        def basic(name: str, password: str) -> dict[str, str]:
            secret = base64.b64encode(f"{name}:{password}".encode()).decode()
            return {"authorization": f"Basic {secret}"}

        body = multipart_body(cts(tmp_path, 1))
        ok = stow(node, body, token=None, headers=basic("pacs", "pacs-password-1"))
        assert ok.status_code == 200, ok.text
        study = node.index.console.study(STUDY)
        assert study is not None
        assert [s["calling_ae"] for s in study["instances_by_sender"]] == ["PACS_WEB"]
        assert stow(node, body, token=None, headers=basic("pacs", "nope")).status_code == 401
        # a user whose calling AE is not on the allow-list: refused and audited
        denied = stow(node, body, token=None, headers=basic("nurse", "nurse-pass-2"))
        assert denied.status_code == 403
        rejected = [e for e in node.audit_events() if e["Event"] == "association-rejected"]
        assert rejected and rejected[-1]["CallingAETitle"] == "NOT_ALLOWED"
        # the stow token's calling AE (DICOMWEB) is not on this allow-list either
        assert stow(node, body).status_code == 403
    finally:
        node.close()


def test_the_per_ae_quota_of_new_studies_applies(tmp_path: Path) -> None:
    node = StowNode(tmp_path, security__max_new_studies_per_hour=1)
    try:
        assert stow(node, multipart_body(cts(tmp_path, 1))).status_code == 200
        response = stow(node, multipart_body(cts(tmp_path, 1, study=STUDY + ".5", name="x")))
        assert response.status_code == 409
        assert list(failed(response).values()) == [OUT_OF_RESOURCES]
        assert any(e["Event"] == "study-quota-exceeded" for e in node.audit_events())
    finally:
        node.close()


# ---- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"web__stow_token": "short"}, "[web] stow_token"),
        ({"web__stow_token": WEB_TOKEN}, "a token other than [web] token"),
        ({"web__stow_users": "ghost:GHOST"}, "a user name of [web] users"),
        ({"web__stow_users": "no-ae-given"}, "name:AE pairs"),
        ({"web__stow_calling_aet": "A" * 17}, "[web] stow_calling_aet"),
        ({"web__stow_timeout_seconds": "0"}, "[web] stow_timeout_seconds"),
    ],
)
def test_bad_stow_settings_are_refused_at_start(
    tmp_path: Path, overrides: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, web__token=WEB_TOKEN, **overrides)
    assert expected in str(info.value)
    with pytest.raises(ConfigError, match=r"\[web\] token set as well"):
        make_config(tmp_path, web__stow_token=STOW_TOKEN)


def test_check_config_warns_of_a_stow_identity_off_the_allow_list(tmp_path: Path) -> None:
    config = make_config(tmp_path, web__token=WEB_TOKEN, web__stow_token=STOW_TOKEN)
    warned = {key: why for _, key, why in web_warnings(config)}
    assert "add it to [security] allowed_calling_aets" in warned["[web] stow_calling_aet"]
    allowed = make_config(
        tmp_path,
        web__token=WEB_TOKEN,
        web__stow_token=STOW_TOKEN,
        security__allowed_calling_aets="DICOMWEB",
    )
    assert "[web] stow_calling_aet" not in {key for _, key, _ in web_warnings(allowed)}


def test_a_request_counts_as_receiving_while_it_arrives(node: StowNode, tmp_path: Path) -> None:
    """The analysis yields to a STOW-RS request as to an association (node.stow_requests)."""
    seen: list[int] = []

    def body() -> Iterator[bytes]:
        for chunk in trickle(multipart_body(cts(tmp_path, 2)), 16 * 1024, 0.02):
            seen.append(node.state.stow_requests())
            yield chunk

    assert node.state.stow_requests() == 0
    assert stow(node, body()).status_code == 200
    assert seen and max(seen[1:]) == 1, seen  # once the server has taken the request
    assert wait_until(lambda: node.state.stow_requests() == 0, timeout=5, what="0 in flight")
