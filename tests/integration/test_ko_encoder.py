"""The Key Object Selection encoder (classifier/results/ko_encoder.py): the KOS of an encoded
case (tests/encoded_cases.py) references the key slices and every other result object, and
build_ko alone references what it is given, with the numbers and character set asked for."""

from __future__ import annotations

from dataclasses import replace

import pydicom
from encoded_cases import Case

from classifier.results import codes
from classifier.results.ko_encoder import KEY_OBJECT_TITLE, build_ko


def _referenced(ko: pydicom.Dataset) -> set[str]:
    return {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in ko.ContentSequence
        if item.ValueType in ("IMAGE", "COMPOSITE")
    }


def _description(ko: pydicom.Dataset) -> list[str]:
    return [i.TextValue for i in ko.ContentSequence if i.ValueType == "TEXT"]


def test_key_object_selection_references_key_slices_and_every_result(
    encoded_cases: dict[str, Case],
) -> None:
    case = encoded_cases["pet"]
    (ko,) = [ds for ds in case.objects if ds.Modality == "KO"]
    assert ko.SOPClassUID == pydicom.uid.KeyObjectSelectionDocumentStorage
    assert ko.ConceptNameCodeSequence[0].CodeValue == "113000"
    wanted = {lesion.key_slice.sop_instance_uid for lesion in case.result.lesions}
    wanted |= {ds.SOPInstanceUID for ds in case.objects if ds.Modality != "KO"}
    assert _referenced(ko) == wanted
    assert any(codes.NOT_CLINICAL in text for text in _description(ko))


def test_build_ko_references_what_it_is_given(encoded_cases: dict[str, Case]) -> None:
    case = encoded_cases["ct"]
    key_slice = case.result.lesions[0].key_slice.sop_instance_uid
    (source,) = [ds for ds in case.sources if ds.SOPInstanceUID == key_slice]
    sr = case.objects[0]
    clinical = replace(case.result, model=replace(case.result.model, clinical_use=True))
    ko = build_ko(
        clinical,
        [source, sr],
        series_number=904,
        instance_number=3,
        specific_character_set="ISO_IR 192",
    )
    assert ko.ConceptNameCodeSequence[0].CodeValue == KEY_OBJECT_TITLE.value
    assert (ko.SeriesNumber, ko.InstanceNumber) == (904, 3)
    assert ko.SpecificCharacterSet == "ISO_IR 192"
    assert _referenced(ko) == {key_slice, sr.SOPInstanceUID}
    assert (ko.PatientID, ko.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
    assert ko.SeriesInstanceUID not in {source.SeriesInstanceUID, sr.SeriesInstanceUID}
    description = " ".join(_description(ko))
    assert f"by {clinical.model.name} {clinical.model.version}: key slices of" in description
    assert codes.NOT_CLINICAL not in description
