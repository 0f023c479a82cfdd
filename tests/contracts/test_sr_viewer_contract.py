"""What the viewers' SR readers need from every report the node sends, checked on the encoded
cases (multi-lesion with PET, second version, CT only, no lesion, not analysed, real CT).

The rules are read from the viewers' own parsers (see docs/CONFORMANCE.md, "What the viewers
read"): OHIF's TID 1500 handler (extensions/cornerstone-dicom-sr, getSopClassHandlerModule)
accepts only a document titled Imaging Measurement Report (126000); reads the Image Library
(111028) and its Image Library Group (126200) for images with a Referenced SOP Class UID; reads
Imaging Measurements (126010) without a check, so it must be there; dereferences the Tracking
Unique Identifier (112040) of every Measurement Group (125007), so a group without one stops
the whole report from loading; merges groups by that UID; takes the first SCOORD of a merged
group with its image reference inside the SCOORD's content, and labels each NUM by its concept
name's meaning, value and unit code. Weasis shows concept names only for SEPARATE containers.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from encoded_cases import Case
from pydicom.dataset import Dataset

SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34"}


def _code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def _child(items: list[Dataset], code: str) -> Dataset | None:
    return next((i for i in items if "ConceptNameCodeSequence" in i and _code(i) == code), None)


def _sr(case: Case) -> Dataset:
    (sr,) = [o for o in case.objects if o.SOPClassUID in SR_CLASSES]
    return sr


def _containers(items: list[Dataset]) -> list[Dataset]:
    found = []
    for item in items:
        if item.ValueType == "CONTAINER":
            found.append(item)
        found.extend(_containers(list(item.get("ContentSequence", []))))
    return found


@pytest.fixture(scope="module")
def cases(encoded_cases: dict[str, Case]) -> dict[str, Case]:
    return encoded_cases


def test_every_report_loads_in_ohif(cases: dict[str, Case]) -> None:
    for name, case in cases.items():
        sr = _sr(case)
        assert _code(sr) == "126000", name  # Imaging Measurement Report
        root = list(sr.ContentSequence)
        library = _child(root, "111028")
        assert library is not None, f"{name}: no Image Library"
        group = _child(list(library.get("ContentSequence", [])), "126200")
        assert group is not None, f"{name}: no Image Library Group"
        images = [i for i in group.ContentSequence if "ReferencedSOPSequence" in i]
        assert images and all(
            i.ReferencedSOPSequence[0].get("ReferencedSOPClassUID") for i in images
        ), name
        measurements = _child(root, "126010")
        assert measurements is not None, f"{name}: no Imaging Measurements"
        for item in measurements.get("ContentSequence", []):
            if _code(item) != "125007":
                continue
            uid = _child(list(item.ContentSequence), "112040")
            assert uid is not None and uid.UID, f"{name}: a measurement group without 112040"
            label = _child(list(item.ContentSequence), "112039")
            assert label is not None and label.TextValue, f"{name}: group without 112039"


def test_each_finding_has_one_outline_on_its_image_and_labelled_numbers(
    cases: dict[str, Case],
) -> None:
    for name, case in cases.items():
        if not case.result.lesions:
            continue
        measurements = _child(list(_sr(case).ContentSequence), "126010")
        assert measurements is not None
        merged: dict[str, list[Dataset]] = defaultdict(list)
        for item in measurements.ContentSequence:
            if _code(item) == "125007":
                uid = _child(list(item.ContentSequence), "112040")
                assert uid is not None
                merged[str(uid.UID)].extend(item.ContentSequence)
        assert len(merged) == len(case.result.lesions), name
        for items in merged.values():
            scoord = next(i for i in items if i.ValueType in ("SCOORD", "SCOORD3D"))
            if scoord.ValueType == "SCOORD":
                (ref,) = [c for c in scoord.ContentSequence if "ReferencedSOPSequence" in c]
                assert ref.ReferencedSOPSequence[0].ReferencedSOPClassUID, name
            numbers = [i for i in items if i.ValueType == "NUM"]
            assert numbers, name
            for number in numbers:
                value = number.MeasuredValueSequence[0]
                assert value.MeasurementUnitsCodeSequence[0].CodeValue, name
                assert number.ConceptNameCodeSequence[0].CodeMeaning, name


def test_every_container_is_separate(cases: dict[str, Case]) -> None:
    for name, case in cases.items():
        sr = _sr(case)
        assert sr.ContinuityOfContent == "SEPARATE", name
        for container in _containers(list(sr.ContentSequence)):
            assert container.ContinuityOfContent == "SEPARATE", (name, _code(container))
