"""The SR encoder: phantom and real studies -> TID 1500 SRs that validators accept and read back.

StudyResults are built by hand from phantom ground truth (lesion masks, boxes; see
tests/support/encoded_cases.py) so these tests do not depend on the analysis; each case is validated
with dciodvfy, the PixelMed SR validator and dsrdump, and read back with highdicom to recover
every encoded value.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_validators import (
    dciodvfy_report,
    run_dsrdump,
    run_pixelmed_sr_validators,
)
from encoded_cases import KNOWN_DCIODVFY_WARNINGS, MODEL, Case, real_case, write_case
from pydicom.sr.codedict import codes as dicom_codes

from classifier.results import codes, sr_encoder
from classifier.results.encode import encode


def read_sr(case: Case) -> hd.sr.Comprehensive3DSR:
    return hd.sr.srread(case.paths[0])


def test_sr_header_names_patient_study_algorithm_and_evidence(
    encoded_cases: dict[str, Case],
) -> None:
    for name, case in encoded_cases.items():
        sr = read_sr(case)
        source = case.sources[0]
        assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage, name
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyInstanceUID",
            "StudyID",
            "AccessionNumber",
            "StudyDate",
        ):
            assert sr.get(keyword) == source.get(keyword), (name, keyword)
        assert sr.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in case.sources}
        assert sr.SeriesDescription.startswith("AI ")
        assert "NOT FOR CLINICAL USE" in sr.SeriesDescription
        assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
        assert len(sr.PerformedProcedureCodeSequence) == 1
        expected = {r.sop_instance_uid for r in case.result.evidence} or {
            ds.SOPInstanceUID for ds in case.sources
        }
        if len(case.objects) > 1:
            expected.add(case.objects[1].SOPInstanceUID)  # the SEG
        listed = {uids[2] for uids in sr.get_evidence(current_procedure_only=True)}
        assert listed == expected, name
        algorithm = [
            item
            for item in sr.ContributingEquipmentSequence
            if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
        ]
        assert len(algorithm) == 1, name
        item = algorithm[0]
        assert item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
        assert item.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
        assert (item.Manufacturer, item.ManufacturerModelName, item.SoftwareVersions) == (
            "lungnode",
            MODEL.name,
            MODEL.version,
        )
        assert item.DeviceUID == "2.25." + str(int(MODEL.sha256[:30], 16))
        assert len(item.DeviceUID) <= 64
        designators = {i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence}
        assert {"99LUNGNODE", "99IHE"} <= designators


def test_procedure_reported_and_device_observer(encoded_cases: dict[str, Case]) -> None:
    expected = {"pet": "443271005", "ct": "25045-6", "notanalysed": "25045-6"}
    for name, value in expected.items():
        sr = read_sr(encoded_cases[name])
        assert sr.PerformedProcedureCodeSequence[0].CodeValue == value
        procedures = [
            item
            for item in sr.ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == "121058"
        ]
        assert [p.ConceptCodeSequence[0].CodeValue for p in procedures] == [value]
        context = sr.content.get_observer_contexts(observer_type=dicom_codes.DCM.Device)
        assert len(context) == 1
        attributes = context[0].observer_identifying_attributes
        assert attributes.uid == codes.device_uid(MODEL)
        assert attributes.name == MODEL.name
        assert attributes.manufacturer_name == "lungnode"


def test_device_uid_follows_the_weights() -> None:
    other = replace(MODEL, sha256="0" * 63 + "1")
    assert codes.device_uid(other) != codes.device_uid(MODEL)
    assert codes.device_uid(other) == "2.25.0"
    with pytest.raises(ValueError, match="sha256"):
        codes.device_uid(replace(MODEL, sha256="not-a-digest"))


def _value(measurements: list, name, derivation=None) -> float:
    found = [
        m
        for m in measurements
        if m.name == name and (derivation is None or m.derivation == derivation)
    ]
    assert len(found) == 1, (name, derivation, [m.name for m in measurements])
    return float(found[0].value)


def test_lesion_measurements_round_trip(encoded_cases: dict[str, Case]) -> None:
    for name in ("pet", "ct", "real"):
        if name == "real":
            case = real_case(encoded_cases)
        else:
            case = encoded_cases[name]
        sr = read_sr(case)
        seg = case.objects[1]
        assert case.result.lesions, name
        for number, lesion in enumerate(case.result.lesions, start=1):
            groups = sr.content.get_volumetric_roi_measurement_groups(
                tracking_uid=lesion.tracking_uid
            )
            assert len(groups) == 1, (name, lesion.tracking_id)
            group = groups[0]
            assert group.tracking_identifier == lesion.tracking_id
            assert group.tracking_uid == lesion.tracking_uid
            assert group.finding_type == codes.finding_type(lesion.long_axis_mm)
            segment = group.referenced_segment
            assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
            assert segment.referenced_segment_numbers == [number]
            m = group.get_measurements()
            assert _value(m, codes.VOLUME) == pytest.approx(lesion.volume_ml)
            assert _value(m, codes.CERTAINTY_OF_FINDING) == pytest.approx(
                100 * lesion.lesion_probability
            )
            for cls, p in lesion.histology.items():
                assert _value(m, codes.PROBABILITY_OF_HISTOLOGY[cls]) == pytest.approx(100 * p)
            units = {m_.name.value: m_.unit.value for m_ in m}
            assert units[codes.VOLUME.value] == "ml"
            assert units[codes.CERTAINTY_OF_FINDING.value] == "%"
            for code in codes.PROBABILITY_OF_HISTOLOGY.values():
                assert units[code.value] == "%"  # OHIF showed unit "1" as "0.96 1"
            if lesion.suv_max is not None:
                assert _value(m, codes.SUV_BW, codes.MAXIMUM) == pytest.approx(lesion.suv_max)
                assert _value(m, codes.SUV_BW, codes.MEAN) == pytest.approx(lesion.suv_mean)
                assert _value(m, codes.METABOLIC_VOLUME) == pytest.approx(lesion.mtv_ml)
                assert _value(m, codes.TOTAL_LESION_GLYCOLYSIS) == pytest.approx(lesion.tlg)
                assert units[codes.SUV_BW.value] == "{SUVbw}g/ml"
            else:
                assert not [m_ for m_ in m if m_.name == codes.SUV_BW]
            evaluations = group.get_qualitative_evaluations(name=codes.ASSOCIATED_MORPHOLOGY)
            assert [e.value for e in evaluations] == [
                codes.HISTOLOGY_CODES[lesion.most_probable_type]
            ]
            site, laterality = codes.finding_site_codes(lesion.side, lesion.lobe)
            assert [s.value for s in group.finding_sites] == [site]
            if laterality is not None:
                assert group.finding_sites[0].laterality == laterality

            planar = sr.content.get_planar_roi_measurement_groups(tracking_uid=lesion.tracking_uid)
            assert len(planar) == 1
            region = planar[0].roi
            assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
            source = region.ContentSequence[0].ReferencedSOPSequence[0]
            assert source.ReferencedSOPInstanceUID == lesion.key_slice.sop_instance_uid
            r0, c0, r1, c1 = lesion.box_rc
            ring = region.value
            assert np.array_equal(ring[0], ring[-1])
            assert ring.min(axis=0).tolist() == [c0, r0]
            assert ring.max(axis=0).tolist() == [c1 + 1, r1 + 1]
            assert planar[0].tracking_identifier == lesion.tracking_id
            assert planar[0].get_measurements() == []  # OHIF would look for the box under a NUM
            lines = sr.content.get_image_measurement_groups(tracking_uid=lesion.tracking_uid)
            diameters = [d for group in lines for d in group.get_measurements()]
            assert len(lines) == len(diameters) == 2
            assert _value(diameters, codes.LONG_AXIS) == pytest.approx(lesion.long_axis_mm)
            assert _value(diameters, codes.SHORT_AXIS) == pytest.approx(lesion.short_axis_mm)
            assert {d.unit.value for d in diameters} == {"mm"}


def _text_items(sr: hd.sr.Comprehensive3DSR) -> list[str]:
    items = hd.sr.utils.find_content_items(
        sr, value_type=hd.sr.ValueTypeValues.TEXT, recursive=True
    )
    return [item.TextValue for item in items]


def _findings(sr: hd.sr.Comprehensive3DSR) -> set[str]:
    items = hd.sr.utils.find_content_items(
        sr, name=codes.CAD_SUMMARY, value_type=hd.sr.ValueTypeValues.CODE, recursive=True
    )
    return {item.ConceptCodeSequence[0].CodeValue for item in items}


def test_no_lesion_report_says_so(encoded_cases: dict[str, Case]) -> None:
    case = encoded_cases["nolesion"]
    assert len(case.objects) == 1  # nothing to outline: no SEG, GSPS, key images or KOS
    sr = read_sr(case)
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    assert _findings(sr) == {codes.ALL_SUCCEEDED_WITHOUT_FINDINGS.value}
    assert any("No lung lesion was found" in text for text in _text_items(sr))


def test_not_analysed_report_gives_the_reason(encoded_cases: dict[str, Case]) -> None:
    case = encoded_cases["notanalysed"]
    assert len(case.objects) == 1
    sr = read_sr(case)
    assert _findings(sr) == {codes.NONE_SUCCEEDED_WITHOUT_FINDINGS.value}
    texts = _text_items(sr)
    assert case.result.skipped[0] in texts
    assert any("could not be analysed" in text for text in texts)


def test_skipped_parts_are_reported_next_to_lesions(encoded_cases: dict[str, Case]) -> None:
    case = encoded_cases["ct"]
    assert case.result.skipped
    assert case.result.skipped[0] in _text_items(read_sr(case))


def test_second_version_names_its_predecessor(encoded_cases: dict[str, Case]) -> None:
    first, second = read_sr(encoded_cases["pet"]), read_sr(encoded_cases["pet-v2"])
    item = second.PredecessorDocumentsSequence[0]
    assert item.StudyInstanceUID == first.StudyInstanceUID
    series = item.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert (second.SeriesNumber, second.InstanceNumber) == (910, 2)
    assert "PredecessorDocumentsSequence" not in first


def test_predecessor_of_another_study_is_refused(encoded_cases: dict[str, Case]) -> None:
    other = read_sr(encoded_cases["ct"])
    case = encoded_cases["pet"]
    with pytest.raises(ValueError, match="predecessor"):
        encode(case.result, case.sources, predecessor=other)


def test_sources_must_cover_the_evidence(encoded_cases: dict[str, Case]) -> None:
    case = encoded_cases["ct"]
    with pytest.raises(ValueError, match=case.result.evidence[-1].sop_instance_uid):
        encode(case.result, case.sources[:-1])
    foreign = encoded_cases["pet"].sources[0]
    with pytest.raises(ValueError, match="belongs to study"):
        encode(case.result, [*case.sources, foreign])
    with pytest.raises(ValueError, match="no source datasets"):
        encode(encoded_cases["notanalysed"].result, [])


def test_non_latin_text_switches_to_utf8(encoded_cases: dict[str, Case], tmp_path: Path) -> None:
    case = encoded_cases["notanalysed"]
    reason = "Série CT incomplète: 12 coupes reçues — 東京の病院から再送してください"
    result = replace(case.result, skipped=(reason,))
    written = write_case("utf8", result, case.sources, tmp_path)
    sr = pydicom.dcmread(written.paths[0])
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert reason in _text_items(hd.sr.Comprehensive3DSR.from_dataset(sr))
    assert sr.PatientName == case.sources[0].PatientName


def test_objects_are_ready_to_save(encoded_cases: dict[str, Case], tmp_path: Path) -> None:
    for ds in encoded_cases["pet"].objects:
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_sr_passes_dciodvfy(encoded_cases: dict[str, Case]) -> None:
    for name, case in encoded_cases.items():
        errors, warnings = dciodvfy_report(case.paths[0])
        assert errors == [], (name, errors)
        unexpected = [w for w in warnings if not any(k in w for k in KNOWN_DCIODVFY_WARNINGS)]
        assert unexpected == [], (name, unexpected)


def test_sr_is_readable_by_dsrdump(encoded_cases: dict[str, Case]) -> None:
    for name, case in encoded_cases.items():
        text = run_dsrdump(case.paths[0])
        assert "Imaging Measurement Report" in text, name
        for lesion in case.result.lesions:
            assert lesion.tracking_uid in text, name


def _item_at(sr: pydicom.Dataset, path: str) -> pydicom.Dataset:
    """The content item at a PixelMed location such as "1.9.2" (1 is the root)."""
    item = sr
    for index in path.split(".")[1:]:
        item = item.ContentSequence[int(index) - 1]
    return item


def _group_at(sr: pydicom.Dataset, location: str) -> pydicom.Dataset:
    """The measurement group (third level: root, Imaging Measurements, group) at a location."""
    return _item_at(sr, ".".join(location.split(".")[:3]))


def _is_line_group(group: pydicom.Dataset) -> bool:
    return any(
        _code(i) == "112039" and str(i.TextValue).startswith(codes.OHIF_LENGTH)
        for i in group.ContentSequence
    )


# Items the 2022 validator's TID 1410/1411/1501 definitions predate (docs/CONFORMANCE.md).
PIXELMED_OLD_TEMPLATE_ITEMS = (
    '(276214006,SCT,"Finding category")',
    '(111001,DCM,"Algorithm Name")',
    '(111003,DCM,"Algorithm Version")',
    '(111002,DCM,"Algorithm Parameters")',
    '(116676008,SCT,"Associated morphology")',
    # the no-lesion summary group's CID 6047 statement as a TID 1501 qualitative evaluation
    '(111017,DCM,"CAD Processing and Findings Summary")',
)


def pixelmed_findings(sr_path: Path, errors: list[str], warnings: list[str]) -> list[str]:
    """PixelMed's errors and "not in template" warnings on an SR, less the ones its template
    selection makes up (docs/CONFORMANCE.md).

    The 2022 validator picks one template for every measurement group from counts over the
    whole Imaging Measurements container: TID 1410 when it holds exactly one 2-D Image Region
    (one lesion), TID 1411 when any group references a segment, TID 1501 only when neither
    holds. So a group of another template gets that template's "Missing conditional content
    item" errors (a TID 1411 group under TID 1410; an axis-line TID 1501 group under 1410 or
    1411), and the items of the line groups, never checked against TID 1501 in a report with
    segments, are "not in template" (test_axis_line_groups_pass_pixelmed_as_tid_1501 checks
    them against TID 1501).
    """
    sr = pydicom.dcmread(sr_path)
    found = []
    for error in errors:
        where = re.search(r"within ([0-9.]+):", error)
        template = re.match(r"Error: Template (1410|1411) \w+/", error)
        if where and template and error.endswith("Missing conditional content item"):
            group = _group_at(sr, where.group(1))
            own = {_code(i) for i in group.ContentSequence}
            if template.group(1) == "1410" and "111030" not in own:
                continue
            if template.group(1) == "1411" and "121191" not in own:
                continue
        found.append(error)
    for warning in warnings:
        if not warning.endswith("Content Item not in template"):
            continue
        location = re.match(r"Warning: ([0-9.]+):", warning)
        assert location is not None, warning
        if _is_line_group(_group_at(sr, location.group(1))):
            continue
        last = warning.rsplit("/", 1)[-1]
        if any(item in last for item in PIXELMED_OLD_TEMPLATE_ITEMS):
            continue
        if '(111012,DCM,"Certainty of Finding")' in last and "Associated morphology" in warning:
            continue
        found.append(warning)
    return found


@pytest.mark.slow
def test_sr_passes_pixelmed_validator(encoded_cases: dict[str, Case]) -> None:
    # Each file costs seconds of XSLT: the single-lesion case is the real CT when present.
    names = ["pet", "nolesion", "notanalysed", "real" if "real" in encoded_cases else "ct"]
    paths = [encoded_cases[n].paths[0] for n in names]
    reports = run_pixelmed_sr_validators(paths)
    for name, path in zip(names, paths, strict=True):
        errors, warnings = reports[str(path)]
        assert pixelmed_findings(path, errors, warnings) == [], name
    # The reports without lesions are validated without exception.
    for name in ("nolesion", "notanalysed"):
        assert reports[str(encoded_cases[name].paths[0])][0] == []


@pytest.mark.slow
def test_axis_line_groups_pass_pixelmed_as_tid_1501(
    encoded_cases: dict[str, Case], tmp_path: Path
) -> None:
    """The axis-line groups alone in a report, which the validator checks against TID 1501:
    no error, and the line's SCOORD under its NUM is in the template (TID 300 row INFERRED
    FROM, TID 320), unlike under TID 1410's ROI measurements."""
    case = encoded_cases["pet"]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in case.sources}
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = []
    for lesion in case.result.lesions:
        key_image = by_uid[lesion.key_slice.sop_instance_uid]
        groups.extend(sr_encoder.axis_groups(lesion, case.result, key_image))
    content = hd.sr.MeasurementReport(
        observation_context=sr_encoder.observation_context(MODEL),
        procedure_reported=sr_encoder.procedures_reported(case.result),
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=case.sources,
        content=content,
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        **codes.equipment(MODEL),
    )
    path = tmp_path / "lines.dcm"
    sr.save_as(path)
    errors, warnings = run_pixelmed_sr_validators([path])[str(path)]
    assert errors == []
    outside = [w for w in warnings if w.endswith("Content Item not in template")]
    assert outside and all('(276214006,SCT,"Finding category")' in w for w in outside), outside


