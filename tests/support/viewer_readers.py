"""Run the viewers' own readers on result objects: dcmqi (3D Slicer's `tid1500reader` and
`segimage2itkimage`, from the dcmqi wheel) and OHIF 3.13's SR hydration (the Cornerstone3D
adapters and dcmjs, run by tests/viewers/ohif_hydrate.mjs in Node).

Each helper skips the calling test with what to install when its reader is missing, and fails
on any warning the reader prints, so a test never passes on a half-read object.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

VIEWERS = Path(__file__).resolve().parents[1] / "viewers"
_DCMQI_BANNER = "dcmqi repository URL"


def _dcmqi(tool: str) -> str:
    path = Path(sys.executable).parent / tool
    if path.exists():
        return str(path)
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"dcmqi's {tool} is not installed (pip install the dev extras: dcmqi)")
    return found


def _run_dcmqi(args: list[str], what: str) -> list[str]:
    """Run a dcmqi tool; its output lines besides the banner, failing on a non-zero exit."""
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=300)
    lines = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and not line.startswith(_DCMQI_BANNER)
    ]
    if proc.returncode != 0:
        raise AssertionError(
            f"{what} failed with exit status {proc.returncode}:\n" + "\n".join(lines)
        )
    return lines


def warning_lines(lines: Sequence[str]) -> list[str]:
    """The lines of a reader's output that warn (DCMTK's "W:", dcmqi's "Warning", ...)."""
    return [
        line
        for line in lines
        if line.lstrip().startswith(("W:", "E:", "F:")) or "warn" in line.lower()
    ]


def dcmqi_read_sr(path: Path | str, workdir: Path) -> dict[str, Any]:
    """dcmqi's tid1500reader on one SR: its JSON, after checking it printed no warning."""
    out = workdir / (Path(path).stem + "-tid1500.json")
    lines = _run_dcmqi(
        [_dcmqi("tid1500reader"), "--inputDICOM", str(path), "--outputMetadata", str(out)],
        f"tid1500reader on {path}",
    )
    assert warning_lines(lines) == [], f"tid1500reader on {path}:\n" + "\n".join(lines)
    return json.loads(out.read_text())


def dcmqi_read_seg(path: Path | str, workdir: Path) -> tuple[dict[str, Any], dict[int, float]]:
    """dcmqi's segimage2itkimage on one SEG: its metadata JSON and each segment's volume in ml
    (voxel count times voxel size of the image it writes), after checking it printed no
    warning."""
    import SimpleITK as sitk

    folder = workdir / (Path(path).stem + "-segimage")
    folder.mkdir(parents=True, exist_ok=True)
    lines = _run_dcmqi(
        [
            _dcmqi("segimage2itkimage"),
            "--inputDICOM",
            str(path),
            "--outputDirectory",
            str(folder),
            "--outputType",
            "nrrd",
        ],
        f"segimage2itkimage on {path}",
    )
    assert warning_lines(lines) == [], f"segimage2itkimage on {path}:\n" + "\n".join(lines)
    meta = json.loads((folder / "meta.json").read_text())
    volumes: dict[int, float] = {}
    for image_path in sorted(folder.glob("*.nrrd")):
        image = sitk.ReadImage(str(image_path))
        voxels = sitk.GetArrayFromImage(image)
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        for label in np.unique(voxels):
            if label:
                volumes[int(label)] = float((voxels == label).sum()) * voxel_ml
    return meta, volumes


def segment_volumes_in_sr(metadata: dict[str, Any]) -> dict[int, float]:
    """Referenced segment number -> the Volume (ml) of its group, from tid1500reader's JSON."""
    volumes = {}
    for group in metadata["Measurements"]:
        if "ReferencedSegment" not in group:
            continue
        (volume,) = [
            float(m["value"])
            for m in group["measurementItems"]
            if m["quantity"]["CodeMeaning"] == "Volume"
        ]
        volumes[int(group["ReferencedSegment"])] = volume
    return volumes


def ohif_hydrate(
    sr_paths: Sequence[Path | str], image_paths: Sequence[Path | str]
) -> list[dict[str, Any]]:
    """OHIF's SR hydration (tests/viewers/ohif_hydrate.mjs) on SRs whose images are given:
    one report per SR; fails with the script's errors when it finds one."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (Debian package nodejs)")
    if not (VIEWERS / "node_modules" / "@cornerstonejs" / "adapters").is_dir():
        pytest.skip(f"npm packages missing: run `npm ci` in {VIEWERS} (make test does)")
    proc = subprocess.run(
        [
            node,
            str(VIEWERS / "ohif_hydrate.mjs"),
            *map(str, sr_paths),
            "--",
            *map(str, image_paths),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=VIEWERS,
    )
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise AssertionError(f"ohif_hydrate.mjs failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    reports: list[dict[str, Any]] = json.loads(proc.stdout)
    errors = {r["sr"]: r["errors"] for r in reports if r["errors"]}
    assert proc.returncode == 0 and not errors, f"OHIF's hydration failed: {errors}"
    return reports
