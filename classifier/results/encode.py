"""The result-encoding entry point: StudyResult + source headers -> the result objects.

The node's worker and `lungnode predict` call `encode`; it checks that the sources match the
result, repairs what the objects copy from the source (sanitize.py), builds the SEG first (the
SR's segment references need its UIDs), then the SR, the GSPS, the key images (SC) and the Key
Object Selection that references the key slices and all of them.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from classifier.results import codes
from classifier.results.histology_gate import (
    DEFAULT_HISTOLOGY_MODE,
    histology_shown,
    not_assessed_reason,
)
from classifier.results.ko_encoder import build_ko
from classifier.results.pr_encoder import build_gsps
from classifier.results.sanitize import REQUIRED_TYPE_2, clean_source, copied_root_keywords
from classifier.results.sc_encoder import build_key_images, warm_up_rendering
from classifier.results.seg_encoder import build_seg
from classifier.results.sr_encoder import (
    DEFAULT_HISTOLOGY_MIN_PROBABILITY,
    build_sr,
    summary_text,
)
from classifier.types import StudyResult
from storage.states import ResultKind

UTF8 = "ISO_IR 192"
_IMMUTABLE = (str, int, float, bytes, type(None))


def warm_up() -> None:
    """Load now what the first `encode` of a process would load on demand: highdicom's tables of
    the DICOM standard (0.8 s of JSON parsing here) and matplotlib's fonts. The node runs it at
    start-up, so the first study's results do not wait for them."""
    from highdicom import _standard_utils  # private: the tables behind highdicom's IOD checks

    for name in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
        load = getattr(_standard_utils, name, None)
        if callable(load):  # gone in a later highdicom: the first encode loads what it needs
            load()
    warm_up_rendering()


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


_KIND_OF_CLASS: dict[str, ResultKind] = {
    pydicom.uid.Comprehensive3DSRStorage: ResultKind.SR,
    pydicom.uid.SegmentationStorage: ResultKind.SEG,
    pydicom.uid.GrayscaleSoftcopyPresentationStateStorage: ResultKind.GSPS,
    pydicom.uid.SecondaryCaptureImageStorage: ResultKind.SC,
    pydicom.uid.KeyObjectSelectionDocumentStorage: ResultKind.KO,
}
# Series Number of each kind, added to encode()'s series_number.
_SERIES_OFFSET = {
    ResultKind.SR: 0,
    ResultKind.SEG: 1,
    ResultKind.GSPS: 2,
    ResultKind.SC: 3,
    ResultKind.KO: 4,
}


def kind_of(dataset: Dataset) -> ResultKind:
    """The result kind of an object encode() built, by its SOP Class UID."""
    kind = _KIND_OF_CLASS.get(str(dataset.SOPClassUID))
    if kind is None:
        raise ValueError(f"SOP class {dataset.SOPClassUID} is not one of the result objects")
    return kind


def with_patient_study(dataset: Dataset, clean: Dataset) -> Dataset:
    """A shallow copy of `dataset` whose Patient and Study attributes (and character set) are
    those of the cleaned header `clean`, for objects that copy them from whichever image they
    reference first."""
    out = Dataset()
    keywords = copied_root_keywords() | set(REQUIRED_TYPE_2) | {"SpecificCharacterSet"}
    for elem in dataset:
        if elem.keyword not in keywords:
            out.add(elem)
    for elem in clean:
        if elem.keyword in keywords:
            out.add(elem)
    if hasattr(dataset, "file_meta"):
        out.file_meta = dataset.file_meta
    return out


def _hu(dataset: Dataset) -> np.ndarray:
    pixels = dataset.pixel_array.astype(np.float32)
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    return pixels * slope + intercept


