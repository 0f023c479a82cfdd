"""Coded concepts and algorithm provenance used by the result objects (SR and SEG), in one place.

Standard codes (SNOMED CT "SCT", DICOM "DCM", LOINC "LN", UCUM) are used wherever one exists;
the few concepts without a standard code live in the private scheme 99LUNGNODE, which every
result object declares in its Coding Scheme Identification Sequence. docs/CONFORMANCE.md lists
them all with the reason for each choice.
"""

from __future__ import annotations

import re
from typing import TypedDict

from highdicom import ContributingEquipment
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.sr.coding import Code

from classifier.types import HISTOLOGY_CLASSES, ModelInfo

MANUFACTURER = "lungnode"
NOT_CLINICAL = "NOT FOR CLINICAL USE"
PRIVATE_SCHEME = "99LUNGNODE"
IHE_SCHEME = "99IHE"

# IHE AI Results (AIR): Purpose of Reference of the algorithm's Contributing Equipment item.
PROCESSING_ALGORITHM = Code("Newcode1", IHE_SCHEME, "Processing Algorithm")

# Procedure Reported (TID 1500, CID 100): CID 100 has no chest CT code (LOINC 24627-2 "CT Chest"
# is rejected by the PixelMed validator), so CT alone is "CT unspecified body region".
PROCEDURE_CT = Code("25045-6", "LN", "CT unspecified body region")
PROCEDURE_PET_CT = Code("443271005", "SCT", "PET/CT FDG imaging of whole body")

# What a lesion is: the Finding of its SR groups and the Segmented Property of its segment.
FINDING_CATEGORY = Code("49755003", "SCT", "Morphologically Abnormal Structure")
# Finding type by size: a lung nodule is up to 3 cm across, a mass larger (Fleischner glossary).
NODULE = Code("27925004", "SCT", "Nodule")
MASS = Code("4147007", "SCT", "Mass")
NODULE_MAX_MM = 30.0


# Finding Site: the lung of the lesion's side, or its lobe (CID 6170) with laterality (CID 244).
LUNG = Code("39607008", "SCT", "Lung")
LEFT_LUNG = Code("44029006", "SCT", "Left lung")
RIGHT_LUNG = Code("3341006", "SCT", "Right lung")
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")
UPPER_LOBE = Code("45653009", "SCT", "Upper lobe of lung")
MIDDLE_LOBE = Code("72481006", "SCT", "Middle lobe of right lung")
LOWER_LOBE = Code("90572001", "SCT", "Lower lobe of lung")
LOBES: dict[str, tuple[Code, Code]] = {
    "RUL": (UPPER_LOBE, RIGHT),
    "RML": (MIDDLE_LOBE, RIGHT),
    "RLL": (LOWER_LOBE, RIGHT),
    "LUL": (UPPER_LOBE, LEFT),
    "LLL": (LOWER_LOBE, LEFT),
}

# Measurements (TID 1411 rows; names from CID 7469 / CID 7466) and their UCUM units.
LONG_AXIS = Code("103339001", "SCT", "Long Axis")
SHORT_AXIS = Code("103340004", "SCT", "Short Axis")
VOLUME = Code("118565006", "SCT", "Volume")
SUV_BW = Code("126401", "DCM", "SUVbw")
METABOLIC_VOLUME = Code("126032", "DCM", "Metabolic Volume")
TOTAL_LESION_GLYCOLYSIS = Code("126033", "DCM", "Total Lesion Glycolysis")
MAXIMUM = Code("56851009", "SCT", "Maximum")
MEAN = Code("373098007", "SCT", "Mean")

UNIT_MM = Code("mm", "UCUM", "millimeter")
UNIT_ML = Code("ml", "UCUM", "milliliter")
UNIT_SUV_BW = Code("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")
UNIT_SUV_BW_GRAM = Code("{SUVbw}g", "UCUM", "Standardized Uptake Value body weight gram")

# Histologic type: SNOMED CT morphologic abnormalities, as the collection's labels A/B/E/G.
ASSOCIATED_MORPHOLOGY = Code("116676008", "SCT", "Associated morphology")
HISTOLOGY_CODES: dict[str, Code] = {
    "A": Code("35917007", "SCT", "Adenocarcinoma"),
    "B": Code("74364000", "SCT", "Small cell carcinoma"),
    "E": Code("22687000", "SCT", "Large cell carcinoma"),
    "G": Code("28899001", "SCT", "Squamous cell carcinoma"),
}

