"""Reader of the Lung-PET-CT-Dx collection as TCIA distributes it, with its annotation archive.

Finds the `Lung-PET-CT-Dx` folder (given it, its manifest folder or the manifest's parent),
scans DICOM headers only, and matches the LabelImg PASCAL-VOC boxes to CT slices by SOP
Instance UID. The archive's known quirks (XML that does not parse, the label `Q`, boxes drawn
on fused PET/CT images) are counted in `DatasetScan.counts`, never fatal.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from classifier.types import HISTOLOGY_CLASSES

COLLECTION_FOLDER = "Lung-PET-CT-Dx"
PATIENT_PREFIX = "Lung_Dx-"
_PATIENT_RE = re.compile(r"^Lung_Dx-([A-Z])\d+$")
_HEADER_TAGS = [
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "InstanceNumber",
]

Box = tuple[str, int, int, int, int]

COUNT_KEYS: tuple[str, ...] = (
    "patients",
    "series",
    "dicom_files",
    "dicom_unreadable",
    "xml_files",
    "xml_unparseable",
    "boxes",
    "boxes_matched",
    "boxes_unknown_label",
    "boxes_unmatched",
    "boxes_label_mismatch",
    "annotated_slices",
    "patients_without_annotations",
    "annotation_folders_without_patient",
)


class AnnotationError(ValueError):
    """An annotation XML file that cannot be read as PASCAL-VOC; the message names the file."""


@dataclass(frozen=True)
class AnnotatedSlice:
    """A CT slice with its boxes (label, xmin, ymin, xmax, ymax) in pixel columns/rows."""

    sop_instance_uid: str
    path: Path
    series_instance_uid: str
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class PatientRecord:
    """One patient of the download: series found by a header-only scan, and annotated slices.

    `label` is the class letter of the patient id (A, B, E, G), None when the id has none.
    `series` maps Series Instance UID to its files ordered by Instance Number;
    `series_modality` maps it to the Modality.
    """

    patient_id: str
    label: str | None
    study_dirs: tuple[Path, ...]
    series: dict[str, list[Path]] = field(repr=False)
    series_modality: dict[str, str]
    annotated: list[AnnotatedSlice] = field(repr=False)


@dataclass(frozen=True)
class DatasetScan:
    """Every patient of a download, what was counted on the way, and the files seen."""

    patients: list[PatientRecord]
    counts: dict[str, int]
    collection_dir: Path
    annotations_dir: Path | None
    files: tuple[tuple[str, int], ...] = field(default=(), repr=False)

    def fingerprint(self) -> str:
        """SHA-256 over the sorted (relative path, size) of the DICOM and XML files."""
        digest = hashlib.sha256()
        for rel, size in sorted(self.files):
            digest.update(f"{rel}\t{size}\n".encode())
        return digest.hexdigest()

    def patient(self, patient_id: str) -> PatientRecord:
        """The record of `patient_id` (e.g. "Lung_Dx-A0002"); KeyError names it if absent."""
        for record in self.patients:
            if record.patient_id == patient_id:
                return record
        raise KeyError(f"patient {patient_id!r} is not in {self.collection_dir}")


def read_voc_xml(path: Path) -> list[Box]:
    """Boxes (label, xmin, ymin, xmax, ymax) of a LabelImg PASCAL-VOC file.

    Raises AnnotationError naming the file when it does not parse or a box is malformed.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError, UnicodeError) as exc:
        raise AnnotationError(f"{path}: not a readable PASCAL-VOC XML file ({exc})") from exc
    if root.tag != "annotation":
        raise AnnotationError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    boxes: list[Box] = []
    for n, obj in enumerate(root.iter("object"), start=1):
        label = (obj.findtext("name") or "").strip()
        bndbox = obj.find("bndbox")
        if not label or bndbox is None:
            raise AnnotationError(f"{path}: object {n} lacks <name> or <bndbox>")
        try:
            coords = [round(float(bndbox.findtext(k) or "")) for k in _VOC_COORDS]
        except ValueError as exc:
            raise AnnotationError(
                f"{path}: object {n} has a non-numeric box coordinate ({exc})"
            ) from exc
        xmin, ymin, xmax, ymax = coords
        if xmax < xmin or ymax < ymin:
            raise AnnotationError(f"{path}: object {n} box {coords} has max < min")
        boxes.append((label, xmin, ymin, xmax, ymax))
    return boxes


