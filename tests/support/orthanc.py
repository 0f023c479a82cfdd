"""A throw-away Orthanc (Debian package) on loopback ports, driven over its REST API.

Used by end-to-end tests and benchmarks as the real PACS: it stores studies, C-STOREs them to
the node (`POST /modalities/{id}/store`) and receives the node's results.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from ports import free_port

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# The REST user of an Orthanc made with dicomweb_config().
DICOMWEB_USER, DICOMWEB_PASSWORD = "lungnode", "s3cret-pass"


def require_orthanc() -> str:
    """The Orthanc binary, or skip the calling test naming the Debian package. Once it is
    installed, a failure to start it is an error of the test, never a skip."""
    if shutil.which(ORTHANC_BINARY) is None:
        pytest.skip(f"{ORTHANC_BINARY} not found: install the Debian package orthanc")
    return ORTHANC_BINARY


def require_dicomweb() -> None:
    """Orthanc and its DICOMweb plugin, or skip the calling test naming the Debian package."""
    require_orthanc()
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip(f"{DICOMWEB_PLUGIN} not found: install the Debian package orthanc-dicomweb")


def dicomweb_config(**more: object) -> dict[str, object]:
    """Orthanc configuration with the DICOMweb plugin at /dicom-web/ and one REST user."""
    return {
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "AuthenticationEnabled": True,
        "RegisteredUsers": {DICOMWEB_USER: DICOMWEB_PASSWORD},
        **more,
    }


class Orthanc:
    """Orthanc with its own configuration, storage and ports in `workdir`."""

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        extra_config: dict[str, Any] | None = None,
        rest_auth: tuple[str, str] | None = None,
        rest_ssl: ssl.SSLContext | None = None,
    ) -> None:
        """`extra_config`: Orthanc configuration keys over the ones written here (LuaScripts,
        Plugins, ...); `rest_auth`: the user and password of its REST API when it asks for one
        (RegisteredUsers); `rest_ssl`: the client context when it serves HTTPS (SslEnabled)."""
        require_orthanc()
        self.workdir = workdir
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.extra_config = extra_config or {}
        self.rest_auth = rest_auth
        self.rest_ssl = rest_ssl
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "orthanc.log"

    @property
    def url(self) -> str:
        scheme = "https" if self.rest_ssl is not None else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def _write_config(self) -> Path:
        config = {
            "Name": "lungnode-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomServerEnabled": True,
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "Plugins": [],
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": False,
            "StableAge": 1,
            "DicomModalities": {
                name: [ae, host, port] for name, (ae, host, port) in self.modalities.items()
            },
            **self.extra_config,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, timeout: float = 30.0) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        env = {**os.environ, "TCP_NODELAY": "1"}
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [ORTHANC_BINARY, str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start; see {self.log_path}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not answer on {self.url} in {timeout} s")

    def stop(self) -> None:
        """Kill Orthanc: a test's Orthanc is thrown away with its folder, and its own orderly
        stop takes about 3.5 s (its HTTP and DICOM servers wind down on timers)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- REST ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = 120.0,
    ) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        if self.rest_auth is not None:
            token = base64.b64encode(":".join(self.rest_auth).encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=timeout, context=self.rest_ssl) as resp:
            data = resp.read()
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post_json(self, path: str, payload: Any, timeout: float = 120.0) -> Any:
        return self.request("POST", path, json.dumps(payload).encode(), timeout=timeout)

    def upload(self, dicom_file: Path) -> dict[str, Any]:
        return self.request("POST", "/instances", dicom_file.read_bytes(), "application/dicom")

    def add_modality(self, name: str, ae: str, host: str, port: int) -> None:
        self.request("PUT", f"/modalities/{name}", json.dumps([ae, host, port]).encode())

    def study_id(self, study_uid: str) -> str | None:
        found = self.request("POST", "/tools/lookup", study_uid.encode(), "text/plain")
        for item in found or []:
            if item.get("Type") == "Study":
                return str(item["ID"])
        return None

    def store_study_to(self, modality: str, study_uid: str) -> Any:
        """Ask Orthanc to C-STORE a study to a modality (synchronously)."""
        study = self.study_id(study_uid)
        if study is None:
            raise LookupError(f"study {study_uid} is not in Orthanc")
        return self.post_json(
            f"/modalities/{modality}/store", {"Resources": [study], "Synchronous": True}
        )

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        study = self.study_id(study_uid)
        if study is None:
            return []
        return list(self.get(f"/studies/{study}/series"))

    def instance_file(self, instance_id: str) -> bytes:
        return bytes(self.request("GET", f"/instances/{instance_id}/file"))
