"""DICOM UID validation: UIDs become path components of the store, so only [0-9.] may pass.

A UID (PS3.5 section 9.1) is 1-64 characters of digits and dots; each dot-separated component is
non-empty and has no leading zero unless it is the single digit "0".
"""

from __future__ import annotations

import re

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_MAX_LENGTH = 64


class InvalidUIDError(ValueError):
    """A value that must be a DICOM UID is not one (and so may never name a file or folder);
    `name` is the attribute it was read as ("" when not known)."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


def is_valid_uid(value: str) -> bool:
    """True when `value` is a well-formed DICOM UID (1-64 chars, digits and dots, no empty or
    zero-padded component); nothing else is checked (no root or registration)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_LENGTH
        and _UID.fullmatch(value) is not None
    )


def require_uid(name: str, value: object) -> str:
    """Return `value` with DICOM padding (spaces, NUL) stripped, or raise InvalidUIDError that
    names the attribute `name` and the offending value."""
    if not isinstance(value, str):
        raise InvalidUIDError(
            f"{name} {value!r} is not a valid UID: expected text of digits and dots, "
            f"got {type(value).__name__}",
            name,
        )
    uid = value.strip(" \x00")
    if not is_valid_uid(uid):
        raise InvalidUIDError(
            f"{name} {value!r} is not a valid UID: a UID is 1-{_MAX_LENGTH} characters of "
            "digits and dots, with no empty component and no leading zero in a component; "
            "fix the sending system's UID generation",
            name,
        )
    return uid