# Histology withheld ([results] histology; classifier.results.histology_gate): each lesion's
# TID 1411 group says so as a qualitative evaluation (no standard code names it).
HISTOLOGY_ASSESSMENT = Code("LN-HIST-ASSESS", PRIVATE_SCHEME, "Histologic type assessment")
HISTOLOGY_NOT_ASSESSED = Code("LN-NOT-ASSESSED", PRIVATE_SCHEME, "Not assessed")

# The lesion score's calibrated probability is the certainty of the finding (CID 6048 names it),
# in percent (the raw score for a model without a calibration; ModelInfo.certainty says which).
CERTAINTY_OF_FINDING = Code("111012", "DCM", "Certainty of Finding")
UNIT_PERCENT = Code("%", "UCUM", "percent")
# The per-class histology probabilities have no standard concept name: private codes, values in
# percent like the certainty (with unit "1", OHIF showed "0.96 1").
PROBABILITY_OF_HISTOLOGY: dict[str, Code] = {
    cls: Code(f"LN-P-HIST-{cls}", PRIVATE_SCHEME, f"Probability of {code.meaning.lower()}")
    for cls, code in HISTOLOGY_CODES.items()
}
assert set(PROBABILITY_OF_HISTOLOGY) == set(HISTOLOGY_CLASSES)

# Whole-study statements (TID 1500 "Qualitative Evaluations" container): CID 6047 says what the
# CAD did, without claiming the whole study is normal (only lung lesions were sought).
FINDING = Code("121071", "DCM", "Finding")
CAD_SUMMARY = Code("111017", "DCM", "CAD Processing and Findings Summary")
ALL_SUCCEEDED_WITH_FINDINGS = Code("111242", "DCM", "All algorithms succeeded; with findings")
ALL_SUCCEEDED_WITHOUT_FINDINGS = Code("111241", "DCM", "All algorithms succeeded; without findings")
NONE_SUCCEEDED_WITHOUT_FINDINGS = Code("111245", "DCM", "No algorithms succeeded; without findings")
# A CT read but refused as not a whole chest (StudyResult.refusal): the series reading ran, the
# lesion search did not.
NOT_ALL_SUCCEEDED_WITHOUT_FINDINGS = Code(
    "111243", "DCM", "Not all algorithms succeeded; without findings"
)
STUDY_SUMMARY = "Study summary"  # Tracking Identifier of the TID 1501 group without a lesion
REASON_SKIPPED = Code("LN-SKIPPED", PRIVATE_SCHEME, "Reason part of the study was not analysed")
COMMENT = Code("121106", "DCM", "Comment")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

# Where the key-slice box and the centroid are: TID 1410 / SCOORD3D concept names.
CENTER = Code("111010", "DCM", "Center")
BOUNDED_BY = Code("75958009", "SCT", "Bounded by")  # CID 219, Geometric purpose of region
MEASUREMENT_METHOD = Code("370129005", "SCT", "Measurement Method")
# How the 2-D diameters were measured on the key slice (no standard code names the key-slice
# maximum Feret diameter and its longest perpendicular chord; RECIST takes the largest slice).
METHOD_LONG_AXIS = Code("LN-FERET-KEY", PRIVATE_SCHEME, "Maximum Feret diameter on the key slice")
METHOD_SHORT_AXIS = Code(
    "LN-PERP-KEY", PRIVATE_SCHEME, "Longest chord perpendicular to the long axis, key slice"
)

# OHIF (Cornerstone3D adapters) picks its Length tool for a measurement group only by a Tracking
# Identifier that starts with this; no graphic type maps to it (a 5-point POLYLINE Image Region
# maps to RectangleROI by itself).
OHIF_LENGTH = "Cornerstone3DTools@^0.1.0:Length"

# SEG: the algorithm family (CID 7162).
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")


def finding_type(long_axis_mm: float) -> Code:
    """Nodule up to NODULE_MAX_MM long axis, Mass above."""
    return NODULE if long_axis_mm <= NODULE_MAX_MM else MASS


def line_tracking_identifier(tracking_id: str, what: str) -> str:
    """Tracking Identifier of a lesion's axis-line group: OHIF's Length prefix, then the
    lesion's own identifier and which line, e.g. "...:Length Lesion 1 long axis"."""
    return f"{OHIF_LENGTH} {tracking_id} {what}"


