"""Honest refusal (issue 16, item 6): a CT that is not a whole chest (a head or an abdomen, a
chest cut by a small field of view, real or phantom) is not analysed, and its SR says why with
"Not all algorithms succeeded; without findings", never "without findings" or noise as
findings; every real chest CT and every phantom chest the tests use still passes the check."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_validators import dciodvfy_report
from encoded_cases import KNOWN_DCIODVFY_WARNINGS

from classifier.analyze import _candidates_of, _Clock, _load, analyze_study
from classifier.datasets.field_of_view import crop_series
from classifier.datasets.phantom import generate_study, write_study
from classifier.datasets.study_folder import scan_folder
from classifier.imaging.chest_field import chest_refusal
from classifier.imaging.lung_mask import lung_mask
from classifier.imaging.series_selection import select_series
from classifier.imaging.volume import Volume, load_ct_volume
from classifier.model.bundled import BUNDLED_MODEL
from classifier.model.inference import LesionClassifier
from classifier.results import codes
from classifier.results.encode import encode
from classifier.settings import AnalysisSettings
from classifier.types import StudyResult
from storage.study_files import StudyFiles

REAL_PATIENTS = ("A0002", "E0001", "E0002", "E0003", "E0004")
# The phantom chests the other tests analyse (sizes and slice counts), and the default one.
PHANTOM_CHESTS = [
    {"seed": 3, "histology": "A", "ct_size": 128, "ct_slices": 40},
    {"seed": 31, "histology": "A", "ct_size": 64, "ct_slices": 24},
    {"seed": 11, "histology": "B", "ct_size": 64, "ct_slices": 16},
    {"seed": 5, "histology": "G", "ct_size": 64, "ct_slices": 12},
    {"seed": 7, "histology": "A", "ct_size": 64, "ct_slices": 8},
    {"seed": 4, "histology": "G", "ct_size": 32, "ct_slices": 10},
    {"seed": 11, "histology": "A", "ct_size": 256, "ct_slices": 96, "slice_thickness_mm": 1.25},
]


@pytest.fixture(scope="module")
def classifier() -> LesionClassifier:
    return LesionClassifier.load(BUNDLED_MODEL)


def _files(datasets: list[pydicom.Dataset], folder: Path) -> StudyFiles:
    folder.mkdir(parents=True, exist_ok=True)
    for n, ds in enumerate(datasets):
        pydicom.dcmwrite(folder / f"{n:04d}.dcm", ds, enforce_file_format=True)
    studies, notes = scan_folder(folder)
    assert len(studies) == 1, notes
    return studies[0]


def _phantom_files(folder: Path, **kwargs: object) -> StudyFiles:
    study = generate_study(pet=False, **kwargs)  # type: ignore[arg-type]
    write_study(study, folder)
    studies, notes = scan_folder(folder)
    assert len(studies) == 1, notes
    return studies[0]


def _sr_texts(sr: pydicom.Dataset) -> list[str]:
    items = hd.sr.utils.find_content_items(
        sr, value_type=hd.sr.ValueTypeValues.TEXT, recursive=True
    )
    return [str(item.TextValue) for item in items]


def _cad_summaries(sr: pydicom.Dataset) -> set[str]:
    items = hd.sr.utils.find_content_items(
        sr, name=codes.CAD_SUMMARY, value_type=hd.sr.ValueTypeValues.CODE, recursive=True
    )
    return {item.ConceptCodeSequence[0].CodeValue for item in items}


def _assert_refused(
    study: StudyFiles, classifier: LesionClassifier, tmp_path: Path, words: str
) -> StudyResult:
    """Analyse, encode and validate: not analysed, the reason (containing `words`) in the result
    and in the SR, CID 6047 "not all algorithms succeeded", no finding, dciodvfy clean."""
    analysis = analyze_study(study, AnalysisSettings(), classifier)
    result = analysis.result
    assert not result.analysed
    assert result.refusal is not None and words in result.refusal, result.refusal
    assert result.refusal in result.skipped
    assert result.lesions == ()
    assert result.ct_series_uid is not None  # the CT was read: it is the SR's evidence
    objects = encode(result, analysis.sources)
    assert [ds.Modality for ds in objects] == ["SR"]  # nothing to outline
    path = tmp_path / "sr.dcm"
    pydicom.dcmwrite(path, objects[0], enforce_file_format=True)
    sr = pydicom.dcmread(path)
    assert _cad_summaries(sr) == {codes.NOT_ALL_SUCCEEDED_WITHOUT_FINDINGS.value}
    texts = _sr_texts(sr)
    assert result.refusal in texts
    assert any("could not be analysed" in t and words in t for t in texts), texts
    groups = hd.sr.utils.find_content_items(
        sr, name=codes.CERTAINTY_OF_FINDING, value_type=hd.sr.ValueTypeValues.NUM, recursive=True
    )
    assert groups == []
    errors, warnings = dciodvfy_report(path)
    assert errors == []
    assert [w for w in warnings if not any(k in w for k in KNOWN_DCIODVFY_WARNINGS)] == []
    return result


@pytest.mark.parametrize(
    ("region", "words"),
    [("head", "No lung was found"), ("abdomen", "stops inside the lungs")],
)
def test_phantom_non_chest_ct_is_refused_with_the_reason(
    region: str, words: str, classifier: LesionClassifier, tmp_path: Path
) -> None:
    study = _phantom_files(
        tmp_path / "study",
        seed=1,
        histology="A",
        ct_size=128,
        ct_slices=40,
        region=region,
        lesion=False,
    )
    _assert_refused(study, classifier, tmp_path, words)


def test_phantom_cropped_field_of_view_is_refused_with_the_reason(
    classifier: LesionClassifier, tmp_path: Path
) -> None:
    study = _phantom_files(
        tmp_path / "study",
        seed=3,
        histology="E",
        ct_size=128,
        ct_slices=40,
        field_of_view_mm=200.0,
    )
    _assert_refused(study, classifier, tmp_path, "field of view is too small")


def _a0002_tumour(data: Path) -> tuple[list[Path], tuple[float, float]]:
    """A0002's annotated CT series and the centre (x, y mm) of its largest tumour box."""
    boxes = {}
    for xml in (data / "Annotation" / "A0002").glob("*.xml"):
        box = ET.parse(xml).getroot().find("object/bndbox")
        assert box is not None, xml
        boxes[xml.stem] = [
            int(float(box.findtext(k) or 0)) for k in ("xmin", "ymin", "xmax", "ymax")
        ]
    uid, (x0, y0, x1, y1) = max(
        boxes.items(), key=lambda kv: (kv[1][2] - kv[1][0]) * (kv[1][3] - kv[1][1])
    )
    for path in sorted((data / "Lung-PET-CT-Dx" / "Lung_Dx-A0002").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.SOPInstanceUID == uid:
            spacing = [float(v) for v in ds.PixelSpacing]
            position = [float(v) for v in ds.ImagePositionPatient]
            centre = (
                position[0] + (x0 + x1) / 2 * spacing[1],
                position[1] + (y0 + y1) / 2 * spacing[0],
            )
            return sorted(path.parent.glob("*.dcm")), centre
    raise AssertionError(f"the slice {uid} of A0002's largest tumour box is not in {data}")


def test_real_ct_cropped_around_its_tumour_is_refused_with_the_reason(
    lung_pet_ct_dx: Path, classifier: LesionClassifier, tmp_path: Path
) -> None:
    """A0002 reconstructed with a 20 cm field of view around its 78 mm tumour (reported
    "without findings" before the check)."""
    paths, centre = _a0002_tumour(lung_pet_ct_dx)
    cropped, _ = crop_series([pydicom.dcmread(p) for p in paths], centre, 200.0)
    study = _files(cropped, tmp_path / "cropped")
    _assert_refused(study, classifier, tmp_path, "field of view is too small")


def _real_ct(data: Path, patient: str) -> Volume:
    studies, notes = scan_folder(data / "Lung-PET-CT-Dx" / f"Lung_Dx-{patient}")
    assert len(studies) == 1, notes
    candidates = _candidates_of(studies[0], [])
    selection = select_series(candidates, AnalysisSettings())
    assert selection.ct, selection.rejected
    return _load(selection.ct[0], load_ct_volume, _Clock())


@pytest.mark.parametrize("patient", REAL_PATIENTS)
def test_every_real_chest_ct_passes_the_check(lung_pet_ct_dx: Path, patient: str) -> None:
    ct = _real_ct(lung_pet_ct_dx, patient)
    assert chest_refusal(ct, lung_mask(ct)) is None


@pytest.mark.parametrize(
    "options", PHANTOM_CHESTS, ids=lambda o: f"{o['ct_size']}x{o['ct_slices']}"
)
def test_every_phantom_chest_passes_the_check(options: dict) -> None:
    ct = load_ct_volume(generate_study(pet=False, **options).ct)
    assert chest_refusal(ct, lung_mask(ct)) is None


@pytest.mark.slow
@pytest.mark.parametrize("patient", REAL_PATIENTS)
def test_every_real_chest_ct_is_still_analysed(
    lung_pet_ct_dx: Path, patient: str, classifier: LesionClassifier
) -> None:
    studies, notes = scan_folder(lung_pet_ct_dx / "Lung-PET-CT-Dx" / f"Lung_Dx-{patient}")
    assert len(studies) == 1, notes
    result = analyze_study(studies[0], AnalysisSettings(), classifier).result
    assert result.analysed, result.skipped
    assert result.refusal is None


def test_one_lung_or_no_lung_is_refused_on_a_mask() -> None:
    """The check reads the lung mask's labels: one lung alone, or none, is refused."""
    ct = load_ct_volume(generate_study(3, "A", ct_size=64, ct_slices=12, pet=False).ct)
    lungs = lung_mask(ct)
    from dataclasses import replace

    one = replace(lungs, labels=np.where(lungs.labels == 2, 0, lungs.labels).astype(np.uint8))
    assert "Only one lung" in (chest_refusal(ct, one) or "")
    none = replace(lungs, labels=np.zeros_like(lungs.labels))
    assert "No lung was found" in (chest_refusal(ct, none) or "")


def test_cropped_images_keep_their_pixels_at_the_same_patient_points() -> None:
    study = generate_study(3, "A", ct_size=64, ct_slices=8, pet=False)
    cropped, (r0, r1, c0, c1) = crop_series(study.ct, (-60.0, 10.0), 120.0)
    for before, after in zip(study.ct, cropped, strict=True):
        assert np.array_equal(after.pixel_array, before.pixel_array[r0:r1, c0:c1])
        spacing = [float(v) for v in before.PixelSpacing]
        moved = [float(v) for v in before.ImagePositionPatient]
        moved[0] += c0 * spacing[1]
        moved[1] += r0 * spacing[0]
        assert [float(v) for v in after.ImagePositionPatient] == pytest.approx(moved, abs=1e-3)
    assert (r1 - r0, c1 - c0) == (round(120.0 / spacing[0]), round(120.0 / spacing[1]))
    with pytest.raises(ValueError, match="lies outside image"):
        crop_series(study.ct, (500.0, 0.0), 120.0)


def test_phantom_regions_are_validated() -> None:
    with pytest.raises(ValueError, match="region 'knee' is not one of"):
        generate_study(1, "A", region="knee")
    with pytest.raises(ValueError, match="no lungs to plant lesions in"):
        generate_study(1, "A", region="head")
    with pytest.raises(ValueError, match="field_of_view_mm=400"):
        generate_study(1, "A", field_of_view_mm=400.0)
    cropped = generate_study(3, "E", ct_size=64, ct_slices=8, pet=False, field_of_view_mm=150.0)
    assert cropped.lesion_mask.shape[1:] == cropped.ct[0].pixel_array.shape
    assert cropped.lesion_mask.any() and cropped.boxes