def _all_items(dataset: pydicom.Dataset) -> list[pydicom.Dataset]:
    out = []
    for item in dataset.get("ContentSequence", []):
        out.append(item)
        out.extend(_all_items(item))
    return out


def _code(item: pydicom.Dataset) -> str:
    return item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""


def test_every_report_has_image_library_and_imaging_measurements(
    encoded_cases: dict[str, Case],
) -> None:
    for name, case in encoded_cases.items():
        sr = pydicom.dcmread(case.paths[0])
        top = {_code(item): item for item in sr.ContentSequence}
        library = top.get("111028")  # Image Library
        assert library is not None and library.ContentSequence, name
        measurements = top.get("126010")  # Imaging Measurements
        assert measurements is not None and measurements.ContentSequence, name
        entries = [i for i in _all_items(library) if i.ValueType == "IMAGE"]
        library_uids = {e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for e in entries}
        for lesion in case.result.lesions:
            assert lesion.key_slice.sop_instance_uid in library_uids, name


def test_every_container_is_separate(encoded_cases: dict[str, Case]) -> None:
    for name, case in encoded_cases.items():
        sr = pydicom.dcmread(case.paths[0])
        containers = [sr, *(i for i in _all_items(sr) if i.ValueType == "CONTAINER")]
        assert {c.ContinuityOfContent for c in containers} == {"SEPARATE"}, name