def clip_at_word(text: str, limit: int = 64) -> str:
    """`text` in at most `limit` characters (LO, SH, ...), cut after the last whole word that
    fits rather than mid-word; a first word longer than `limit` is cut at `limit`."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    cut = head.rfind(" ")
    if cut <= 0:
        return text[:limit]
    return head[:cut].rstrip(" ,;:-")


def coding_schemes() -> list[CodingSchemeIdentificationItem]:
    """The Coding Scheme Identification items for the non-standard schemes the objects use."""
    return [
        CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME,
            name="lungnode private codes",
            responsible_organization="lungnode project (not for clinical use)",
        ),
        CodingSchemeIdentificationItem(
            designator=IHE_SCHEME,
            name="IHE temporary codes",
            responsible_organization="IHE",
        ),
    ]


def lobe_key(lobe: str | None) -> str | None:
    """ "RUL".."LLL" for a lobe given as "RUL", "rul" or "right upper lobe"; None if not a lobe."""
    if not lobe:
        return None
    words = lobe.strip().lower().replace("_", " ").replace("-", " ").split()
    if len(words) == 1 and words[0].upper() in LOBES:
        return words[0].upper()
    words = [w for w in words if w not in ("lobe", "of", "lung", "the")]
    if (
        len(words) == 2
        and words[0] in ("right", "left")
        and words[1] in ("upper", "middle", "lower")
    ):
        key = f"{words[0][0]}{words[1][0]}L".upper()
        return key if key in LOBES else None
    return None


def finding_site_codes(side: str, lobe: str | None) -> tuple[Code, Code | None]:
    """The most specific coded site of a lesion and its laterality (None when in the code).

    A known lobe gives (lobe, laterality); else the side's lung ("Left lung"/"Right lung"),
    else "Lung" for a central lesion.
    """
    key = lobe_key(lobe)
    if key is not None:
        return LOBES[key]
    return {"left": LEFT_LUNG, "right": RIGHT_LUNG}.get(side.strip().lower(), LUNG), None


def check_model(model: ModelInfo) -> None:
    """Refuse a ModelInfo the result objects cannot carry (names are LO: 64 characters)."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", model.sha256 or ""):
        raise ValueError(
            f"ModelInfo.sha256 {model.sha256!r} is not a SHA-256 hex digest (64 hex digits); "
            "compute it with hashlib.sha256(weights_file_bytes).hexdigest()"
        )
    for what, value in (("name", model.name), ("version", model.version)):
        if not value or len(value) > 64 or "\\" in value:
            raise ValueError(
                f"ModelInfo.{what} {value!r} must be 1 to 64 characters without a backslash"
            )


def device_uid(model: ModelInfo) -> str:
    """The algorithm's Device UID, derived from the weights so it changes whenever they do."""
    check_model(model)
    return "2.25." + str(int(model.sha256[:30], 16))


def series_description(kind: str, model: ModelInfo) -> str:
    """Series Description of a result series: says it is an AI result, and not for clinical use."""
    text = f"AI {kind} ({model.name})"
    if not model.clinical_use:
        text += " NOT FOR CLINICAL USE"
    if len(text) > 64:
        text = f"AI {kind}" + (" NOT FOR CLINICAL USE" if not model.clinical_use else "")
    return text


class Equipment(TypedDict):
    """highdicom's keyword arguments of the General Equipment module."""

    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str


def equipment(model: ModelInfo) -> Equipment:
    """The General Equipment attributes of every object the node makes (highdicom keywords):
    one identity of the algorithm, its weights named by the serial number."""
    return {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": model.name,
        "software_versions": model.version,
        "device_serial_number": model.sha256[:16],
    }


def algorithm_equipment(model: ModelInfo) -> ContributingEquipment:
    """The IHE AIR Contributing Equipment item that names the algorithm and its weights."""
    item = ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=dicom_codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        contribution_description=f"Lesion detection and histology CNN, weights SHA-256 "
        f"{model.sha256[:16]}",
    )
    # highdicom only admits DCM purposes; IHE AIR asks for its own code.
    item.PurposeOfReferenceCodeSequence = [CodedConcept.from_code(PROCESSING_ALGORITHM)]
    item.DeviceUID = device_uid(model)
    return item
