"""Lesion and annotation PNGs: valid images of the expected size, with bad input refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from classifier.analyze import to_lesion
from classifier.datasets.phantom import generate_study
from classifier.imaging.lesions import find_candidates
from classifier.imaging.resample import resample_to
from classifier.imaging.suv import load_pet_suv_volume
from classifier.imaging.volume import Volume, load_ct_volume
from classifier.results.overlay import render_annotated_slice_png, render_lesion_png
from classifier.types import Lesion

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def phantom() -> tuple[Volume, Volume, Lesion]:
    study = generate_study(5, "G", ct_size=96, ct_slices=24, pet=True, pet_size=48)
    ct = load_ct_volume(study.ct)
    suv = resample_to(load_pet_suv_volume(study.pet), ct)
    found = find_candidates(ct, suv)
    assert found, "the phantom lesion was not found"
    histology = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    return ct, suv, to_lesion(found[0], 1, ct, 0.9, histology)


def _image(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return imread(path)


def test_lesion_png_with_suv(phantom: tuple[Volume, Volume, Lesion], tmp_path: Path) -> None:
    ct, suv, lesion = phantom
    path = tmp_path / "lesion.png"
    render_lesion_png(ct, suv, lesion, path)
    image = _image(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    # Not a blank canvas: the slice, the hot overlay and the coloured outlines vary.
    assert image[..., :3].std() > 0.1
    # The SUV overlay and box add strongly coloured pixels (red/yellow) that grey CT has not.
    rgb = image[..., :3]
    assert np.count_nonzero((rgb[..., 0] - rgb[..., 2]) > 0.3) > 20


def test_lesion_png_without_suv(phantom: tuple[Volume, Volume, Lesion], tmp_path: Path) -> None:
    ct, _, lesion = phantom
    path = tmp_path / "sub" / "lesion.png"
    render_lesion_png(ct, None, lesion, path)
    assert _image(path).shape[0] > 300


def test_lesion_png_refuses_suv_off_the_ct_grid(
    phantom: tuple[Volume, Volume, Lesion], tmp_path: Path
) -> None:
    ct, suv, lesion = phantom
    small = dataclasses.replace(suv, array=suv.array[:, :-1])
    with pytest.raises(ValueError, match="resample"):
        render_lesion_png(ct, small, lesion, tmp_path / "x.png")


def test_annotated_slice_png_draws_both_colours(
    phantom: tuple[Volume, Volume, Lesion], tmp_path: Path
) -> None:
    ct, _, lesion = phantom
    path = tmp_path / "annotated.png"
    r0, c0, r1, c1 = lesion.box_rc
    render_annotated_slice_png(
        ct, lesion.key_slice_index, [(c0, r0, c1, r1)], [(r0 + 2, c0 + 2, r1 + 2, c1 + 2)], path
    )
    rgb = _image(path)[..., :3]
    green = (rgb[..., 1] > 0.8) & (rgb[..., 0] < 0.3) & (rgb[..., 2] < 0.3)
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    assert np.count_nonzero(green) > 10 and np.count_nonzero(red) > 10
    with pytest.raises(ValueError, match="slice index"):
        render_annotated_slice_png(ct, ct.shape[0], [], [], tmp_path / "bad.png")


def test_lesion_title_says_whether_its_number_is_calibrated(
    phantom: tuple[Volume, Volume, Lesion],
) -> None:
    """A raw lesion score is never called a probability; a calibrated certainty is."""
    from classifier.results.overlay import _title

    _, _, lesion = phantom
    raw = dataclasses.replace(lesion, lesion_probability=0.9, certainty=None)
    calibrated = dataclasses.replace(lesion, lesion_probability=0.9, certainty=0.74)
    assert "lesion score 0.90 (uncalibrated)" in _title(raw)
    assert "probability" not in _title(raw)
    assert "certainty of finding 0.74 (calibrated probability)" in _title(calibrated)
