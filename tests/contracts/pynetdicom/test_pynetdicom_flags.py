"""pynetdicom's `_config` flags that scp_node.dicom.pynetdicom_adapter.flags sets (and the tests
use) are still there, as bools or the documented word, and set as the node needs them.

Part of the inventory of pynetdicom internals the node relies on (tests/contracts/pynetdicom/):
run it before widening pyproject's pin of pynetdicom.
"""

from __future__ import annotations

import pytest
from pydicom import config as pydicom_config
from pynetdicom import _config

from scp_node.dicom import pynetdicom_adapter

CONFIG_FLAGS = (
    "LOG_REQUEST_IDENTIFIERS",
    "LOG_RESPONSE_IDENTIFIERS",
    "STORE_RECV_CHUNKED_DATASET",
    "UNRESTRICTED_STORAGE_SERVICE",
    "ENFORCE_UID_CONFORMANCE",
    "STORE_SEND_CHUNKED_DATASET",  # tests/conftest.py (chunked_send)
)


@pytest.mark.parametrize("flag", CONFIG_FLAGS)
def test_config_flag_exists(flag: str) -> None:
    assert isinstance(getattr(_config, flag, None), bool), (
        f"pynetdicom._config.{flag} is gone or no longer a bool "
        "(scp_node.dicom.pynetdicom_adapter.flags sets it)"
    )


def test_install_sets_the_flags_the_node_relies_on() -> None:
    pynetdicom_adapter.install()
    assert _config.LOG_REQUEST_IDENTIFIERS is False
    assert _config.LOG_RESPONSE_IDENTIFIERS is False
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    assert _config.UNRESTRICTED_STORAGE_SERVICE is False
    assert _config.ENFORCE_UID_CONFORMANCE is False
    assert _config.LOG_HANDLER_LEVEL == "none", (
        "pynetdicom._config.LOG_HANDLER_LEVEL no longer takes 'none'"
    )
    assert pydicom_config.settings.reading_validation_mode == pydicom_config.IGNORE


def test_install_is_idempotent() -> None:
    """A second install changes nothing (each install of the wake-ups would make a new `time`
    for pynetdicom's modules)."""
    from pynetdicom import dul

    pynetdicom_adapter.install()
    shim = dul.time  # type: ignore[attr-defined]
    pynetdicom_adapter.install()
    assert dul.time is shim  # type: ignore[attr-defined]