def test_standard_codes_replace_private_ones(encoded_cases: dict[str, Case]) -> None:
    for name, case in encoded_cases.items():
        sr = pydicom.dcmread(case.paths[0])
        used = {_code(i) for i in _all_items(sr)}
        values = {
            i.ConceptCodeSequence[0].CodeValue for i in _all_items(sr) if i.ValueType == "CODE"
        }
        assert "LN-P-LESION" not in used and "LN-NOT-ANALYSED" not in values, name
        assert "281900007" not in values, name
        assert "111017" in used, name
        if case.result.lesions:
            assert "111012" in used and "111242" in values, name


def test_finding_type_follows_size(encoded_cases: dict[str, Case], tmp_path: Path) -> None:
    case = encoded_cases["ct"]
    small, big = (replace(case.result.lesions[0], long_axis_mm=v) for v in (7.0, 45.0))
    assert codes.finding_type(30.0) == codes.NODULE
    for lesion, expected in ((small, codes.NODULE), (big, codes.MASS)):
        result = replace(case.result, lesions=(lesion,))
        sr = read_sr(write_case(f"size{expected.value}", result, case.sources, tmp_path))
        group = sr.content.get_volumetric_roi_measurement_groups()[0]
        assert group.finding_type == expected


def test_histology_only_above_minimum_and_with_certainty(
    encoded_cases: dict[str, Case], tmp_path: Path
) -> None:
    case = encoded_cases["ct"]
    lesion = case.result.lesions[0]
    cls = lesion.most_probable_type
    sr = pydicom.dcmread(case.paths[0])
    (evaluation,) = [i for i in _all_items(sr) if _code(i) == codes.ASSOCIATED_MORPHOLOGY.value]
    assert evaluation.ConceptCodeSequence[0].CodeValue == codes.HISTOLOGY_CODES[cls].value
    (certainty,) = evaluation.ContentSequence
    assert certainty.RelationshipType == "HAS PROPERTIES"
    assert _code(certainty) == codes.CERTAINTY_OF_FINDING.value
    assert float(certainty.MeasuredValueSequence[0].NumericValue) == pytest.approx(
        100 * lesion.histology[cls]
    )
    written = write_case(
        "histo-high", case.result, case.sources, tmp_path, histology_min_probability=0.9
    )
    (group,) = read_sr(written).content.get_volumetric_roi_measurement_groups()
    assert group.get_qualitative_evaluations(name=codes.ASSOCIATED_MORPHOLOGY) == []


