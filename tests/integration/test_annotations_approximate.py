"""The project's own approximate boxes of E0001-E0004 (tests/data/annotations-approximate):
they parse as the collection's PASCAL-VOC files and land on slices of the series they were drawn
on, at the slice index (along the slice normal) recorded in boxes.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom

from classifier.datasets.tcia_dataset import read_voc_xml, scan_dataset

TESTS = Path(__file__).resolve().parents[1]
APPROXIMATE = TESTS / "data" / "annotations-approximate"


def _rows() -> list[dict[str, str]]:
    with open(APPROXIMATE / "boxes.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_xml_files_parse_and_match_the_table() -> None:
    rows = _rows()
    xmls = sorted(APPROXIMATE.glob("*/*.xml"))
    assert {p.parent.name for p in xmls} == {"E0001", "E0002", "E0003", "E0004"}
    assert len(xmls) == len({r["sop_instance_uid"] for r in rows}) == 54
    by_sop = {r["sop_instance_uid"]: r for r in rows}
    for xml in xmls:
        boxes = read_voc_xml(xml)
        assert len(boxes) == 1, xml
        label, x0, y0, x1, y1 = boxes[0]
        row = by_sop[xml.stem]
        assert label == "E" and row["patient"] == xml.parent.name
        assert (x0, y0, x1, y1) == tuple(int(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
        assert 0 <= x0 < x1 < 512 and 0 <= y0 < y1 < 512
        assert "lungnode approximate annotation, not TCIA" in xml.read_text()


def test_boxes_land_on_slices_of_the_right_series(lung_pet_ct_dx: Path) -> None:
    scan = scan_dataset(lung_pet_ct_dx, APPROXIMATE)
    assert scan.counts["boxes_matched"] == 54
    assert scan.counts["boxes_unmatched"] == scan.counts["xml_unparseable"] == 0
    rows = {r["sop_instance_uid"]: r for r in _rows()}
    order: dict[str, list[str]] = {}  # series -> SOP UIDs by z (axial: the slice normal)
    for patient_id in ("Lung_Dx-E0001", "Lung_Dx-E0002", "Lung_Dx-E0003", "Lung_Dx-E0004"):
        record = scan.patient(patient_id)
        assert record.annotated, patient_id
        for item in record.annotated:
            row = rows[item.sop_instance_uid]
            assert item.series_instance_uid == row["series_instance_uid"]
            assert record.series_modality[item.series_instance_uid] == "CT"
            assert item.path.parent.name == row["series_folder"]
            uid = item.series_instance_uid
            if uid not in order:
                headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in record.series[uid]]
                headers.sort(key=lambda h: float(h.ImagePositionPatient[2]))
                order[uid] = [str(h.SOPInstanceUID) for h in headers]
            index = order[uid].index(item.sop_instance_uid)
            assert index == int(row["slice_index"]), (patient_id, index, row["slice_index"])
    e2 = scan.patient("Lung_Dx-E0002").annotated
    assert sorted(np.unique([a.series_instance_uid for a in e2], return_counts=True)[1]) == [3, 4]
    assert len(scan.patient("Lung_Dx-E0003").annotated) == 20
    assert len(scan.patient("Lung_Dx-E0001").annotated) == 14
    assert len(scan.patient("Lung_Dx-E0004").annotated) == 13
