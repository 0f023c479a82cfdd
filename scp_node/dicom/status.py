"""DIMSE status codes the node answers (C-ECHO and C-STORE SCP) and classifies (C-STORE SCU).

pynetdicom names Success itself (`pynetdicom.status.Status.SUCCESS`); the meaning of every other
code lives in its tables (`GENERAL_STATUS`, PS3.7 Annex C; `STORAGE_SERVICE_CLASS_STATUS`,
PS3.4 Annex B.2.3), and tests/unit/test_dimse_status.py checks each constant below against them.
These are the only spellings of the codes in the node. A refusal is answered as a status
dataset (`refusal`) whose Error Comment says why, so the peer's log shows the reason beside the
code.
"""

from __future__ import annotations

import re

from pydicom.dataset import Dataset
from pynetdicom.status import Status

SUCCESS = int(Status.SUCCESS)  # 0x0000

# Failures (PS3.7 Annex C, general)
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122  # answered by pynetdicom at negotiation, never by a handler
RESOURCE_LIMITATION = 0x0213

# Failures and warnings of the Storage Service Class (PS3.4 Annex B.2.3)
OUT_OF_RESOURCES = 0xA700  # the range 0xA7xx
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # the range 0xA9xx
CANNOT_UNDERSTAND = 0xC210  # one of the range 0xCxxx
# The node's own codes in the Cannot Understand range (0xC000-0xCFFF), one per reason, so a
# peer's log tells them apart; neither is worth retrying unchanged.
PATIENT_MISMATCH = 0xC221  # Patient ID (or Birth Date) differs from the study's
INSTANCE_IN_OTHER_STUDY = 0xC222  # SOP Instance UID already stored under another study
COERCION_OF_DATA_ELEMENTS = 0xB000  # warning
ELEMENT_DISCARDED = 0xB006  # warning
DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007  # warning


def is_out_of_resources(status: int) -> bool:
    """True for 0xA700-0xA7FF, Refused: Out of Resources."""
    return (status & 0xFF00) == OUT_OF_RESOURCES


def is_warning(status: int) -> bool:
    """True for 0xBxxx, the warnings: the peer stored the object (perhaps changed)."""
    return (status & 0xF000) == 0xB000


ERROR_COMMENT_CHARS = 64  # Error Comment (0000,0902) is LO
_CONFIG_SECTION = re.compile(r"\[[a-z_]+\] ")  # "[storage] min_free_mb" -> "min_free_mb"
_NOT_LO = re.compile(r"[^\x20-\x5b\x5d-\x7e]+")  # LO: default repertoire, no backslash


def error_comment(reason: str) -> str:
    """`reason` as an Error Comment (LO): the default repertoire without backslash or control
    characters (each run of others becomes one space), config sections dropped from key names,
    and cut at a word to at most 64 characters, with "..." where it was cut."""
    text = " ".join(_NOT_LO.sub(" ", _CONFIG_SECTION.sub("", reason)).split())
    if len(text) <= ERROR_COMMENT_CHARS:
        return text
    cut = text[: ERROR_COMMENT_CHARS - 3]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:(") + "..."


def refusal(status: int, reason: str) -> Dataset:
    """The status dataset of a refused request: Status and an Error Comment saying why (what a
    pynetdicom handler may return instead of a bare status code)."""
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = error_comment(reason)
    return answer
