"""Tests of the Lung-PET-CT-Dx reader on phantoms in the TCIA layout and on the real fixture."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from classifier.datasets.phantom import write_tcia_layout
from classifier.datasets.tcia_dataset import (
    AnnotationError,
    find_collection_dir,
    read_voc_xml,
    scan_dataset,
)

SMALL = {"ct_size": 64, "ct_slices": 12, "pet_size": 32}


@pytest.fixture(scope="module")
def phantom_download(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """Four phantom patients (A, B, E, G) written as a TCIA manifest folder."""
    root = tmp_path_factory.mktemp("download")
    manifest = root / "manifest-1608669999999"
    studies = write_tcia_layout(manifest, 4, seed=21, **SMALL)
    return root, studies


def test_scan_finds_every_phantom_box_and_series(phantom_download: tuple[Path, list]) -> None:
    root, studies = phantom_download
    scan = scan_dataset(root)
    assert [p.patient_id for p in scan.patients] == sorted(s.patient_id for s in studies)
    assert scan.counts["patients"] == 4 and scan.counts["series"] == 8
    for study in studies:
        record = scan.patient(study.patient_id)
        assert record.label == study.histology
        assert sorted(record.series_modality.values()) == ["CT", "PT"]
        ct_uid = study.ct[0].SeriesInstanceUID
        assert [p.name for p in record.series[ct_uid]][:2] == ["1-01.dcm", "1-02.dcm"]
        assert len(record.series[ct_uid]) == len(study.ct)
        assert len(record.series[study.pet[0].SeriesInstanceUID]) == len(study.pet)
        found = {(a.sop_instance_uid, *b) for a in record.annotated for b in a.boxes}
        planted = {
            (b.sop_instance_uid, b.label, b.xmin, b.ymin, b.xmax, b.ymax) for b in study.boxes
        }
        assert found == planted and planted
        assert all(a.series_instance_uid == ct_uid for a in record.annotated)
        assert all(a.path.stem.startswith("1-") for a in record.annotated)
    total = sum(len(s.boxes) for s in studies)
    assert scan.counts["boxes"] == scan.counts["boxes_matched"] == total
    for key in ("boxes_unmatched", "boxes_unknown_label", "xml_unparseable", "dicom_unreadable"):
        assert scan.counts[key] == 0, key


def test_metadata_csv_lists_every_series(phantom_download: tuple[Path, list]) -> None:
    root, _ = phantom_download
    with open(root / "manifest-1608669999999" / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert {r["Modality"] for r in rows} == {"CT", "PT"}
    for row in rows:
        folder = root / "manifest-1608669999999" / row["File Location"].replace("\\", "/")
        assert folder.is_dir(), row["File Location"]
        assert int(row["Number of Images"]) == len(list(folder.glob("1-*.dcm")))
        assert row["Collection"] == "Lung-PET-CT-Dx"


def test_collection_found_from_manifest_parent_or_itself(
    phantom_download: tuple[Path, list], tmp_path: Path
) -> None:
    root, _ = phantom_download
    manifest = root / "manifest-1608669999999"
    scans = [
        scan_dataset(root),
        scan_dataset(manifest),
        scan_dataset(manifest / "Lung-PET-CT-Dx", manifest / "Annotation"),
    ]
    assert len({s.fingerprint() for s in scans}) == 1
    assert len({s.collection_dir for s in scans}) == 1
    assert scans[2].counts == scans[0].counts
    with pytest.raises(FileNotFoundError, match="no Lung-PET-CT-Dx folder"):
        scan_dataset(tmp_path)


def test_annotation_folders_named_with_the_prefix_and_fingerprint_changes(
    phantom_download: tuple[Path, list], tmp_path: Path
) -> None:
    root, studies = phantom_download
    manifest = root / "manifest-1608669999999"
    renamed = tmp_path / "Annotation"
    for sub in (manifest / "Annotation").iterdir():
        shutil.copytree(sub, renamed / f"Lung_Dx-{sub.name}")
    scan = scan_dataset(manifest, renamed)
    assert scan.counts["boxes_matched"] == sum(len(s.boxes) for s in studies)
    before = scan.fingerprint()
    xml = next(renamed.rglob("*.xml"))
    xml.write_text(xml.read_text() + "\n")
    assert scan_dataset(manifest, renamed).fingerprint() != before


def test_quirks_are_counted_not_fatal(phantom_download: tuple[Path, list], tmp_path: Path) -> None:
    root, studies = phantom_download
    manifest = root / "manifest-1608669999999"
    annotations = tmp_path / "Annotation"
    shutil.copytree(manifest / "Annotation", annotations)
    study = studies[0]
    folder = annotations / study.patient_id.removeprefix("Lung_Dx-")
    xmls = sorted(folder.glob("*.xml"))
    xmls[0].write_text("<annotation><object><name>A</name><bndbox><xmin>1</xm")
    xmls[1].write_text(
        xmls[1].read_text().replace(f"<name>{study.histology}</name>", "<name>Q</name>")
    )
    # A box drawn on a fused PET/CT image: its file name is a PET SOP Instance UID.
    shutil.copy(xmls[2], folder / f"{study.pet[0].SOPInstanceUID}.xml")
    shutil.copy(xmls[2], folder / "1.2.3.4.5.xml")  # a slice that is not in the download
    (annotations / "Z0099").mkdir()
    scan = scan_dataset(manifest, annotations)
    c = scan.counts
    assert c["xml_unparseable"] == 1
    assert c["boxes_unknown_label"] == 1
    assert c["boxes_unmatched"] == 2
    assert c["annotation_folders_without_patient"] == 1
    assert c["xml_files"] == sum(len(s.boxes) for s in studies) + 2
    record = scan.patient(study.patient_id)
    assert len(record.annotated) == len(study.boxes) - 2


def test_read_voc_xml_names_the_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "1.2.3.xml"
    bad.write_text("not xml at all <")
    with pytest.raises(AnnotationError, match=r"1\.2\.3\.xml"):
        read_voc_xml(bad)
    wrong = tmp_path / "1.2.4.xml"
    wrong.write_text(
        "<annotation><object><name>A</name><bndbox><xmin>x</xmin></bndbox></object></annotation>"
    )
    with pytest.raises(AnnotationError, match=r"1\.2\.4\.xml.*non-numeric"):
        read_voc_xml(wrong)


def test_real_fixture_patient_a0002(lung_pet_ct_dx: Path) -> None:
    data = lung_pet_ct_dx
    scan = scan_dataset(data)
    record = scan.patient("Lung_Dx-A0002")
    assert record.label == "A"
    assert len(record.series) == 2 and set(record.series_modality.values()) == {"CT"}
    assert all(len(paths) == 30 for paths in record.series.values())
    assert len(record.annotated) == 18
    assert scan.counts["boxes_unmatched"] == 0
    assert scan.counts["boxes_matched"] == 18
    for item in record.annotated:
        xml = data / "Annotation" / "A0002" / f"{item.sop_instance_uid}.xml"
        assert item.boxes == tuple(read_voc_xml(xml))
        assert item.path in record.series[item.series_instance_uid]
        assert all(b[0] == "A" for b in item.boxes)
    assert find_collection_dir(data / "Lung-PET-CT-Dx") == data / "Lung-PET-CT-Dx"
    assert scan_dataset(data / "Lung-PET-CT-Dx").fingerprint() == scan.fingerprint()


def test_real_annotation_quirks_in_a_copy(tmp_path: Path, lung_pet_ct_dx: Path) -> None:
    data = lung_pet_ct_dx
    annotations = tmp_path / "Annotation"
    shutil.copytree(data / "Annotation", annotations)
    xmls = sorted((annotations / "A0002").glob("*.xml"))
    xmls[0].write_text(xmls[0].read_text()[:120])  # truncated, as in folders A0024 and A0192
    xmls[1].write_text(xmls[1].read_text().replace("<name>A</name>", "<name>Q</name>"))
    progress: list[str] = []
    scan = scan_dataset(data, annotations, progress=progress.append)
    # Every patient folder of the fixture is scanned and named once, in order; only A0002 has boxes.
    names = sorted(d.name for d in (data / "Lung-PET-CT-Dx").iterdir() if d.is_dir())
    assert "Lung_Dx-A0002" in names
    assert progress == [f"{i}/{len(names)} {name}" for i, name in enumerate(names, 1)]
    assert all(not scan.patient(n).annotated for n in names if n != "Lung_Dx-A0002")
    assert scan.counts["xml_unparseable"] == 1
    assert scan.counts["boxes_unknown_label"] == 1
    assert len(scan.patient("Lung_Dx-A0002").annotated) == 16
