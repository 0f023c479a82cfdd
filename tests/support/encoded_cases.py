"""The SR/SEG encoder test cases: StudyResults built by hand from phantom ground truth (and
one real CT series when the Lung-PET-CT-Dx subset is present), encoded and written once per
session by the `encoded_cases` fixture (conftest.py) for tests/integration/test_sr_encoder.py and
tests/integration/test_seg_encoder.py."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from classifier.datasets.phantom import generate_study
from classifier.results.encode import encode
from classifier.types import (
    HISTOLOGY_CLASSES,
    ImageReference,
    Lesion,
    ModelInfo,
    StudyResult,
    lesion_tracking_uid,
)

MODEL = ModelInfo(
    name="lungnode-cnn-demo",
    version="0.1.0",
    sha256="3f2a9c0e5b7d41e8a6c2f0b9d8e7a6c5b4a3928170f6e5d4c3b2a1908f7e6d5c",
    trained_on="phantom",
    clinical_use=False,
)


# Warnings dciodvfy prints that are expected; docs/CONFORMANCE.md gives the reason for each.
KNOWN_DCIODVFY_WARNINGS = (
    "Unrecognized defined term = <99LUNGNODE>",
    # IHE AIR's Device UID of the algorithm (item 2 in SR and SEG, item 1 in GSPS, SC, KOS).
    "/DeviceUID(0018,1002)> - Attribute is not present in standard DICOM IOD",
    # Copied from the source images: the phantom's TCIA-style patient names, and the real
    # TCIA series' empty Study ID.
    "Retired Person Name form",
    "</StudyID(0020,0010)> - Missing attribute or value that would be needed to build DICOMDIR",
)


def ref(ds: pydicom.Dataset) -> ImageReference:
    return ImageReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))


def lesion_from_mask(
    mask: np.ndarray,
    ct: list[pydicom.Dataset],
    number: int,
    histology_class: str,
    pet: bool,
    *,
    side: str = "right",
    lobe: str | None = None,
) -> Lesion:
    """A Lesion with the mask's geometry and made-up but distinct CNN outputs and PET values."""
    zs, rs, cs = np.nonzero(mask)
    z0, z1, r0, r1, c0, c1 = zs.min(), zs.max(), rs.min(), rs.max(), cs.min(), cs.max()
    cropped = mask[z0 : z1 + 1, r0 : r1 + 1, c0 : c1 + 1].copy()
    areas = mask.sum(axis=(1, 2))
    key = int(np.argmax(areas))
    kr, kc = np.nonzero(mask[key])
    spacing = [float(v) for v in ct[0].PixelSpacing]
    thickness = float(ct[0].SliceThickness)
    ipp = np.array([float(v) for v in ct[key].ImagePositionPatient])
    centroid = ipp + np.array([kc.mean() * spacing[1], kr.mean() * spacing[0], 0.0])
    others = [c for c in HISTOLOGY_CLASSES if c != histology_class]
    histology = {histology_class: 0.61, others[0]: 0.21, others[1]: 0.11, others[2]: 0.07}
    return Lesion(
        tracking_id=f"Lesion {number}",
        tracking_uid=lesion_tracking_uid(
            str(ct[0].StudyInstanceUID), str(ct[0].SeriesInstanceUID), tuple(centroid)
        ),
        key_slice_index=key,
        key_slice=ref(ct[key]),
        box_rc=(int(kr.min()), int(kc.min()), int(kr.max()), int(kc.max())),
        slice_range=(int(z0), int(z1)),
        centroid_mm=tuple(float(v) for v in centroid),
        side=side,
        lobe=lobe,
        long_axis_mm=round(float(kc.max() - kc.min() + 1) * spacing[1] + 0.25 * number, 2),
        short_axis_mm=round(float(kr.max() - kr.min() + 1) * spacing[0] * 0.8, 2),
        volume_ml=round(float(mask.sum()) * spacing[0] * spacing[1] * thickness / 1000.0, 3),
        mask=cropped,
        mask_origin=(int(z0), int(r0), int(c0)),
        suv_max=7.25 + number if pet else None,
        suv_mean=3.5 + number if pet else None,
        mtv_ml=1.75 * number if pet else None,
        tlg=(3.5 + number) * 1.75 * number if pet else None,
        lesion_probability=0.93 - 0.01 * number,
        histology=histology,
        detected_by="CT+PET" if pet else "CT",
    )


