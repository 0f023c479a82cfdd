"""The synthetic PET/CT phantom's CT and PET files pass dicom3tools' dciodvfy without an error."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from classifier.datasets.phantom import generate_study, write_study


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_ct_and_pet_files_pass_dciodvfy(tmp_path: Path) -> None:
    study = generate_study(13, "G", ct_size=64, ct_slices=16, pet_size=32)
    paths = write_study(study, tmp_path)
    for path in (paths[0], paths[len(study.ct)]):
        result = subprocess.run(
            ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        report = result.stdout + result.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}:\n{report}"
        assert ("CTImage" in report) or ("PETImage" in report)