_VOC_COORDS = ("xmin", "ymin", "xmax", "ymax")


def find_collection_dir(data_dir: Path) -> Path:
    """The `Lung-PET-CT-Dx` folder, given it, a `manifest-*` folder or the manifest's parent."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"dataset folder {data_dir} does not exist: give the TCIA download folder "
            f"(manifest-<timestamp>, its parent, or {COLLECTION_FOLDER})"
        )
    if data_dir.name == COLLECTION_FOLDER:
        return data_dir
    candidates = [data_dir / COLLECTION_FOLDER]
    candidates += sorted(data_dir.glob(f"manifest-*/{COLLECTION_FOLDER}"))
    found = [c for c in candidates if c.is_dir()]
    if not found:
        raise FileNotFoundError(
            f"no {COLLECTION_FOLDER} folder in {data_dir} nor in a manifest-* folder below it: "
            f"give the TCIA download folder"
        )
    if len(found) > 1 and found[0] != data_dir / COLLECTION_FOLDER:
        raise FileNotFoundError(
            f"{data_dir} holds several downloads ({', '.join(str(f.parent) for f in found)}): "
            f"give one manifest folder"
        )
    return found[0]


def find_annotations_dir(collection_dir: Path, data_dir: Path) -> Path | None:
    """The `Annotation` folder near the download (beside the collection, manifest or data dir)."""
    seen: list[Path] = []
    for base in (Path(data_dir), collection_dir.parent, collection_dir.parent.parent):
        if base not in seen:
            seen.append(base)
    for base in seen:
        direct = base / "Annotation"
        if direct.is_dir():
            return direct
        for nested in sorted(base.glob("*/Annotation")):
            if nested.is_dir():
                return nested
    return None


def _patient_label(patient_id: str) -> str | None:
    match = _PATIENT_RE.match(patient_id)
    if match and match.group(1) in HISTOLOGY_CLASSES:
        return match.group(1)
    return None


def _scan_patient(
    patient_dir: Path, collection_dir: Path, counts: dict[str, int], files: list
) -> tuple[dict[str, list[Path]], dict[str, str], dict[str, tuple[Path, str, str]]]:
    """Header-only scan of one patient: series files, series modality, SOP UID -> facts."""
    by_series: dict[str, list[tuple[int, str, Path]]] = {}
    modality: dict[str, str] = {}
    by_sop: dict[str, tuple[Path, str, str]] = {}
    for path in sorted(patient_dir.rglob("*.dcm")):
        counts["dicom_files"] += 1
        files.append(
            (
                f"{COLLECTION_FOLDER}/{path.relative_to(collection_dir).as_posix()}",
                path.stat().st_size,
            )
        )
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            sop, series = str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError, EOFError):
            counts["dicom_unreadable"] += 1
            continue
        number = ds.get("InstanceNumber")
        by_series.setdefault(series, []).append(
            (int(number) if number not in (None, "") else 0, path.name, path)
        )
        modality[series] = str(ds.get("Modality", ""))
        by_sop[sop] = (path, series, modality[series])
    series_files = {uid: [p for _, _, p in sorted(items)] for uid, items in by_series.items()}
    return series_files, modality, by_sop


def _match_annotations(
    xml_dir: Path,
    annotations_dir: Path,
    patient_label: str | None,
    by_sop: dict[str, tuple[Path, str, str]],
    counts: dict[str, int],
    files: list,
) -> list[AnnotatedSlice]:
    """Read one patient's XML files and keep the boxes that fall on one of its CT slices."""
    annotated = []
    for xml in sorted(xml_dir.rglob("*.xml")):
        counts["xml_files"] += 1
        files.append(
            (f"Annotation/{xml.relative_to(annotations_dir).as_posix()}", xml.stat().st_size)
        )
        try:
            boxes = read_voc_xml(xml)
        except AnnotationError:
            counts["xml_unparseable"] += 1
            continue
        counts["boxes"] += len(boxes)
        known = [b for b in boxes if b[0] in HISTOLOGY_CLASSES]
        counts["boxes_unknown_label"] += len(boxes) - len(known)
        target = by_sop.get(xml.stem)
        if target is None or target[2] != "CT":
            counts["boxes_unmatched"] += len(known)
            continue
        if not known:
            continue
        counts["boxes_matched"] += len(known)
        counts["boxes_label_mismatch"] += sum(b[0] != patient_label for b in known)
        path, series, _ = target
        annotated.append(AnnotatedSlice(xml.stem, path, series, tuple(known)))
    return annotated


