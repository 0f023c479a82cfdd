"""Lesion measurement geometry and candidate detection on a phantom."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.datasets.phantom import generate_study
from classifier.imaging.lesions import feret_axes, find_candidates
from classifier.imaging.resample import resample_to
from classifier.imaging.suv import load_pet_suv_volume
from classifier.imaging.volume import load_ct_volume


def test_feret_of_a_rectangle() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:20, 5:35] = True  # 10 x 30 pixels of 0.5 x 1.0 mm -> 5 x 30 mm
    long_axis, short_axis = feret_axes(mask, (0.5, 1.0))
    assert long_axis == pytest.approx(np.hypot(5.0, 30.0), rel=1e-6)
    assert 4.0 < short_axis < 6.5


def test_phantom_lesion_found_and_merged_with_pet() -> None:
    study = generate_study(5, "G", ct_size=128, ct_slices=40, pet=True)
    ct = load_ct_volume(study.ct)
    suv = resample_to(load_pet_suv_volume(study.pet), ct)
    found = find_candidates(ct, suv)
    truth = study.lesions[0]
    assert found
    best = min(found, key=lambda c: np.linalg.norm(np.subtract(c.centroid_mm, truth.center_mm)))
    assert np.linalg.norm(np.subtract(best.centroid_mm, truth.center_mm)) < truth.radius_mm
    assert best.detected_by == "CT+PET"
    assert best.long_axis_mm == pytest.approx(2 * truth.radius_mm, rel=0.5)
    assert best.suv_max is not None and best.mtv_ml is not None and best.tlg is not None
    assert best.side == ("left" if truth.center_mm[0] > 0 else "right") or best.side == "central"