def split_lesions(mask: np.ndarray, planted: list, ct: list[pydicom.Dataset]) -> list[np.ndarray]:
    """One mask per planted lesion: each voxel goes to the nearest planted centre."""
    zs, rs, cs = np.nonzero(mask)
    if len(planted) <= 1 or len(zs) == 0:
        return [mask] if len(zs) else []
    spacing = [float(v) for v in ct[0].PixelSpacing]
    origin = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in ct])
    points = origin[zs] + np.stack([cs * spacing[1], rs * spacing[0], np.zeros_like(zs)], axis=1)
    centres = np.array([p.center_mm for p in planted])
    nearest = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
    masks = []
    for i in range(len(planted)):
        part = np.zeros_like(mask)
        part[zs[nearest == i], rs[nearest == i], cs[nearest == i]] = True
        if part.any():
            masks.append(part)
    return masks


@dataclass
class Case:
    """One encoded test case: the result, its sources, and where its objects were written."""

    name: str
    result: StudyResult
    sources: list[pydicom.Dataset]
    objects: list[pydicom.Dataset]
    paths: list[Path]


def phantom_result(
    seed: int,
    histology: str,
    *,
    pet: bool,
    n_lesions: int,
    analysed: bool = True,
) -> tuple[StudyResult, list[pydicom.Dataset]]:
    """A phantom study (small: 64x64x16) and a StudyResult built from its ground truth."""
    study = generate_study(
        seed,
        histology,
        ct_size=64,
        ct_slices=16,
        pet=pet,
        pet_size=32,
        n_lesions=max(n_lesions, 1),
        lesion=n_lesions > 0,
    )
    ct, pt = study.ct, study.pet if pet else []
    sources = list(ct) + list(pt)
    if not analysed:
        result = StudyResult(
            study_instance_uid=study.study_instance_uid,
            model=MODEL,
            skipped=(
                (
                    "No CT series of at least 20 slices was received: the only CT series has "
                    "16 slices. Send the whole chest CT series."
                ),
            ),
        )
        return result, sources
    lesions: list[Lesion] = []
    for i, mask in enumerate(split_lesions(study.lesion_mask, study.lesions, ct), start=1):
        side, lobe = (("right", "RUL"), ("left", None))[(i - 1) % 2]
        lesions.append(lesion_from_mask(mask, ct, i, histology, pet, side=side, lobe=lobe))
    skipped = () if pet else ("No PET series was received; SUV measurements were not made.",)
    result = StudyResult(
        study_instance_uid=study.study_instance_uid,
        model=MODEL,
        ct_series_uid=str(ct[0].SeriesInstanceUID),
        pet_series_uid=str(pt[0].SeriesInstanceUID) if pt else None,
        ct_slices=tuple(ref(ds) for ds in ct),
        pet_slices=tuple(ref(ds) for ds in pt),
        ct_shape=tuple(int(v) for v in study.lesion_mask.shape),
        lesions=tuple(lesions),
        skipped=skipped,
    )
    return result, sources


def write_case(
    name: str, result: StudyResult, sources: list[pydicom.Dataset], folder: Path, **kwargs
) -> Case:
    objects = encode(result, sources, **kwargs)
    paths = []
    for number, ds in enumerate(objects):
        path = folder / f"{name}-{number}-{ds.Modality}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return Case(name, result, sources, objects, paths)


