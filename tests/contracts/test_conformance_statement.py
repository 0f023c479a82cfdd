"""docs/CONFORMANCE.md stays true: every SOP class and transfer syntax the SCP accepts is listed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from configs import make_config

from scp_node.receive.receiver import Receiver
from storage.database import Database
from storage.index import Index
from storage.instance_store import InstanceStore

STATEMENT = Path(__file__).resolve().parents[2] / "docs" / "CONFORMANCE.md"
# Accepted by the SCP only for a destination's Storage Commitment report: the node is SCU there
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"


def _section(title: str) -> str:
    text = STATEMENT.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"docs/CONFORMANCE.md has no section '## {title}'"
    return match.group(1)


@pytest.fixture(scope="module")
def accepted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """SOP class UID -> transfer syntax UIDs, as the real Receiver's AE supports them."""
    root = tmp_path_factory.mktemp("store")
    config = make_config(root)
    index = Index(Database.connect(f"sqlite:///{root / 'index.sqlite'}"))
    receiver = Receiver(config, InstanceStore(root, 0), index)
    return {
        str(cx.abstract_syntax): {str(ts) for ts in cx.transfer_syntax}
        for cx in receiver.ae.supported_contexts
    }


def test_every_accepted_sop_class_is_listed(accepted: dict[str, set[str]]) -> None:
    section = _section("SOP Classes")
    listed = set(re.findall(r"`(1\.2\.840\.10008\.[0-9.]+)` \| SCP", section))
    assert listed == set(accepted) - {STORAGE_COMMITMENT}, (
        "SOP classes listed as SCP differ from what the SCP accepts"
    )
    assert STORAGE_COMMITMENT in accepted, "reports on an association the destination opens"
    assert f"`{STORAGE_COMMITMENT}` | SCU" in section


def test_every_accepted_transfer_syntax_is_listed(accepted: dict[str, set[str]]) -> None:
    listed = set(re.findall(r"`(1\.2\.840\.10008\.1\.2[0-9.]*)`", _section("Transfer Syntaxes")))
    every = set().union(*accepted.values())
    assert every <= listed, f"not in the statement: {sorted(every - listed)}"
    storage = [
        uids
        for sop, uids in accepted.items()
        if sop not in ("1.2.840.10008.1.1", STORAGE_COMMITMENT)
    ]
    assert all(uids == storage[0] for uids in storage)
    assert storage[0] == listed, "the statement lists transfer syntaxes the SCP does not accept"


def test_every_status_the_receiver_returns_is_documented() -> None:
    from scp_node.dicom import status as dimse_status
    from scp_node.receive import receiver

    constants = {
        value
        for name, value in vars(receiver).items()
        if name.isupper() and getattr(dimse_status, name, None) == value
    }
    assert constants, "receiver.py uses no status constant of scp_node.dicom.status"
    documented = {int(v, 16) for v in re.findall(r"`(0x[0-9A-F]{4})`", _section("Status Codes"))}
    assert constants <= documented
    handlers = (receiver.Receiver._on_c_store.__doc__ or "") + (
        receiver.Receiver._on_c_echo.__doc__ or ""
    )
    assert {code for code in constants if f"0x{code:04X}" not in handlers} == set(), (
        "a status the receiver returns is missing from its handlers' docstrings"
    )
