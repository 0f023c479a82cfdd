"""UID validation: only well-formed UIDs may become path components of the store."""

from __future__ import annotations

import pytest
from pydicom.uid import UID, generate_uid

from storage.uids import InvalidUIDError, is_valid_uid, require_uid

VALID = ["0", "1.2.840.10008.1.2", "1.2.0.3", "2.25." + "9" * 59, generate_uid()]
INVALID = [
    "",
    ".",
    "1..2",
    "1.2.",
    ".1.2",
    "1.02",
    "01.2",
    "a.b",
    "1.2.3a",
    "../1.2",
    "/etc/passwd",
    "1/2",
    "1.2\n",
    "1.2 3",
    "1\\2",
    "1." + "2" * 63,  # 65 characters
    "\u0661.\u0662",  # Arabic-Indic digits are digits to str.isdigit, not to DICOM
]


@pytest.mark.parametrize("uid", VALID)
def test_valid_uids_pass(uid: str) -> None:
    assert len(uid) <= 64
    assert is_valid_uid(uid)
    assert require_uid("SOP Instance UID", uid) == uid


@pytest.mark.parametrize("uid", INVALID)
def test_invalid_uids_fail(uid: str) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(InvalidUIDError, match="SOP Instance UID") as info:
        require_uid("SOP Instance UID", uid)
    assert repr(uid) in str(info.value)


def test_64_characters_is_the_limit() -> None:
    uid = "1." + "2" * 62
    assert len(uid) == 64 and is_valid_uid(uid)
    assert not is_valid_uid(uid + "3")


def test_require_uid_strips_dicom_padding_and_accepts_pydicom_uid() -> None:
    assert require_uid("Study Instance UID", "1.2.3\x00") == "1.2.3"
    assert require_uid("Study Instance UID", " 1.2.3 ") == "1.2.3"
    assert require_uid("Study Instance UID", UID("1.2.3")) == "1.2.3"


@pytest.mark.parametrize("value", [None, 123, b"1.2.3", ["1.2"]])
def test_require_uid_rejects_non_text(value: object) -> None:
    assert not is_valid_uid(value)  # type: ignore[arg-type]
    with pytest.raises(InvalidUIDError, match="Series Instance UID"):
        require_uid("Series Instance UID", value)


def test_invalid_uid_error_is_a_value_error() -> None:
    assert issubclass(InvalidUIDError, ValueError)
