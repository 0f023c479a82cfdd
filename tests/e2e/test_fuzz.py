"""A bounded, seeded fuzz round over the wire: 2,000 mutated instances, the node stays up.

Mutations of one valid 64x64 CT slice (bit flips, rewritten length fields, truncated elements,
duplicated or zeroed byte runs; the file meta is kept so pynetdicom can send the bytes as they
are) go to the node process in associations of 50. Afterwards the node still answers C-ECHO,
its resident memory grew by less than 100 MB between 500 and 2,000 mutations, and a valid
study sent by DCMTK storescu is analysed and delivered to a DCMTK storescp.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pydicom
import pytest
from bad_input_corpus import mutations, save
from dcmtk import StorescpServer, run_echoscu, run_storescu
from node_process import NodeProcess
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset

from classifier.datasets.phantom import generate_study
from scp_node.dicom.pynetdicom_adapter.no_delay import NO_DELAY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CT = "1.2.840.10008.5.1.4.1.1.2"
MUTATIONS = 2000
PER_ASSOCIATION = 50
SEED = 20240501


def test_fuzz_round_leaves_the_node_up_and_analysing(tmp_path: Path, chunked_send: None) -> None:
    seed_study = generate_study(seed=3, histology="A", ct_size=64, ct_slices=4, pet=False)
    base = save(seed_study.ct[1], tmp_path / "seed.dcm")
    valid_bytes = base.read_bytes()
    _, dataset_start = split_dataset(base)
    fuzz_file = tmp_path / "fuzz.dcm"

    study = generate_study(seed=8, histology="G", ct_size=64, ct_slices=12, pet=False)
    valid = [save(ds, tmp_path / "valid" / f"{i:03d}.dcm") for i, ds in enumerate(study.ct)]

    statuses: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    rss: dict[str, float] = {}
    with (
        StorescpServer(tmp_path / "archive") as archive,
        NodeProcess(
            tmp_path / "node",
            archive_port=archive.port,
            quiet_seconds=2,
        ) as node,
    ):
        rss["start"] = node.rss_kib() / 1024.0  # the serve process (receiving) and its children
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(CT)
        ae.add_requested_context("1.2.840.10008.1.1")
        started = time.monotonic()
        assoc = None
        for n, (kind, data) in enumerate(mutations(valid_bytes, dataset_start, MUTATIONS, SEED)):
            if assoc is None or not assoc.is_established or n % PER_ASSOCIATION == 0:
                if assoc is not None and assoc.is_established:
                    assoc.release()
                assoc = ae.associate(
                    "127.0.0.1", node.port, ae_title=node.ae_title, evt_handlers=[NO_DELAY]
                )
                assert assoc.is_established, f"association refused after {n} mutations"
            fuzz_file.write_bytes(data)
            kinds[kind] += 1
            try:
                status = assoc.send_c_store(fuzz_file)
                statuses[f"0x{int(status.Status):04X}" if "Status" in status else "none"] += 1
            except (ValueError, AttributeError, OSError) as exc:  # unsendable (meta cut)
                statuses[f"not sent ({type(exc).__name__})"] += 1
            if n + 1 == 500:
                rss["after 500"] = node.rss_kib() / 1024.0
        assert assoc is not None
        if assoc.is_established:
            assert assoc.send_c_echo().Status == 0
            assoc.release()
        rss["after 2000"] = node.rss_kib() / 1024.0
        seconds = time.monotonic() - started
        print(f"fuzz: {MUTATIONS} mutations in {seconds:.0f} s; kinds {dict(kinds)}")
        print(f"fuzz: statuses {dict(statuses)}; RSS MB {rss}")

        assert run_echoscu(node.port, called_ae=node.ae_title).returncode == 0
        assert rss["after 2000"] - rss["after 500"] < 100, rss
        assert sum(statuses.values()) == MUTATIONS
        assert statuses["0x0000"] > 0 and any(k.startswith("0xC") for k in statuses), statuses
        assert "0x0110" not in statuses, "the receiver failed on a mutation (see C-STORE failed)"
        assert "C-STORE failed" not in node.log()

        sent = run_storescu(valid, node.port, called_ae=node.ae_title, timeout=120)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        node.wait_for(
            lambda s: any(
                x["study_uid"] == study.study_instance_uid and x["state"] == "DELIVERED"
                for x in s["studies"]
            ),
            180,
            "the valid study DELIVERED after the fuzz round",
        )
        delivered = [pydicom.dcmread(p, stop_before_pixels=True) for p in archive.received()]
        assert any(
            ds.Modality == "SR" and ds.StudyInstanceUID == study.study_instance_uid
            for ds in delivered
        )
