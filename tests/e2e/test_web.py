"""The web console, /metrics, /livez, /readyz and draining end to end (in process:
integration/test_web_console.py).

Orthanc pushes a PET/CT study to the node, whose results go to a DCMTK storescp that is not yet
listening, so they become dead letters; a real Chromium (Selenium, Debian's chromium-driver)
logs in, finds the study, opens its timeline and finding picture, resends the dead letters once
storescp listens and watches the study become DELIVERED; screenshots of each page go to docs/.
/metrics is parsed with prometheus-client's parser and checked against what Orthanc sent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dcmtk import StorescpServer
from node_process import NodeProcess, PhantomFiles
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "test-token-0123456789abcdef"
# The README's screenshots: written to docs/ only when LUNGNODE_UPDATE_SCREENSHOTS=1, so that
# a test run never changes the checkout; otherwise into the test's tmp folder.
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _get(url: str, token: str | None = TOKEN) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _browser(download_dir: Path) -> Any:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip("Debian chromium and chromium-driver are not installed (make debian-deps)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports land there
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def _follow(browser: Any, element: Any) -> None:
    """Click a link or a submit button and wait until the next page has replaced this one, so
    that what the test reads next is never the old page's (stale) elements."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def replaced(_: Any) -> bool:
        # Chrome reports an element of a replaced document as stale or, while the new document
        # loads, as "does not belong to the document": both mean the page has moved on.
        try:
            element.is_enabled()
        except WebDriverException:
            return True
        return False

    element.click()
    WebDriverWait(browser, 30).until(replaced)
    WebDriverWait(browser, 30).until(
        lambda b: b.execute_script("return document.readyState") == "complete"
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_console_in_a_browser_with_orthanc_metrics_and_resend(
    tmp_path: Path,
    node_process: Callable[..., NodeProcess],
    phantom_pet_ct: PhantomFiles,
    free_port: Callable[[], int],
) -> None:
    from orthanc import Orthanc
    from selenium.webdriver.common.by import By

    study, files = phantom_pet_ct.study, phantom_pet_ct.files
    web_port, archive_port = free_port(), free_port()
    pacs = Orthanc(tmp_path / "orthanc")
    node = node_process(
        archive_port=archive_port,  # storescp not listening yet: results become dead letters
        overrides={
            "web__token": TOKEN,
            "web__port": web_port,
            "web__refresh_seconds": 0,
            "sender__max_attempts": 2,
        },
    )
    base = f"http://127.0.0.1:{web_port}"
    pacs.modalities = {"lungnode": (node.ae_title, "127.0.0.1", node.port)}
    browser = None
    with pacs, node:
        for path in files:
            pacs.upload(path)
        pacs.store_study_to("lungnode", study.study_instance_uid)
        # (the study may get a version 2 when its PET series completes before the CT does)
        node.wait_for(
            lambda s: (
                [x["state"] for x in s["studies"]] == ["REPORTED"]
                and s["outbox"]
                and all(o["state"] == "DEAD" for o in s["outbox"])
            ),
            240,
            "every result a dead letter",
        )
        assert _get(f"{base}/livez", token=None)[0] == 200
        assert _get(f"{base}/metrics", token=None)[0] == 401

        # /metrics against what Orthanc sent
        status, text = _get(f"{base}/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        stored = {
            (s.labels["calling_ae"], s.labels["status"]): s.value
            for s in families["lungnode_cstore_requests"].samples
            if s.name.endswith("_total")
        }
        assert stored == {("ORTHANC", "0x0000"): len(files)}
        received = [
            s for s in families["lungnode_received_bytes"].samples if s.name.endswith("_total")
        ]
        assert received[0].value == pytest.approx(sum(p.stat().st_size for p in files), rel=0.05)
        dead = len(node.status()["outbox"])
        assert families["lungnode_dead_letters"].samples[0].value == dead >= 2
        stages = {
            s.labels["stage"]: s.value
            for s in families["lungnode_stage_duration_seconds"].samples
            if s.name.endswith("_count")
        }
        assert stages["waiting_for_completion"] >= 1 and stages["analysis"] >= 1
        patient_name = str(study.ct[0].PatientName)
        assert patient_name and patient_name not in text
        assert str(study.ct[0].PatientID) not in text and study.study_instance_uid not in text

        browser = _browser(tmp_path / "downloads")
        try:
            shots = DOCS if os.environ.get("LUNGNODE_UPDATE_SCREENSHOTS") == "1" else tmp_path
            browser.get(f"{base}/studies")
            assert "/login" in browser.current_url
            browser.find_element(By.ID, "name").send_keys("Test Admin")
            browser.find_element(By.ID, "token").send_keys(TOKEN)
            _follow(browser, browser.find_element(By.ID, "login"))
            browser.find_element(By.ID, "study_uid").send_keys(study.study_instance_uid)
            _follow(browser, browser.find_element(By.ID, "search"))
            rows = browser.find_elements(By.CSS_SELECTOR, "#studies tbody tr")
            assert len(rows) == 1 and "REPORTED" in rows[0].text and "ORTHANC" in rows[0].text
            browser.save_screenshot(str(shots / "console-studies.png"))
            _follow(browser, rows[0].find_element(By.CSS_SELECTOR, "a.uid"))
            timeline = browser.find_element(By.ID, "timeline").text
            for kind in (
                "instances",
                "ready",
                "claimed",
                "analysis_started",
                "analysis_done",
                "reported",
                "dead",
            ):
                assert kind in timeline, kind
            assert "from ORTHANC" in timeline
            browser.save_screenshot(str(shots / "console-timeline.png"))
            _follow(browser, browser.find_element(By.ID, "findings"))
            assert "Not for clinical use" in browser.find_element(By.ID, "disclaimer").text
            pictures = browser.find_elements(By.CSS_SELECTOR, "img.finding")
            assert pictures
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not browser.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth", pictures[0]
            ):
                time.sleep(0.2)
            assert browser.execute_script("return arguments[0].naturalWidth", pictures[0]) > 0
            # The bundled model learnt histology from phantoms: under the default
            # [results] histology = auto the page states the finding's certainty, and no
            # histology probability, only that histology was not assessed.
            page = browser.page_source
            assert "Certainty of Finding" in page
            assert "Not assessed" in page and "Probability of" not in page
            browser.save_screenshot(str(shots / "console-findings.png"))

            with StorescpServer(tmp_path / "archive", port=archive_port) as archive:
                browser.get(f"{base}/deliveries")
                links = browser.find_elements(By.CSS_SELECTOR, "#dead tbody a.resend")
                assert len(links) == dead
                browser.save_screenshot(str(shots / "console-deliveries.png"))
                _follow(browser, browser.find_element(By.CSS_SELECTOR, "#dead tbody a.resend"))
                _follow(browser, browser.find_element(By.ID, "confirm"))
                assert "1 changed" in browser.page_source
                _follow(browser, browser.find_element(By.LINK_TEXT, "Resend all…"))
                _follow(browser, browser.find_element(By.ID, "confirm"))
                node.wait_for(
                    lambda s: any(x["state"] == "DELIVERED" for x in s["studies"]), 60, "DELIVERED"
                )
                assert len(archive.received()) >= 2
            browser.get(f"{base}/studies/{study.study_instance_uid}")
            assert browser.find_element(By.ID, "state").text == "DELIVERED"
            assert "resend" in browser.find_element(By.ID, "timeline").text
            browser.get(f"{base}/node")
            assert "ready" in browser.page_source and TOKEN not in browser.page_source
            browser.save_screenshot(str(shots / "console-node.png"))
            # the Content-Security-Policy (issue 17) blocks nothing the console itself uses
            blocked = [
                entry["message"]
                for entry in browser.get_log("browser")
                if "Content Security Policy" in entry["message"]
            ]
            assert blocked == []
        finally:
            browser.quit()
        audit = (node.store / "audit.log").read_text()
        assert '"Action":"resend"' in audit and '"UserID":"Test Admin"' in audit
        turnaround = {
            f.name: f for f in text_string_to_metric_families(_get(f"{base}/metrics")[1])
        }["lungnode_study_turnaround_seconds"]
        assert [s.value for s in turnaround.samples if s.name.endswith("_count")] == [1]