def test_each_axis_line_is_a_group_of_its_own_with_method_and_points(
    encoded_cases: dict[str, Case],
) -> None:
    case = encoded_cases["pet"]
    sr = read_sr(case)
    for lesion in case.result.lesions:
        (planar,) = sr.content.get_planar_roi_measurement_groups(tracking_uid=lesion.tracking_uid)
        items = list(planar[0].ContentSequence)
        purpose = [i for i in items if _code(i) == "130400"]
        assert [p.ConceptCodeSequence[0].CodeValue for p in purpose] == ["75958009"]
        assert not [i for i in items if i.ValueType == "NUM"]
        (region,) = [i for i in items if i.ValueType == "SCOORD"]
        assert region.GraphicType == "POLYLINE" and len(region.GraphicData) == 10
        lines = sr.content.get_image_measurement_groups(tracking_uid=lesion.tracking_uid)
        for group, code, method, what in zip(
            lines,
            (codes.LONG_AXIS, codes.SHORT_AXIS),
            (codes.METHOD_LONG_AXIS, codes.METHOD_SHORT_AXIS),
            ("long axis", "short axis"),
            strict=True,
        ):
            items = list(group[0].ContentSequence)
            identifier = [i.TextValue for i in items if _code(i) == "112039"]
            assert identifier == [f"{codes.OHIF_LENGTH} {lesion.tracking_id} {what}"]
            # the method at group level (TID 1501 row 5), which dcmqi reads without a warning
            (found,) = [i for i in items if _code(i) == "370129005"]
            assert found.RelationshipType == "HAS CONCEPT MOD"
            assert found.ConceptCodeSequence[0].CodeValue == method.value
            (number,) = [i for i in items if i.ValueType == "NUM"]
            assert _code(number) == code.value
            (points,) = [c for c in number.ContentSequence if c.ValueType == "SCOORD"]
            assert points.RelationshipType == "INFERRED FROM"
            assert points.GraphicType == "POLYLINE" and len(points.GraphicData) == 4
            image = points.ContentSequence[0].ReferencedSOPSequence[0]
            assert image.ReferencedSOPInstanceUID == lesion.key_slice.sop_instance_uid
        (volumetric,) = sr.content.get_volumetric_roi_measurement_groups(
            tracking_uid=lesion.tracking_uid
        )
        assert not [m for m in volumetric.get_measurements() if m.name == codes.LONG_AXIS]


