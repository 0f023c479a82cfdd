"""bench/ingest.py runs end to end on a tiny series and prints its ratios."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ingest_benchmark_runs_on_a_tiny_series(tmp_path: Path) -> None:
    for tool in ("storescu", "storescp", "/usr/sbin/Orthanc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found; install the Debian packages dcmtk and orthanc")
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ingest.py"), "--rounds", "1", "--slices", "3",
         "--size", "64", "--cache", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "series: 3 instances" in result.stdout
    for peer in ("storescp", "orthanc", "node"):
        assert re.search(rf"^{peer}\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+$", result.stdout, re.MULTILINE), (
            peer
        )
    assert re.search(r"^node / storescp: [0-9.]+x$", result.stdout, re.MULTILINE)
    assert re.search(r"^node / orthanc: [0-9.]+x$", result.stdout, re.MULTILINE)
    # every peer started fresh and left nothing behind but the generated series
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct-3x64"]