@pytest.mark.slow
def test_idle_node_stops_within_2_s_with_a_connection_that_never_associated(
    node_process: Callable[..., NodeProcess], free_port: Callable[[], int]
) -> None:
    web_port = free_port()
    node = node_process(role="receiver", overrides={"web__token": TOKEN, "web__port": web_port})
    node.start()
    assert _get(f"http://127.0.0.1:{web_port}/readyz")[0] == 200
    probe = socket.create_connection(("127.0.0.1", node.port))  # a load balancer's probe
    time.sleep(0.5)
    started = time.monotonic()
    assert node.stop(signal.SIGTERM, timeout=30) == 0
    elapsed = time.monotonic() - started
    probe.close()
    assert elapsed < 2.0, f"stopped in {elapsed:.1f} s\n{node.log()[-2000:]}"


@pytest.mark.slow
def test_readyz_turns_503_when_postgresql_stops_and_200_when_it_is_back(
    node_process: Callable[..., NodeProcess],
    free_port: Callable[[], int],
    postgres_server: Any,
) -> None:
    from postgres_server import fresh_database

    web_port = free_port()
    node = node_process(
        role="receiver",
        overrides={
            "web__token": TOKEN,
            "web__port": web_port,
            "storage__database_url": fresh_database(postgres_server.url),
        },
    )
    node.start()
    readyz = f"http://127.0.0.1:{web_port}/readyz"

    def wait_for(code: int) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while True:
            status, body = _get(readyz)
            if status == code or time.monotonic() > deadline:
                assert status == code, f"{status} {body}\n{node.log()[-2000:]}"
                return dict(json.loads(body))
            time.sleep(0.5)

    assert wait_for(200)["checks"]["database"]["ok"] is True
    postgres_server.stop()
    body = wait_for(503)
    assert list(body["failing"]) == ["database"], body
    assert _get(f"http://127.0.0.1:{web_port}/livez", token=None)[0] == 200  # still alive
    postgres_server.start()
    assert wait_for(200)["checks"]["database"]["ok"] is True
