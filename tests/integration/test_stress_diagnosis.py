"""bench/stress_diagnosis.py: the stress test with the detector's stages recorded names, for
each insertion, the stage that lost it, and agrees with the stress test's own scoring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.model.stress import HIT_MIN_ON_TUMOUR

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"hit", "several", "short", "long", "region", "thick", "cap", "mass-cut", "edge"}
STAGES |= {"apex", "refine", "score", "other", "cavity-join", "beside"}


@pytest.mark.slow
def test_every_insertion_gets_the_stage_that_lost_it(lung_pet_ct_dx: Path, tmp_path: Path) -> None:
    out = tmp_path / "diag"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "bench" / "stress_diagnosis.py")]
    command += ["--data", str(lung_pet_ct_dx), "--out", str(out), "--per-position", "1"]
    command += ["--annotations", str(lung_pet_ct_dx / "Annotation")]
    command += ["--annotations", str(ROOT / "tests" / "data" / "annotations-approximate")]
    command += ["--patients", "Lung_Dx-E0004", "--positions", "mediastinum", "hilum", "apex"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "diagnosis.json").read_text())
    summary = json.loads((out / "stress.json").read_text())
    placed = [r for r in summary["insertions"] if r["placed"]]
    assert len(rows) == len(placed) >= 2
    for row, scored in zip(rows, placed, strict=True):
        stage = row["stage"].split(" (")[0]
        assert stage in STAGES or stage.startswith("anatomy: "), row
        assert (stage == "hit") == scored["hit"], (row, scored)
        if stage == "beside":  # one finding on it, mostly not the tumour
            assert scored["found_as_one"], (row, scored)
            assert scored["finding_on_tumour_share"] < HIT_MIN_ON_TUMOUR, (row, scored)
        if stage == "hit":  # a hit was proposed, kept through every stage and scored above
            assert row["thick"] and row["mass_parts"] and row["below_apex"], row
            assert max(c["p"] for c in row["candidates"]) >= 0.5, row
        assert 0.0 <= row["in_region"] <= row["in_cavity"] + 1e-9 or row["in_cavity"] == 0
        for candidate in row["candidates"]:  # on the tumour (listed), its collapse apart from it
            assert 0.0 <= candidate["on_tumour"] <= 1.0, candidate
            assert 0.0 <= candidate["on_collapse"] <= 1.0 - candidate["on_tumour"] + 0.01, candidate