def scan_dataset(
    data_dir: Path,
    annotations_dir: Path | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> DatasetScan:
    """Scan a Lung-PET-CT-Dx download and its annotations; quirks are counted, not raised.

    `annotations_dir` is the folder holding A0002/ (or Lung_Dx-A0002/) folders of XML; when
    None, an `Annotation` folder beside the download is used if there is one.
    """
    collection_dir = find_collection_dir(Path(data_dir))
    if annotations_dir is None:
        annotations_dir = find_annotations_dir(collection_dir, Path(data_dir))
    elif not Path(annotations_dir).is_dir():
        raise FileNotFoundError(
            f"annotation folder {annotations_dir} does not exist: give the folder that holds "
            f"the A0001/... XML folders, or None to look beside the download"
        )
    counts = dict.fromkeys(COUNT_KEYS, 0)
    files: list[tuple[str, int]] = []
    xml_dirs: dict[str, Path] = {}
    if annotations_dir is not None:
        annotations_dir = Path(annotations_dir)
        for sub in sorted(p for p in annotations_dir.iterdir() if p.is_dir()):
            xml_dirs[sub.name.removeprefix(PATIENT_PREFIX)] = sub
    patient_dirs = sorted(
        p for p in collection_dir.iterdir() if p.is_dir() and p.name.startswith(PATIENT_PREFIX)
    )
    patients = []
    for n, patient_dir in enumerate(patient_dirs, start=1):
        patient_id = patient_dir.name
        if progress is not None:
            progress(f"{n}/{len(patient_dirs)} {patient_id}")
        series, modality, by_sop = _scan_patient(patient_dir, collection_dir, counts, files)
        label = _patient_label(patient_id)
        xml_dir = xml_dirs.pop(patient_id.removeprefix(PATIENT_PREFIX), None)
        annotated: list[AnnotatedSlice] = []
        if xml_dir is not None and annotations_dir is not None:
            annotated = _match_annotations(xml_dir, annotations_dir, label, by_sop, counts, files)
        if not annotated:
            counts["patients_without_annotations"] += 1
        counts["series"] += len(series)
        counts["annotated_slices"] += len(annotated)
        study_dirs = tuple(sorted(p for p in patient_dir.iterdir() if p.is_dir()))
        patients.append(PatientRecord(patient_id, label, study_dirs, series, modality, annotated))
    counts["patients"] = len(patients)
    counts["annotation_folders_without_patient"] = len(xml_dirs)
    for orphan in xml_dirs.values():
        for xml in sorted(orphan.rglob("*.xml")):
            counts["xml_files"] += 1
            rel = xml.relative_to(orphan.parent).as_posix()
            files.append((f"Annotation/{rel}", xml.stat().st_size))
    return DatasetScan(patients, counts, collection_dir, annotations_dir, tuple(files))
