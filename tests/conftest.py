"""Fixtures shared by the test modules of every tier (unit/, integration/, e2e/, contracts/).
Plain helpers (DCMTK, Orthanc, the node as a subprocess, the in-process receiver and outbox,
config overrides) live in support/, which pytest puts on the path (pyproject.toml's
`pythonpath`), so tests import them by module name; the fixtures here give tests one way to get
each of them.

- `free_port`: the function giving a free loopback TCP port (support/ports.py).
- `make_config`: a `Config` from config.ini with the store in the test's tmp_path and
  `section__key=value` overrides (support/configs.py); never reads the shell's LUNGNODE__ vars.
- `receiver_node`: a started in-process `Receiver` with store and index (support/in_process.py).
- `node_process`: a factory of `lungnode serve` subprocesses (support/node_process.py), each one
  stopped at the end of the test.
- `chunked_send`: pynetdicom sends a file's bytes as they are (crafted and broken datasets).
- `phantom_ct`, `phantom_pet_ct`: one phantom study each, generated and written once per
  session, for tests that need "a small study" rather than a particular one. Read-only.
- `shared_data`: the real-data folder (../shared/data next to the repository), or a skip.
- `lung_pet_ct_dx`: its Lung-PET-CT-Dx patients in the TCIA layout.
- `certs`: a throw-away CA with node and peer certificates and an untrusted CA, made once per
  module (support/tls_certificates.py).
- `encoded_cases`: the SR/SEG test cases, encoded once per session (support/encoded_cases.py).

Every test gets the logging setup back as it found it (`_logging_as_found`): a test that runs
`lungnode ...` in-process installs the node's stdout handler on pytest's captured stdout, and a
thread of a later test logging there would write into a closed stream.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from configs import make_config as _make_config
from encoded_cases import Case, build_encoded_cases
from in_process import RunningNode
from node_process import NodeProcess, PhantomFiles, save_datasets
from ports import free_port as _free_port
from postgres_server import postgres_server, postgres_url
from tls_certificates import Certificates, make_certificates

from classifier.datasets.phantom import generate_study
from scp_node.config import Config

# The throw-away PostgreSQL servers (one per module; one per test that stops it), as fixtures.
__all__ = ["postgres_server", "postgres_url"]

REPO = Path(__file__).resolve().parents[1]
# Real data (a Lung-PET-CT-Dx subset, PET with SUV tags) lives outside the repository; a
# checkout elsewhere (e.g. a git worktree) points at it with LUNGNODE_TEST_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("LUNGNODE_TEST_SHARED_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """Root handlers and level, the hooks and the capture of warnings, restored after the test."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook, threading.excepthook)
    try:
        yield
    finally:
        root.handlers[:], level, sys.excepthook, threading.excepthook = saved
        root.setLevel(level)
        logging.captureWarnings(False)


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Call it for a TCP port on 127.0.0.1 that is free right now (as many as needed)."""
    return _free_port


@pytest.fixture
def chunked_send() -> Iterator[None]:
    """pynetdicom sends files' bytes as they are (no decoding), for broken datasets."""
    from pynetdicom import _config

    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = before


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """`make_config(section__key=value, ...)`: config.ini, store in tmp_path/store, overrides."""

    def factory(**overrides: object) -> Config:
        return _make_config(tmp_path / "store", **overrides)

    return factory


@pytest.fixture
def receiver_node(tmp_path: Path) -> Iterator[RunningNode]:
    """A started in-process Receiver on a free port (in_process.RECEIVER_CONFIG)."""
    running = RunningNode(tmp_path)
    yield running
    running.close()


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`node_process(**kwargs)`: a NodeProcess (or `cls=` a subclass such as RoleNode) in
    tmp_path/node (`workdir=` to choose), not started; every one is stopped after the test."""
    made: list[NodeProcess] = []

    def factory(cls: type[NodeProcess] = NodeProcess, workdir: Path | None = None, **kwargs: Any):
        node = cls(workdir or tmp_path / "node", **kwargs)
        made.append(node)
        return node

    yield factory
    for node in made:
        node.stop()


@pytest.fixture(scope="session")
def phantom_ct(tmp_path_factory: pytest.TempPathFactory) -> PhantomFiles:
    """A small CT-only phantom study: 24 slices of 64x64, one adenocarcinoma. Do not modify."""
    study = generate_study(seed=31, histology="A", ct_size=64, ct_slices=24, pet=False)
    return PhantomFiles(study, save_datasets(study.ct, tmp_path_factory.mktemp("phantom-ct")))


@pytest.fixture(scope="session")
def phantom_pet_ct(tmp_path_factory: pytest.TempPathFactory) -> PhantomFiles:
    """A PET/CT phantom study: CT 32 slices of 96x96 plus PET, one squamous cell carcinoma
    the bundled model reports (SR and SEG). Do not modify."""
    study = generate_study(seed=21, histology="G", ct_size=96, ct_slices=32, pet=True)
    folder = tmp_path_factory.mktemp("phantom-pet-ct")
    files = save_datasets(study.ct, folder / "ct") + save_datasets(study.pet, folder / "pet")
    return PhantomFiles(study, files)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real data folder {SHARED_DATA} is absent (shared/data next to the repository, "
            "or set LUNGNODE_TEST_SHARED_DATA; see /work/shared/data/README.md)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def lung_pet_ct_dx(shared_data: Path) -> Path:
    """The Lung-PET-CT-Dx fixture (TCIA layout: A0002 with boxes, E0001-E0004); a real-data
    folder without it is a broken checkout of shared/, so the test fails instead of skipping."""
    folder = shared_data / "lung-pet-ct-dx"
    assert (folder / "Lung-PET-CT-Dx" / "Lung_Dx-A0002").is_dir(), f"{folder} is incomplete"
    return folder


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Certificates for TLS tests: CA, node, peer, and a rogue CA with its client."""
    return make_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(scope="session")
def encoded_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    """The encoded SR/SEG cases (phantoms; the real CT too when shared data is present)."""
    real_ct = SHARED_DATA / "lung-pet-ct-dx"
    return build_encoded_cases(tmp_path_factory.mktemp("encoded"), real_ct)
