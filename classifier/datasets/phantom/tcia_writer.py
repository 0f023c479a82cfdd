"""Phantom studies written as a TCIA Lung-PET-CT-Dx download: the NBIA folder layout,
metadata.csv, and the LabelImg PASCAL-VOC XML boxes of the Annotation folder."""

from __future__ import annotations

import csv
import re
from datetime import datetime
from pathlib import Path
from typing import Unpack
from xml.sax.saxutils import escape

import numpy as np
import pydicom
import pydicom.uid
from pydicom.dataset import Dataset

from classifier.datasets.phantom.study import (
    AnnotationBox,
    PhantomStudy,
    StudyOptions,
    generate_study,
)
from classifier.types import HISTOLOGY_CLASSES

COLLECTION = "Lung-PET-CT-Dx"


def _nbia_name(text: str) -> str:
    """A description as NBIA writes it into folder names (drops ^, (), / and the like)."""
    return re.sub(r"[^A-Za-z0-9 ._-]", "", text).strip()


def _study_folder(ds: Dataset) -> str:
    date = datetime.strptime(ds.StudyDate, "%Y%m%d").strftime("%m-%d-%Y")
    return f"{date}-NA-{_nbia_name(ds.StudyDescription)}-{ds.StudyInstanceUID[-5:]}"


def _series_folder(ds: Dataset) -> str:
    name = _nbia_name(ds.SeriesDescription)
    return f"{int(ds.SeriesNumber)}.000000-{name}-{ds.SeriesInstanceUID[-5:]}"


def annotation_xml(box_list: list[AnnotationBox], rows: int, columns: int) -> str:
    """LabelImg PASCAL-VOC XML for the boxes of one slice, shaped like the TCIA annotation."""
    objects = "".join(
        f"""  <object>
    <name>{escape(b.label)}</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <Difficult>0</Difficult>
    <bndbox>
      <xmin>{b.xmin}</xmin>
      <ymin>{b.ymin}</ymin>
      <xmax>{b.xmax}</xmax>
      <ymax>{b.ymax}</ymax>
    </bndbox>
  </object>
"""
        for b in box_list
    )
    return f"""<annotation verified="no">
  <folder>Unknow</folder>
  <filename>Unknow</filename>
  <path>Unknow</path>
  <source>Unknow<database>Unknown</database>
  </source>
  <size>
    <width>{columns}</width>
    <height>{rows}</height>
    <depth>1</depth>
  </size>
  <segmented>0</segmented>
{objects}</annotation>
"""


def write_study(study: PhantomStudy, out: Path) -> list[Path]:
    """Write one patient as the TCIA download lays it out, plus its Annotation/<id>/ XML files.

    Returns the DICOM file paths written (CT first, then PET, then a bolus-tracking series), in
    `study.ct`/`study.pet`/`study.bolus_tracking` order.
    """
    out = Path(out)
    patient_dir = out / COLLECTION / study.patient_id
    written = []
    for series in (study.ct, study.pet, study.bolus_tracking):
        if not series:
            continue
        series_dir = patient_dir / _study_folder(series[0]) / _series_folder(series[0])
        series_dir.mkdir(parents=True, exist_ok=True)
        width = max(2, len(str(len(series))))
        for k, ds in enumerate(series, start=1):
            path = series_dir / f"1-{k:0{width}d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    if study.boxes:
        ann_dir = out / "Annotation" / study.patient_id.removeprefix("Lung_Dx-")
        ann_dir.mkdir(parents=True, exist_ok=True)
        by_uid: dict[str, list[AnnotationBox]] = {}
        for box in study.boxes:
            by_uid.setdefault(box.sop_instance_uid, []).append(box)
        size = study.ct[0].Rows, study.ct[0].Columns
        for uid, box_list in by_uid.items():
            (ann_dir / f"{uid}.xml").write_text(annotation_xml(box_list, *size))
    return written


METADATA_COLUMNS = (
    "Series UID",
    "Collection",
    "3rd Party Analysis",
    "Data Description URI",
    "Subject ID",
    "Study UID",
    "Study Description",
    "Study Date",
    "Series Description",
    "Manufacturer",
    "Modality",
    "SOP Class Name",
    "SOP Class UID",
    "Number of Images",
    "File Size",
    "File Location",
    "Download Timestamp",
)


def _metadata_rows(study: PhantomStudy, out: Path, paths: list[Path]) -> list[dict[str, str]]:
    rows = []
    for series in (study.ct, study.pet, study.bolus_tracking):
        if not series:
            continue
        ds = series[0]
        folder = out / COLLECTION / study.patient_id / _study_folder(ds) / _series_folder(ds)
        size = sum(p.stat().st_size for p in paths if p.parent == folder)
        rel = folder.relative_to(out)
        rows.append(
            {
                "Series UID": ds.SeriesInstanceUID,
                "Collection": COLLECTION,
                "3rd Party Analysis": "NO",
                "Data Description URI": "",
                "Subject ID": study.patient_id,
                "Study UID": ds.StudyInstanceUID,
                "Study Description": ds.StudyDescription,
                "Study Date": datetime.strptime(ds.StudyDate, "%Y%m%d").strftime("%m-%d-%Y"),
                "Series Description": ds.SeriesDescription,
                "Manufacturer": ds.Manufacturer,
                "Modality": ds.Modality,
                "SOP Class Name": pydicom.uid.UID(ds.SOPClassUID).name,
                "SOP Class UID": ds.SOPClassUID,
                "Number of Images": str(len(series)),
                "File Size": f"{size / 1e6:.2f} MB",
                "File Location": ".\\" + "\\".join(rel.parts),
                "Download Timestamp": ds.StudyDate[:4] + "-12-22T12:00:00.000",
            }
        )
    return rows


def write_tcia_layout(
    out: Path,
    patients: int,
    seed: int,
    *,
    class_weights: dict[str, float] | None = None,
    **generate_kwargs: Unpack[StudyOptions],
) -> list[PhantomStudy]:
    """Write `patients` phantom patients as a TCIA Lung-PET-CT-Dx download with metadata.csv.

    Classes cycle A, B, E, G, or are drawn with `class_weights` (e.g. the real 251/38/5/61);
    patients are numbered per class (A0001, B0001, ...) as in the collection.
    """
    if patients < 1:
        raise ValueError(f"patients={patients!r}: expected at least 1")
    out = Path(out)
    rng = np.random.default_rng([seed, 7919])
    if class_weights is not None:
        unknown = set(class_weights) - set(HISTOLOGY_CLASSES)
        if unknown or sum(class_weights.values()) <= 0:
            raise ValueError(
                f"class_weights {class_weights!r}: expected positive weights keyed by "
                f"{HISTOLOGY_CLASSES}"
            )
        p = np.array([class_weights.get(c, 0.0) for c in HISTOLOGY_CLASSES], dtype=float)
        classes = list(rng.choice(HISTOLOGY_CLASSES, size=patients, p=p / p.sum()))
    else:
        classes = [HISTOLOGY_CLASSES[i % len(HISTOLOGY_CLASSES)] for i in range(patients)]
    counters = dict.fromkeys(HISTOLOGY_CLASSES, 0)
    studies, rows = [], []
    for i, histology in enumerate(classes):
        counters[histology] += 1
        child_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        study = generate_study(
            child_seed, str(histology), patient_number=counters[histology], **generate_kwargs
        )
        paths = write_study(study, out)
        rows.extend(_metadata_rows(study, out, paths))
        studies.append(study)
    with open(out / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return studies
