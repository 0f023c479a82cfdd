"""The CNN definition: input/outputs, probability semantics, size."""

from __future__ import annotations

import numpy as np

from classifier.model.network import HISTOLOGY_OUTPUT, LESION_OUTPUT, build_model
from classifier.model.patches import PATCH_SHAPE
from classifier.types import HISTOLOGY_CLASSES


def test_model_outputs_are_named_probabilities_of_the_right_shape() -> None:
    model = build_model()
    x = np.random.default_rng(0).random((3, *PATCH_SHAPE), dtype=np.float32)
    out = model(x, training=False)
    lesion = np.asarray(out[LESION_OUTPUT])
    histology = np.asarray(out[HISTOLOGY_OUTPUT])
    assert sorted(model.output_names) == ["histology", "lesion"]
    assert tuple(model.inputs[0].shape[1:]) == PATCH_SHAPE
    assert lesion.shape == (3, 1)
    assert histology.shape == (3, len(HISTOLOGY_CLASSES))
    assert np.all((lesion >= 0) & (lesion <= 1))
    np.testing.assert_allclose(histology.sum(axis=1), 1.0, atol=1e-5)


def test_model_is_small() -> None:
    assert build_model().count_params() < 1_000_000
