"""The node's DIMSE status constants mean what pynetdicom's status tables (PS3.4, PS3.7) say."""

from __future__ import annotations

import pytest
from pynetdicom.status import (
    GENERAL_STATUS,
    STATUS_FAILURE,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    Status,
)

from scp_node.dicom import status as ds


@pytest.mark.parametrize(
    ("code", "table", "category", "meaning"),
    [
        (ds.SUCCESS, GENERAL_STATUS, STATUS_SUCCESS, ""),
        (ds.PROCESSING_FAILURE, GENERAL_STATUS, STATUS_FAILURE, "Processing Failure"),
        (
            ds.SOP_CLASS_NOT_SUPPORTED,
            GENERAL_STATUS,
            STATUS_FAILURE,
            "Refused: SOP Class Not Supported",
        ),
        (ds.RESOURCE_LIMITATION, GENERAL_STATUS, STATUS_FAILURE, "Resource Limitation"),
        (
            ds.OUT_OF_RESOURCES,
            STORAGE_SERVICE_CLASS_STATUS,
            STATUS_FAILURE,
            "Refused: Out of Resources",
        ),
        (
            ds.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            STORAGE_SERVICE_CLASS_STATUS,
            STATUS_FAILURE,
            "Data Set Does Not Match SOP Class",
        ),
        (ds.CANNOT_UNDERSTAND, STORAGE_SERVICE_CLASS_STATUS, STATUS_FAILURE, "Cannot Understand"),
        (
            ds.COERCION_OF_DATA_ELEMENTS,
            STORAGE_SERVICE_CLASS_STATUS,
            STATUS_WARNING,
            "Coercion of Data Elements",
        ),
        (ds.ELEMENT_DISCARDED, STORAGE_SERVICE_CLASS_STATUS, STATUS_WARNING, "Element Discarded"),
        (
            ds.DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING,
            STORAGE_SERVICE_CLASS_STATUS,
            STATUS_WARNING,
            "Data Set Does Not Match SOP Class",
        ),
    ],
)
def test_constant_means_what_pynetdicom_says(
    code: int, table: dict[int, tuple[str, str]], category: str, meaning: str
) -> None:
    assert table[code] == (category, meaning)


def test_success_is_pynetdicoms_and_ranges() -> None:
    assert ds.SUCCESS == Status.SUCCESS == 0 and type(ds.SUCCESS) is int
    for code in range(0xA700, 0xA800):
        assert ds.is_out_of_resources(code)
        assert STORAGE_SERVICE_CLASS_STATUS[code][1] == "Refused: Out of Resources"
    assert not ds.is_out_of_resources(0xA900) and not ds.is_out_of_resources(0x0110)
    assert ds.is_warning(0xB000) and ds.is_warning(0xB123) and not ds.is_warning(0xA700)