def test_segment_reference_names_the_source_series_once(encoded_cases: dict[str, Case]) -> None:
    case = encoded_cases["pet"]
    sr = pydicom.dcmread(case.paths[0])
    items = _all_items(sr)
    assert not [i for i in items if _code(i) == "121233"]  # Source image for segmentation
    series = [i for i in items if _code(i) == "121232"]
    assert len(series) == len(case.result.lesions)
    assert {i.UID for i in series} == {case.result.ct_series_uid}


def test_tracking_uids_are_stable_across_reanalysis(encoded_cases: dict[str, Case]) -> None:
    from classifier.types import lesion_tracking_uid

    case = encoded_cases["pet"]
    lesion = case.result.lesions[0]
    again = lesion_tracking_uid(
        case.result.study_instance_uid, str(case.result.ct_series_uid), lesion.centroid_mm
    )
    assert again == lesion.tracking_uid
    moved = tuple(v + 3.0 for v in lesion.centroid_mm)
    assert (
        lesion_tracking_uid(case.result.study_instance_uid, str(case.result.ct_series_uid), moved)
        != lesion.tracking_uid
    )
    first = read_sr(encoded_cases["pet"]).content.get_volumetric_roi_measurement_groups()
    second = read_sr(encoded_cases["pet-v2"]).content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_uid for g in first] == [g.tracking_uid for g in second]
