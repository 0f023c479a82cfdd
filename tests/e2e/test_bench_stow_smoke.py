"""bench/stow_intake.py runs end to end on a tiny series and prints its ratios."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@pytest.mark.slow
def test_stow_intake_benchmark_runs_on_a_tiny_series(tmp_path: Path) -> None:
    for tool in ("storescu", "/usr/sbin/Orthanc", str(DICOMWEB_PLUGIN)):
        if shutil.which(tool) is None and not Path(tool).exists():
            pytest.skip(f"{tool} not found; install the Debian packages dcmtk and orthanc-dicomweb")
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "stow_intake.py"), "--rounds", "1", "--slices", "4",
         "--size", "64", "--cache", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "series: 4 instances" in result.stdout
    for peer in ("node-stow", "node-cstore", "orthanc-stow"):
        row = rf"^{peer}\s+[0-9.]+\s+[0-9.]+-[0-9.]+\s+[0-9.]+\s+[0-9.]+$"
        assert re.search(row, result.stdout, re.MULTILINE), peer
    assert re.search(r"^node-stow / node-cstore: [0-9.]+x$", result.stdout, re.MULTILINE)
    assert re.search(r"^node-stow / orthanc-stow: [0-9.]+x$", result.stdout, re.MULTILINE)
    # every peer started fresh and left nothing behind but the generated series
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct-4x64"]
