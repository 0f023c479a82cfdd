"""Repair what the result objects copy from a source instance, so bad input never makes them
invalid.

The SR, SEG, GSPS and KOS copy the Patient and Study modules (highdicom copies every root
attribute of the Patient, General Study, Patient Study and Clinical Trial modules of the source's
IOD), and the Secondary Capture images take the same values from us. Scanners write faults that
are harmless in their own images but make our objects fail validation; the real ones seen:

- Referenced Study Sequence items without Referenced SOP Class UID (Type 1 in the SOP Instance
  Reference Macro), or with the retired Detached Study Management SOP Class there;
- code sequence items with an empty Code Meaning or Code Value (Type 1 in sequence items);
- values too long for their VR (a 70-character Study Description in LO, 64), malformed DA, TM,
  AS, CS, DS, IS, UI values;
- an unknown Specific Character Set (e.g. "ISO_IR100") and text that only decodes with a guess;
- Type 2 attributes missing instead of present-and-empty (Patient's Name, Study Time);
- values padded with NUL instead of space, or with leading/trailing blanks.

`clean_source` checks each copied attribute against the module tables highdicom ships (the Type
of every attribute at every sequence depth) and the VR rules of PS3.5 6.2: a sequence item that
lacks a Type 1 attribute, or references a retired or unknown SOP class, is dropped; a sequence
left empty is dropped unless it is Type 2; an invalid value is dropped, or emptied when its
attribute is Type 2; text too long for its VR is cut at the limit; padding is stripped; missing
Type 2 attributes of the Patient and General Study modules are added empty. What it did is
returned as notes (attribute paths, no values: they may identify the patient).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from highdicom._standard_utils import get_module_attribute_map
from pydicom import Dataset
from pydicom._uid_dict import UID_dictionary
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

# The modules highdicom copies from the source with copy_patient_and_study_information.
COPIED_MODULES = (
    "patient",
    "general-study",
    "patient-study",
    "clinical-trial-subject",
    "clinical-trial-study",
)
# Type 2 attributes every result object must carry (present, possibly empty).
REQUIRED_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

_TEXT_LIMITS = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "UC": 0, "UT": 0}
_CODE_KEYWORDS = ("CodeValue", "LongCodeValue", "URNCodeValue")
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_VALIDATORS: dict[str, Callable[[str], bool]] = {
    "DA": lambda v: re.fullmatch(r"\d{8}", v) is not None,
    "TM": lambda v: re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", v) is not None,
    "DT": lambda v: re.fullmatch(r"\d{4,14}(\.\d{1,6})?([+-]\d{4})?", v) is not None,
    "AS": lambda v: re.fullmatch(r"\d{3}[DWMY]", v) is not None,
    "CS": lambda v: re.fullmatch(r"[A-Z0-9 _]{1,16}", v) is not None,
    "DS": lambda v: (
        len(v) <= 16 and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", v) is not None
    ),
    "IS": lambda v: len(v) <= 12 and re.fullmatch(r"[+-]?\d+", v) is not None,
    "UI": lambda v: len(v) <= 64 and _UID_RE.fullmatch(v) is not None,
    "AE": lambda v: 0 < len(v) <= 16 and "\\" not in v,
}


@functools.cache
def _types() -> dict[tuple[str, ...], str]:
    """(sequence keywords..., keyword) -> Type ("1", "1C", "2", "2C", "3") in the copied modules.

    Where modules disagree on an attribute, the strictest Type wins.
    """
    out: dict[tuple[str, ...], str] = {}
    table = get_module_attribute_map()
    for module in COPIED_MODULES:
        for item in table.get(module, []):
            key = (*item["path"], item["keyword"])
            old = out.get(key)
            if old is None or item["type"] < old:
                out[key] = item["type"]
    return out


def copied_root_keywords() -> frozenset[str]:
    """The root-level keywords highdicom copies from a source (Patient and Study modules)."""
    return frozenset(path[0] for path in _types() if len(path) == 1)


def is_usable_sop_class(uid: object) -> bool:
    """A SOP Class UID a reference may carry: well formed, known to DICOM and not retired."""
    text = str(uid or "")
    entry = UID_dictionary.get(text)
    return (
        bool(_UID_RE.fullmatch(text))
        and entry is not None
        and entry[1] == "SOP Class"
        and entry[3] != "Retired"
    )


def _strip(value: str) -> str:
    return value.strip(" \x00")


class _Cleaner:
    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, path: tuple[str, ...], what: str) -> None:
        self.notes.append(f"{'/'.join(path)}: {what}")

    def value(self, elem: DataElement, path: tuple[str, ...], type_: str | None) -> bool:
        """Repair one non-sequence element in place; False when it must be removed."""
        vr = elem.VR
        raw = elem.value
        if raw is None or raw == "" or vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            return True
        values = list(raw) if isinstance(raw, (MultiValue, list, tuple)) else [raw]
        if vr == "PN":
            cleaned_pn = [PersonName(_strip(str(v))[: 64 * 3]) for v in values]
            if any(len(str(v)) > 64 * 3 for v in values):
                self.note(path, "person name cut to its VR's length")
            elem.value = cleaned_pn if len(cleaned_pn) > 1 else cleaned_pn[0]
            return True
        if not all(isinstance(v, str) for v in values):
            return True  # numbers already decoded (US, SS, FL, FD, ...): nothing to repair
        stripped = [_strip(v) for v in values]
        if stripped != values:
            self.note(path, "padding removed")
        if vr in _TEXT_LIMITS:
            limit = _TEXT_LIMITS[vr]
            if limit and any(len(v) > limit for v in stripped):
                self.note(path, f"cut to {limit} characters ({vr})")
                stripped = [v[:limit].rstrip() for v in stripped]
            if vr in ("SH", "LO"):
                stripped = [v.replace("\\", "/") for v in stripped]
        else:
            check = _VALIDATORS.get(vr)
            if check is not None and not all(check(v) for v in stripped if v):
                if type_ in ("2", "2C"):
                    self.note(path, f"invalid {vr} value emptied")
                    elem.value = ""
                    return True
                self.note(path, f"invalid {vr} value dropped")
                return False
        elem.value = stripped if len(stripped) > 1 else stripped[0]
        return True

    def item_valid(self, item: Dataset, path: tuple[str, ...]) -> bool:
        """Whether a (cleaned) sequence item carries every Type 1 attribute it needs."""
        if "ReferencedSOPInstanceUID" in item or "ReferencedSOPClassUID" in item:
            if not item.get("ReferencedSOPInstanceUID"):
                self.note(path, "item without Referenced SOP Instance UID dropped")
                return False
            if not is_usable_sop_class(item.get("ReferencedSOPClassUID")):
                self.note(path, "item without a current Referenced SOP Class UID dropped")
                return False
        if any(k in item for k in (*_CODE_KEYWORDS, "CodeMeaning", "CodingSchemeDesignator")):
            has_value = any(item.get(k) for k in _CODE_KEYWORDS)
            scheme_needed = not item.get("URNCodeValue")
            if (
                not has_value
                or not item.get("CodeMeaning")
                or (scheme_needed and not item.get("CodingSchemeDesignator"))
            ):
                self.note(path, "code item without value, scheme or meaning dropped")
                return False
        types = _types()
        for key, type_ in types.items():
            if len(key) == len(path) + 1 and key[:-1] == path and type_ == "1":
                keyword = key[-1]
                if keyword in _CODE_KEYWORDS or keyword == "CodingSchemeDesignator":
                    continue  # 1C in the standard; checked above
                if keyword in item and item[keyword].value in (None, "", []):
                    self.note((*path, keyword), "empty Type 1 value: item dropped")
                    return False
        return len(item) > 0

    def dataset(self, ds: Dataset, path: tuple[str, ...]) -> None:
        """Clean every element of `ds` (the root, or a sequence item at `path`)."""
        types = _types()
        for elem in list(ds):
            keyword = keyword_for_tag(elem.tag) or str(elem.tag)
            here = (*path, keyword)
            type_ = types.get(here)
            if elem.tag.is_private:
                if path:
                    del ds[elem.tag]
                continue
            if elem.VR == "SQ":
                kept = []
                for item in elem.value:
                    self.dataset(item, here)
                    if self.item_valid(item, here):
                        kept.append(item)
                if len(kept) != len(elem.value):
                    if kept or type_ in ("2", "2C"):
                        ds[elem.tag].value = Sequence(kept)
                    else:
                        self.note(here, "sequence left empty: dropped")
                        del ds[elem.tag]
                continue
            if not self.value(elem, here, type_):
                del ds[elem.tag]


def clean_character_set(ds: Dataset) -> list[str]:
    """Drop a Specific Character Set with a term pydicom does not know (the text was decoded with
    a fallback already; the result objects declare their own character set)."""
    terms = ds.get("SpecificCharacterSet")
    if terms is None:
        return []
    values = list(terms) if isinstance(terms, (MultiValue, list, tuple)) else [terms]
    if all(str(t).strip() in python_encoding for t in values):
        return []
    del ds.SpecificCharacterSet
    return ["SpecificCharacterSet: unknown term dropped"]


def clean_source(ds: Dataset) -> list[str]:
    """Repair in place the attributes the result objects copy from decoded header `ds` (the
    Patient and Study modules); returns what was changed as notes."""
    cleaner = _Cleaner()
    notes = clean_character_set(ds)
    copied = copied_root_keywords()
    types = _types()
    for elem in list(ds):
        keyword = keyword_for_tag(elem.tag)
        if not keyword or keyword not in copied:
            continue
        probe = Dataset()
        probe.add(elem)
        cleaner.dataset(probe, ())
        if elem.tag in probe:
            ds[elem.tag] = probe[elem.tag]
        else:
            del ds[elem.tag]
    for keyword in REQUIRED_TYPE_2:
        if keyword not in ds:
            tag = tag_for_keyword(keyword)
            assert tag is not None
            ds.add(DataElement(tag, dictionary_VR(tag), ""))
            cleaner.note((keyword,), "missing Type 2 attribute added empty")
        elif ds[keyword].value is None:
            ds[keyword].value = ""
    del types
    return notes + cleaner.notes