def real_ct_result(real_ct: Path) -> tuple[StudyResult, list[pydicom.Dataset]] | None:
    """One real CT series with one lesion: the first annotation box as a one-slice mask."""
    annotations = sorted((real_ct / "Annotation").glob("*/*.xml"))
    if not annotations:
        return None
    xml = annotations[0]
    target_uid = xml.stem
    series = None
    for folder in sorted({p.parent for p in (real_ct / "Lung-PET-CT-Dx").rglob("*.dcm")}):
        headers = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
        if any(h.SOPInstanceUID == target_uid for h in headers):
            series = headers
            break
    if series is None:
        return None
    series.sort(key=lambda h: float(h.ImagePositionPatient[2]))
    key = next(i for i, h in enumerate(series) if h.SOPInstanceUID == target_uid)
    box = ET.parse(xml).getroot().find("object/bndbox")
    xmin, ymin, xmax, ymax = (int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
    shape = (len(series), int(series[0].Rows), int(series[0].Columns))
    mask = np.zeros(shape, dtype=bool)
    mask[key, ymin : ymax + 1, xmin : xmax + 1] = True
    lesion = lesion_from_mask(mask, series, 1, "A", False, side="left", lobe="left upper lobe")
    result = StudyResult(
        study_instance_uid=str(series[0].StudyInstanceUID),
        model=MODEL,
        ct_series_uid=str(series[0].SeriesInstanceUID),
        ct_slices=tuple(ref(h) for h in series),
        ct_shape=shape,
        lesions=(lesion,),
    )
    return result, series


def refused_result(seed: int) -> tuple[StudyResult, list[pydicom.Dataset]]:
    """A phantom CT read but refused as not a whole chest (StudyResult.refusal)."""
    study = generate_study(seed, "A", ct_size=64, ct_slices=16, pet=False, field_of_view_mm=150.0)
    reason = "The body is cut by the edge of the image lateral of the right lung."
    result = StudyResult(
        study_instance_uid=study.study_instance_uid,
        model=MODEL,
        ct_series_uid=str(study.ct[0].SeriesInstanceUID),
        ct_slices=tuple(ref(ds) for ds in study.ct),
        ct_shape=(len(study.ct), int(study.ct[0].Rows), int(study.ct[0].Columns)),
        skipped=(reason,),
        refusal=reason,
    )
    return result, list(study.ct)


def build_encoded_cases(folder: Path, real_ct: Path) -> dict[str, Case]:
    """The encoded cases the SR and SEG tests inspect, written into `folder`; "real" is there
    only when the Lung-PET-CT-Dx subset `real_ct` is.

    The lesion cases state histology (`histology="on"`) so the tests can check how it is
    encoded; "histology-auto" is the node's default with a model whose real-patient histology
    accuracy is not recorded: histology not assessed."""
    out = {}
    on = {"histology": "on"}
    result, sources = phantom_result(11, "B", pet=True, n_lesions=2)
    out["pet"] = write_case("pet", result, sources, folder, **on)
    # A second version of the same report, naming the first as its predecessor.
    out["pet-v2"] = write_case(
        "pet-v2",
        result,
        sources,
        folder,
        predecessor=out["pet"].objects[0],
        series_number=910,
        instance_number=2,
        **on,
    )
    result, sources = phantom_result(12, "G", pet=False, n_lesions=1)
    out["ct"] = write_case("ct", result, sources, folder, **on)
    out["histology-auto"] = write_case("histology-auto", result, sources, folder)
    result, sources = phantom_result(13, "A", pet=True, n_lesions=0)
    out["nolesion"] = write_case("nolesion", result, sources, folder)
    result, sources = phantom_result(14, "E", pet=False, n_lesions=1, analysed=False)
    out["notanalysed"] = write_case("notanalysed", result, sources, folder)
    out["refused"] = write_case("refused", *refused_result(15), folder)
    if real_ct.exists():
        real = real_ct_result(real_ct)
        assert real is not None, f"{real_ct} is present but holds no annotated CT series"
        out["real"] = write_case("real", *real, folder, **on)
    return out


def real_case(cases: dict[str, Case]) -> Case:
    if "real" not in cases:
        pytest.skip(
            "real TCIA case not encoded: shared/data/lung-pet-ct-dx is absent "
            "(see /work/shared/data/README.md; LUNGNODE_TEST_SHARED_DATA points elsewhere)"
        )
    return cases["real"]
