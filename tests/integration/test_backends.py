"""The bundled .keras file gives the same numbers on the JAX backend as on TensorFlow."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from classifier.model.inference import BUNDLED_MODEL, LesionClassifier
from classifier.model.patches import PATCH_SHAPE

_SCRIPT = """
import json, sys
import numpy as np
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
from classifier.model.inference import LesionClassifier
x = np.random.default_rng(42).random((5, *{shape}), dtype=np.float32)
lesion, histology = LesionClassifier.load(sys.argv[1]).predict(x)
print(json.dumps({{"lesion": lesion.tolist(), "histology": histology.tolist()}}))
"""


@pytest.mark.slow
def test_jax_matches_tensorflow() -> None:
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed: pip install 'jax[cpu]' to run the backend check")
    # the bundled model is part of the product (committed): missing is a failure, not a skip
    assert BUNDLED_MODEL.is_file(), f"bundled model {BUNDLED_MODEL} is missing (MODEL_CARD.md)"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(shape=PATCH_SHAPE), str(BUNDLED_MODEL)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 0, run.stderr[-3000:]
    jax_out = json.loads(run.stdout.strip().splitlines()[-1])
    x = np.random.default_rng(42).random((5, *PATCH_SHAPE), dtype=np.float32)
    lesion, histology = LesionClassifier.load(BUNDLED_MODEL).predict(x)
    np.testing.assert_allclose(np.asarray(jax_out["lesion"]), lesion, atol=1e-4)
    np.testing.assert_allclose(np.asarray(jax_out["histology"]), histology, atol=1e-4)
