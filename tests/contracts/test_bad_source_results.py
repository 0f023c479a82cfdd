"""Valid output from invalid input: a real CT series with the faults scanners write
(tests/support/faulty_sources.py) still yields result objects of every kind that pass dciodvfy
with no errors, and the repairs are the ones intended."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_validators import dciodvfy_report
from encoded_cases import MODEL, lesion_from_mask, ref
from faulty_sources import (
    DETACHED_STUDY_MANAGEMENT,
    a0002_ct_folder,
    add_faults,
    write_faulty_series,
)

from classifier.results.encode import encode
from classifier.results.sanitize import clean_source
from classifier.types import StudyResult


@pytest.fixture(scope="module")
def faulty_series(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = a0002_ct_folder(shared_data / "lung-pet-ct-dx")
    if folder is None:
        pytest.skip("Lung-PET-CT-Dx A0002 is not in the shared data")
    return write_faulty_series(folder, tmp_path_factory.mktemp("faulty-a0002"))


def _result(paths: list[Path], real_data: Path) -> tuple[StudyResult, list[pydicom.Dataset]]:
    series = [pydicom.dcmread(p) for p in paths]
    series.sort(key=lambda h: float(h.ImagePositionPatient[2]))
    uids = {h.SOPInstanceUID: i for i, h in enumerate(series)}
    shape = (len(series), int(series[0].Rows), int(series[0].Columns))
    masks = []
    for xml in sorted((real_data / "Annotation" / "A0002").glob("*.xml")):
        if xml.stem not in uids or len(masks) == 2:
            continue
        box = ET.parse(xml).getroot().find("object/bndbox")
        assert box is not None
        x0, y0, x1, y1 = (
            int(float(box.findtext(k) or 0)) for k in ("xmin", "ymin", "xmax", "ymax")
        )
        mask = np.zeros(shape, dtype=bool)
        mask[uids[xml.stem], y0 : y1 + 1, x0 : x1 + 1] = True
        masks.append(mask)
    assert masks, "no annotation of A0002 lies in its CT series"
    lesions = tuple(
        lesion_from_mask(mask, series, i, "A", False, side="left")
        for i, mask in enumerate(masks, start=1)
    )
    result = StudyResult(
        study_instance_uid=str(series[0].StudyInstanceUID),
        model=MODEL,
        ct_series_uid=str(series[0].SeriesInstanceUID),
        ct_slices=tuple(ref(h) for h in series),
        ct_shape=shape,
        lesions=lesions,
    )
    return result, series


def test_faults_are_present_in_the_fixture(faulty_series: list[Path]) -> None:
    ds = pydicom.dcmread(faulty_series[0])
    items = ds.ReferencedStudySequence
    assert "ReferencedSOPClassUID" not in items[0]
    assert items[1].ReferencedSOPClassUID == DETACHED_STUDY_MANAGEMENT
    assert ds.ProcedureCodeSequence[0].CodeMeaning == ""
    assert "StudyTime" not in ds and len(ds.StudyDescription) > 64
    assert faulty_series[0].read_bytes().count(b"ISO_IR100 ") == 1


def test_every_object_for_faulty_input_passes_dciodvfy(
    faulty_series: list[Path], shared_data: Path, tmp_path: Path
) -> None:
    result, series = _result(faulty_series, shared_data / "lung-pet-ct-dx")
    notes: list[str] = []
    objects = encode(result, series, notes=notes)
    assert sorted({ds.Modality for ds in objects}) == ["KO", "OT", "PR", "SEG", "SR"]
    failures = {}
    for number, ds in enumerate(objects):
        path = tmp_path / f"{number}-{ds.Modality}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        errors, _ = dciodvfy_report(path)
        if errors:
            failures[path.name] = errors
        back = pydicom.dcmread(path)
        assert "ReferencedStudySequence" not in back
        assert "ProcedureCodeSequence" not in back
        assert back.PatientName == "Müller^Jürgen"
        assert back.PatientID == "Lung_Dx-A0002"
        assert back.SpecificCharacterSet == "ISO_IR 192"
        assert back.StudyTime == "" and back.AccessionNumber == ""
        assert len(back.StudyID) <= 16
    assert failures == {}
    assert any("ReferencedStudySequence" in n for n in notes)
    assert any("SpecificCharacterSet" in n for n in notes)


def test_clean_source_repairs_and_notes_without_values() -> None:
    ds = pydicom.Dataset()
    ds.SOPClassUID = pydicom.uid.CTImageStorage
    ds.SOPInstanceUID = "1.2.3"
    ds.StudyInstanceUID = "1.2.3.4"
    add_faults(ds)
    ds.SpecificCharacterSet = "ISO_IR100"
    notes = clean_source(ds)
    assert "ReferencedStudySequence" not in ds
    assert "ProcedureCodeSequence" not in ds
    assert ds.StudyDescription == ds.StudyDescription.strip() and len(ds.StudyDescription) <= 64
    assert ds.StudyID == "STUDY-ID-LONGER-"
    assert "PatientAge" not in ds and "PatientWeight" not in ds
    assert ds.PatientID == "Lung_Dx-A0002"
    assert ds.AdmittingDiagnosesDescription == "lung mass"
    assert ds.StudyTime == "" and ds.AccessionNumber == ""
    assert "SpecificCharacterSet" not in ds
    assert not any("Müller" in n or "A0002" in n for n in notes)