def encode(
    result: StudyResult,
    sources: Sequence[Dataset],
    *,
    predecessor: Dataset | None = None,
    series_number: int = 900,
    instance_number: int = 1,
    kinds: Collection[ResultKind] = tuple(ResultKind),
    histology_min_probability: float = DEFAULT_HISTOLOGY_MIN_PROBABILITY,
    key_pixels: Mapping[int, np.ndarray] | None = None,
    notes: list[str] | None = None,
    histology: str = DEFAULT_HISTOLOGY_MODE,
) -> list[Dataset]:
    """Encode a result as its result objects, ready to save: the SR always; with lesions also
    the SEG, the GSPS, the key images (SC) and the KOS, as far as `kinds` asks for them.

    `sources` are the headers (pixel data optional) of every instance in result.evidence, CT
    first. Series numbers: SR `series_number`, SEG +1, GSPS +2, SC +3, KOS +4; all carry the
    source's patient and study, repaired where the source's values would make them invalid
    (classifier.results.sanitize; what was repaired is appended to `notes`), and file_meta for
    dcmwrite(..., enforce_file_format=True). The key images need the key slices' pixels:
    `key_pixels` (CT slice index -> HU image) or pixel data in `sources`. `histology` ("auto",
    "on", "off"; classifier.results.histology_gate) decides whether any object states the
    lesions' histology; where it does not, the SR says histology was not assessed and why.
    """
    unknown = [kind for kind in kinds if not isinstance(kind, ResultKind)]
    if unknown:
        raise ValueError(
            f"kinds {unknown!r} are not ResultKind members; expected some of "
            f"{', '.join(repr(k) for k in ResultKind)} (ResultKind.from_word reads a word)"
        )
    codes.check_model(result.model)
    not_assessed = None
    if not histology_shown(histology, result.model):
        not_assessed = not_assessed_reason(histology, result.model)
        result = dataclasses.replace(
            result,
            lesions=tuple(dataclasses.replace(x, histology={}) for x in result.lesions),
        )
    # Only the first instance's text goes into the results (patient and study modules); the
    # others are referenced by UID and geometry.
    checked = _check_sources(result, sources)
    first, *others = checked
    clean = header_only(first)
    repaired = clean_source(clean)
    if notes is not None:
        notes.extend(repaired)
    ordered = [clean, *(reference_header(ds) for ds in others)]
    our_texts = [summary_text(result), *result.skipped, result.model.name, result.model.version]
    charset = UTF8 if _needs_utf8(ordered[:1], our_texts) else None
    if charset is None and "SpecificCharacterSet" in ordered[0]:
        # Plain ASCII throughout: keep the source's declaration (a superset of ASCII).
        charset = ordered[0].SpecificCharacterSet

    def number(kind: ResultKind) -> int:
        return series_number + _SERIES_OFFSET[kind]

    with_lesions = result.analysed and bool(result.lesions)
    ct_count = len(result.ct_slices)
    segmentation = None
    if with_lesions:
        # The SR's segment references need the SEG, whether or not it is sent.
        segmentation = build_seg(
            result,
            ordered[:ct_count],
            series_number=number(ResultKind.SEG),
            instance_number=instance_number,
            specific_character_set=charset,
        )
    evidence = ordered + ([segmentation] if segmentation is not None else [])
    sr = build_sr(
        result,
        evidence,
        segmentation=segmentation,
        predecessor=predecessor,
        series_number=number(ResultKind.SR),
        instance_number=instance_number,
        specific_character_set=charset,
        histology_min_probability=histology_min_probability,
        histology_not_assessed=not_assessed,
    )
    out: list[Dataset] = [sr]
    if not with_lesions:
        return out
    assert segmentation is not None
    if ResultKind.SEG in kinds:
        out.append(segmentation)
    # The KOS references the key slices and the other objects built for this result.
    gsps = None
    if ResultKind.GSPS in kinds:
        gsps = build_gsps(
            result,
            ordered[:ct_count],
            series_number=number(ResultKind.GSPS),
            instance_number=instance_number,
            specific_character_set=charset,
        )
        out.append(gsps)
    key_images: list[Dataset] = []
    if ResultKind.SC in kinds:
        key_slices = {}
        for lesion in result.lesions:
            index = lesion.key_slice_index
            if key_pixels is not None and index in key_pixels:
                hu = np.asarray(key_pixels[index])
            elif "PixelData" in checked[index]:
                hu = _hu(checked[index])
            else:
                raise ValueError(
                    f"key images need the pixels of {lesion.tracking_id}'s key slice "
                    f"(CT slice {index}); pass key_pixels or sources with pixel data"
                )
            key_slices[lesion.key_slice.sop_instance_uid] = (ordered[index], hu)
        key_images = list(
            build_key_images(
                result,
                clean,
                key_slices,
                series_number=number(ResultKind.SC),
                instance_number=instance_number,
                specific_character_set=charset,
            )
        )
        out.extend(key_images)
    if ResultKind.KO in kinds:
        slices = [ordered[i] for i in dict.fromkeys(x.key_slice_index for x in result.lesions)]
        slices = [with_patient_study(slices[0], clean), *slices[1:]]
        others_kinds: list[Dataset] = [sr]
        others_kinds += [segmentation] if ResultKind.SEG in kinds else []
        others_kinds += ([gsps] if gsps is not None else []) + key_images
        out.append(
            build_ko(
                result,
                [*slices, *others_kinds],
                series_number=number(ResultKind.KO),
                instance_number=instance_number,
                specific_character_set=charset,
            )
        )
    return out
