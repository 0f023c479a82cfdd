"""The first-instance routing attack (issue 11, item 2) against a running node: another allowed
AE that sends one instance of a study first does not draw the study's results; they go to the
AE that sent the analysed series."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from dcmtk import StorescpServer, run_storescu
from node_process import NodeProcess, PhantomFiles
from pydicom.uid import generate_uid

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_results_go_to_the_sender_of_the_analysed_series_not_the_first_sender(
    tmp_path: Path, node_process: Callable[..., NodeProcess], phantom_ct: PhantomFiles
) -> None:
    # the attacker's instance: one slice of the same study (same patient), in its own series
    bait = pydicom.dcmread(phantom_ct.files[0])
    bait.SeriesInstanceUID = generate_uid()
    bait.SOPInstanceUID = bait.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    bait_path = tmp_path / "bait.dcm"
    bait.save_as(bait_path, enforce_file_format=True)
    with (
        StorescpServer(tmp_path / "pacs", ae_title="STORESCU") as pacs,
        StorescpServer(tmp_path / "attacker", ae_title="ATTACKER") as attacker,
    ):
        node = node_process(
            destinations={
                "pacs": f"STORESCU@127.0.0.1:{pacs.port}",
                "intruder": f"ATTACKER@127.0.0.1:{attacker.port}",
            },
            send_results_to="sender",
            allowed_calling_aets="STORESCU,ATTACKER",
            quiet_seconds=3,
        )
        with node:
            first = run_storescu(
                [bait_path], node.port, calling_ae="ATTACKER", called_ae="LUNGNODE"
            )
            assert first.returncode == 0, first.stdout + first.stderr
            rest = run_storescu(
                phantom_ct.files, node.port, calling_ae="STORESCU", called_ae="LUNGNODE"
            )
            assert rest.returncode == 0, rest.stdout + rest.stderr
            node.wait_for(
                lambda s: [x["state"] for x in s["studies"]] == ["DELIVERED"], 240, "DELIVERED"
            )
            node.stop_settled()  # whatever it would send is sent by now
        received = [pydicom.dcmread(p, stop_before_pixels=True) for p in pacs.received()]
        assert {str(ds.Modality) for ds in received} >= {"SR"}, node.log()[-3000:]
        assert attacker.received() == [], "results went to the AE that sent the first instance"


def test_sender_routing_names_every_sender_of_the_analysed_series(tmp_path: Path) -> None:
    from configs import make_config

    from scp_node.pipeline.routing import destinations_for

    config = make_config(
        tmp_path / "store",
        destinations__ct="CT1@127.0.0.1:104",
        destinations__pacs="PACS@127.0.0.1:105",
        routing__send_results_to="sender",
    )
    assert destinations_for(config, ["PACS", "CT1", "PACS"]) == (["ct", "pacs"], [])
    names, problems = destinations_for(config, ["PACS", "NOBODY"])
    assert names == ["pacs"] and "'NOBODY' is not in [destinations]" in problems[0]
    assert destinations_for(config, [])[0] == []
