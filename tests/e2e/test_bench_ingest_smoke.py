"""bench/ingest.py and bench/associations.py run end to end on tiny series and print their
ratios."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ingest_benchmark_runs_on_a_tiny_series(tmp_path: Path) -> None:
    for tool in ("storescu", "storescp", "/usr/sbin/Orthanc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found; install the Debian packages dcmtk and orthanc")
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ingest.py"), "--rounds", "1", "--slices", "4",
         "--size", "64", "--cache", str(tmp_path),
         "--peers", "storescp,orthanc,node,node-busy,harness"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "series: 4 instances" in result.stdout
    assert "node: lungnode serve on the shipped config.ini" in result.stdout
    for peer in ("storescp", "orthanc", "node", "node-busy", "harness"):
        assert re.search(
            rf"^{peer}\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+  [0-9.]+-[0-9.]+ ", result.stdout, re.MULTILINE
        ), peer
    assert re.search(
        r"^node: [0-9]+ receiver processes, RSS [0-9]+(, [0-9]+)+ MiB", result.stdout, re.M
    )
    for peer in ("node", "node-busy"):  # CPU time by role, the evidence beside the wall clock
        assert re.search(
            rf"^{peer} CPU s during the send \(median of rounds\): serve [0-9.]+, "
            r"receivers [0-9.]+, analysis [0-9.]+$",
            result.stdout,
            re.M,
        ), peer
    for ratio in ("node / storescp", "node / orthanc", "node / harness", "node-busy / node"):
        assert re.search(rf"^{ratio}: [0-9.]+x$", result.stdout, re.MULTILINE), ratio
    # every peer left nothing behind but the generated series
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct-4x64"]


@pytest.mark.slow
def test_associations_benchmark_runs_on_tiny_studies(tmp_path: Path) -> None:
    if shutil.which("storescu") is None:
        pytest.skip("storescu not found; install the Debian package dcmtk")
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "associations.py"), "--rounds", "1", "--slices", "4",
         "--processes", "auto,1", "--cache", str(tmp_path)],
        capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lungnode serve on the shipped config.ini; analysis=wait" in result.stdout
    assert re.search(
        r"^receiver_processes=auto: [0-9]+ receiver processes, RSS", result.stdout, re.M
    )
    assert "receiver_processes=1: no separate receiver processes" in result.stdout
    for setting in ("auto", "1"):
        summary = rf"^receiver_processes={setting}: one +[0-9.]+ MB/s .* four / one [0-9.]+x"
        assert re.search(summary, result.stdout, re.MULTILINE), setting
    # where the CPU went, per round and in the summary: the evidence beside the wall clock
    per_round = (
        r"^  CPU ms per instance, one: receivers [0-9.]+, storescu [0-9.]+, machine busy "
        r"[0-9]+%; four: receivers [0-9.]+ \(CPU s per receiver [0-9./]+\), storescu [0-9.]+"
    )
    assert len(re.findall(per_round, result.stdout, re.MULTILINE)) == 2  # a round per setting
    ceiling = r"^  CPU ms per instance \(medians\): .* four / one <= [0-9.]+x against the median"
    assert len(re.findall(ceiling, result.stdout, re.MULTILINE)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct-4x512"]  # fresh studies removed
