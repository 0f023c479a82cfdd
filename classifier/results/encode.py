"""The result-encoding entry point: StudyResult + source headers -> [SR] or [SR, SEG].

The node's worker and `lungnode predict` call `encode`; it checks that the sources match the
result, builds the SEG first (the SR's segment references need its UIDs), then the SR.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from classifier.results import codes
from classifier.results.seg_encoder import build_seg
from classifier.results.sr_encoder import build_sr, summary_text
from classifier.types import StudyResult

UTF8 = "ISO_IR 192"
_IMMUTABLE = (str, int, float, bytes, type(None))


def header_only(dataset: Dataset) -> Dataset:
    """A decoded copy of a dataset's header without pixel data (cheap to copy into results)."""
    header = Dataset()
    for elem in dataset:
        if elem.tag.group < 0x7FE0:
            header.add(copy.deepcopy(elem))
    if hasattr(dataset, "file_meta"):
        header.file_meta = copy.deepcopy(dataset.file_meta)
    # Decode now with the source's character set, so the copied text is plain str and can be
    # written in whatever character set the result objects use.
    header.decode()
    return header


def reference_header(dataset: Dataset) -> Dataset:
    """A copy of a dataset's header without pixel data whose elements are converted only when
    read (with the source's character set, as `header_only` does at once).

    For the instances a result only refers to (UIDs, plane geometry): elements still in raw
    form are immutable and shared with the source, so a 300-slice CT costs milliseconds.
    """
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    for tag, elem in dataset._dict.items():
        if tag.group >= 0x7FE0:
            continue
        if isinstance(elem, RawDataElement):
            elements[tag] = elem
        elif isinstance(elem.value, _IMMUTABLE):
            elements[tag] = copy.copy(elem)
        else:
            elements[tag] = copy.deepcopy(elem)
    header = Dataset(elements)
    if hasattr(dataset, "file_meta"):
        header.file_meta = copy.deepcopy(dataset.file_meta)
    return header


def _needs_utf8(datasets: Sequence[Dataset], texts: Sequence[str]) -> bool:
    def non_ascii(value: object) -> bool:
        if isinstance(value, str):
            return not value.isascii()
        if isinstance(value, pydicom.valuerep.PersonName):
            return not str(value).isascii()
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            return any(non_ascii(v) for v in value)
        return False

    if any(not t.isascii() for t in texts):
        return True
    for ds in datasets:
        for elem in ds.iterall():
            if elem.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") and non_ascii(elem.value):
                return True
    return False


def _check_sources(result: StudyResult, sources: Sequence[Dataset]) -> list[Dataset]:
    if not sources:
        raise ValueError(
            f"encode() got no source datasets for study {result.study_instance_uid}; pass the "
            "headers of the instances in result.evidence (or, for a study that could not be "
            "analysed, of the instances received)"
        )
    for ds in sources:
        if ds.get("StudyInstanceUID") != result.study_instance_uid:
            raise ValueError(
                f"source instance {ds.get('SOPInstanceUID')} belongs to study "
                f"{ds.get('StudyInstanceUID')}, not to the result's study "
                f"{result.study_instance_uid}"
            )
    if not result.evidence:
        return list(sources)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    missing = [
        ref.sop_instance_uid for ref in result.evidence if ref.sop_instance_uid not in by_uid
    ]
    if missing:
        raise ValueError(
            f"{len(missing)} instance(s) of result.evidence have no source dataset, e.g. "
            f"{missing[0]}; pass the header of every instance in result.evidence"
        )
    return [by_uid[ref.sop_instance_uid] for ref in result.evidence]


def encode(
    result: StudyResult,
    sources: Sequence[Dataset],
    *,
    predecessor: Dataset | None = None,
    series_number: int = 900,
    instance_number: int = 1,
) -> list[Dataset]:
    """Encode a result as [SR] (no lesion, or not analysed) or [SR, SEG], ready to save.

    `sources` are the headers (pixel data optional) of every instance in result.evidence, CT
    first. The SR gets series `series_number`, the SEG `series_number + 1`; both carry the
    source's patient and study, and file_meta for dcmwrite(..., enforce_file_format=True).
    """
    codes.check_model(result.model)
    # Only the first instance's text goes into the results (patient and study modules); the
    # others are referenced by UID and geometry.
    first, *others = _check_sources(result, sources)
    ordered = [header_only(first), *(reference_header(ds) for ds in others)]
    our_texts = [summary_text(result), *result.skipped, result.model.name, result.model.version]
    charset = UTF8 if _needs_utf8(ordered[:1], our_texts) else None
    if charset is None and "SpecificCharacterSet" in ordered[0]:
        # Plain ASCII throughout: keep the source's declaration (a superset of ASCII).
        charset = ordered[0].SpecificCharacterSet

    segmentation = None
    if result.analysed and result.lesions:
        ct_count = len(result.ct_slices)
        segmentation = build_seg(
            result,
            ordered[:ct_count],
            series_number=series_number + 1,
            instance_number=instance_number,
            specific_character_set=charset,
        )
    evidence = ordered + ([segmentation] if segmentation is not None else [])
    sr = build_sr(
        result,
        evidence,
        segmentation=segmentation,
        predecessor=predecessor,
        series_number=series_number,
        instance_number=instance_number,
        specific_character_set=charset,
    )
    return [sr] if segmentation is None else [sr, segmentation]
