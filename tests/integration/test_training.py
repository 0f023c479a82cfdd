"""Training end to end on tiny phantoms, evaluation reproducing its report, the patient split,
and the bundled model on fresh phantoms."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from classifier.imaging.lesions import Candidate
from classifier.model.evaluate_folder import evaluate
from classifier.model.evaluation import PatchPredictions, by_kind
from classifier.model.inference import BUNDLED_MODEL, read_model_metadata, sha256_of
from classifier.model.patch_set import (
    HARD_NEGATIVE_SLICES,
    PATCH_KINDS,
    PatchSet,
    _box_map,
    _hard_negative_centres,
)
from classifier.model.training import (
    HARD_NEGATIVE_WEIGHT,
    _targets,
    augment,
    class_weights,
    split_patients,
    train,
)


def test_split_is_by_patient_stratified_and_deterministic() -> None:
    labels = {f"A{i:03d}": "A" for i in range(20)} | {"E001": "E", "E002": "E"} | {"B001": "B"}
    labels |= {f"G{i:03d}": "G" for i in range(5)}
    split = split_patients(labels, seed=3)
    assert split == split_patients(labels, seed=3)
    assert split != split_patients(labels, seed=4)
    everyone = [p for ids in split.values() for p in ids]
    assert sorted(everyone) == sorted(labels)  # each patient exactly once
    train_classes = {labels[p] for p in split["train"]}
    assert train_classes == {"A", "B", "E", "G"}  # tiny classes keep a training patient
    assert {labels[p] for p in split["test"]} >= {"A", "E", "G"}
    assert sum(labels[p] == "A" for p in split["test"]) == 4


def test_class_weights_are_inverse_frequency() -> None:
    weights = class_weights(["A"] * 6 + ["G"] * 2)
    assert weights["A"] == pytest.approx(8 / (2 * 6))
    assert weights["G"] == pytest.approx(8 / (2 * 2))
    assert weights["B"] == 0.0 and weights["E"] == 0.0


def test_augment_keeps_shape_and_range() -> None:
    rng = np.random.default_rng(0)
    batch = rng.random((4, 64, 64, 8), dtype=np.float32)
    batch[..., 7] = 1.0
    out = augment(batch, rng)
    assert out.shape == batch.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out, batch)
    assert set(np.unique(out[..., 7])) <= {0.0, 1.0}


@pytest.mark.slow
def test_tiny_training_writes_model_card_report_and_evaluate_reproduces_it(tmp_path: Path) -> None:
    from classifier.datasets.phantom import write_tcia_layout

    data = tmp_path / "data"
    write_tcia_layout(data, 4, 5, ct_size=64, ct_slices=16, class_weights={"A": 1.0})
    out = tmp_path / "model" / "tiny.keras"
    lines: list[str] = []
    train(
        data,
        None,
        out,
        epochs=1,
        seed=2,
        batch_size=16,
        command="pytest tiny",
        progress=lines.append,
    )
    report = out.parent / "tiny-report"
    for name in ("MODEL_CARD.md", "tiny.keras"):
        assert (out.parent / name).is_file()
    for name in (
        "confusion_matrix.png",
        "roc_histology.png",
        "training_curves.png",
        "metrics.json",
    ):
        assert (report / name).stat().st_size > 1000 or name == "metrics.json"
    assert any(
        p.name.startswith("events.out.tfevents") for p in (out.parent / "tiny.logs").rglob("*")
    )
    assert sum(line.startswith("epoch ") for line in lines) == 1
    card = (out.parent / "MODEL_CARD.md").read_text()
    assert "NOT FOR CLINICAL USE" in card and "pytest tiny" in card
    meta = read_model_metadata(out)
    assert set(meta["split"]["train"]).isdisjoint(meta["split"]["test"])
    # The card's facts are the run's: the file it describes, its split, the device it used.
    assert f"SHA-256 `{sha256_of(out)}`" in card
    assert "$" not in card  # every template placeholder filled
    assert "seed 2; trained in " in card and "Epochs 1, batch size 16, Adam 1e-3" in card
    for name, ids in meta["split"].items():
        assert f"- {name}: {', '.join(ids) if ids else '(none)'}" in card
    device = meta["device"]
    assert device["backend"] == keras.backend.backend()
    assert device["keras"] == keras.__version__
    assert f"s on {device['description']}. TensorBoard logs" in card
    assert device["description"].startswith(
        ", ".join(device["accelerators"]) or f"CPU ({device['cpu_cores']} cores)"
    )
    if device["backend"] == "tensorflow":
        import tensorflow as tf

        assert bool(device["accelerators"]) == bool(tf.config.list_logical_devices("GPU"))
    assert any(line == f"trained on {device['description']}" for line in lines)
    written = json.loads((report / "metrics.json").read_text())
    again = evaluate(out, data, None, tmp_path / "again")
    assert again["histology"] == written["histology"]
    assert again["lesion_detection"] == written["lesion_detection"]
    assert again["scope"] == written["scope"] == "test split recorded in the model"
    # Phantoms only: no real-patient histology accuracy, so the node states none (auto).
    assert "histology_real_patients" not in meta
    assert "Histology on real patients: not measured" in card


@pytest.mark.slow
def test_bundled_model_detects_lesions_on_fresh_phantoms(tmp_path: Path) -> None:
    from classifier.datasets.phantom import write_tcia_layout

    assert BUNDLED_MODEL.is_file(), f"bundled model {BUNDLED_MODEL} is missing from the checkout"
    data = tmp_path / "fresh"
    write_tcia_layout(data, 4, 20260917)  # a seed the demo model never saw; A, B, E, G
    metrics = evaluate(BUNDLED_MODEL, data, None, tmp_path / "report")
    assert metrics["scope"] == "all patients in the folder"
    assert metrics["lesion_detection"]["auc"] > 0.8
    # What the detector proposes away from the lesions is what the model must reject.
    # Since the detector drops anatomy by 3-D shape and needs 8 mm thickness (issue 9), it may
    # propose nothing away from the phantom lesions; then there is nothing to reject.
    hard = metrics["lesion_detection"]["by_kind"]
    if hard["candidates"] > 0:
        assert hard["auc_lesion_vs_candidate"] > 0.8
    assert (hard["candidate_reported_per_patient"] or 0.0) <= 1.0
    print(
        f"bundled model on 4 fresh phantoms: histology accuracy {metrics['histology']['accuracy']}"
    )


def _candidate(origin: tuple[int, int, int], mask: np.ndarray) -> Candidate:
    areas = mask.sum(axis=(1, 2))
    key = int(np.argmax(areas))
    rows, cols = np.nonzero(mask[key])
    box = (
        origin[1] + int(rows.min()),
        origin[2] + int(cols.min()),
        origin[1] + int(rows.max()),
        origin[2] + int(cols.max()),
    )
    return Candidate(
        mask=mask,
        mask_origin=origin,
        key_slice_index=origin[0] + key,
        box_rc=box,
        slice_range=(origin[0], origin[0] + mask.shape[0] - 1),
        centroid_mm=(0.0, 0.0, 0.0),
        side="left",
        long_axis_mm=10.0,
        short_axis_mm=8.0,
        volume_ml=1.0,
    )


def test_detector_candidates_away_from_boxes_become_hard_negatives() -> None:
    boxes = _box_map((10, 64, 64), [(4, 20, 20, 30, 30)], margin=2)
    assert boxes[4, 18, 18] and boxes[4, 32, 32] and not boxes[4, 33, 33] and not boxes[3].any()
    blob = np.ones((3, 4, 4), dtype=bool)
    blob[0] = False
    blob[0, 1, 1] = True  # thinner on its first slice: the key slice is one of the others
    far = _candidate((3, 40, 40), blob)
    centres = _hard_negative_centres(far, boxes)
    assert centres is not None
    assert centres[0] == far.center_index  # the patch analyze() will score
    assert 1 < len(centres) <= HARD_NEGATIVE_SLICES
    assert len(set(centres)) == len(centres)
    assert all(3 <= z < 6 and 40 <= r < 44 and 40 <= c < 44 for z, r, c in centres)
    # The lesion itself, one touching its box's margin, or one centred in a box: not negatives.
    assert _hard_negative_centres(_candidate((4, 22, 22), blob[1:2]), boxes) is None
    assert _hard_negative_centres(_candidate((4, 31, 31), blob[1:2]), boxes) is None
    ring = np.ones((1, 15, 15), dtype=bool)
    ring[0, 2:-2, 2:-2] = False
    around = _candidate((4, 18, 18), ring)
    assert boxes[around.center_index]
    assert _hard_negative_centres(around, boxes) is None
    # The same shapes on a slice without a box are negatives.
    assert _hard_negative_centres(_candidate((8, 22, 22), blob[1:2]), boxes) is not None


def test_patch_set_reports_each_kind_and_weights_hard_negatives() -> None:
    kinds = np.asarray(["lesion", "candidate", "candidate_slice", "random", "lesion_candidate"])
    ps = PatchSet(
        np.zeros((5, 64, 64, 8), dtype=np.float32),
        np.isin(kinds, ["lesion", "lesion_candidate"]),
        np.asarray(["A", "A", "A", "A", "G"]),
        np.asarray(["p1"] * 4 + ["p2"]),
        kinds,
    )
    assert [ps.count(k) for k in PATCH_KINDS] == [1, 1, 1, 1, 0, 1]
    assert ps.subset(np.asarray([0, 1])).count("candidate") == 1
    y, sw = _targets(ps, class_weights(["A", "G"]))
    assert y["lesion"].ravel().tolist() == [1, 0, 0, 0, 1]
    hard = HARD_NEGATIVE_WEIGHT
    # Background 2 + 2 + 1 = 5 against lesion 1 + 2 = 3: lesion patches scaled by 5/3.
    assert sw["lesion"] == pytest.approx([5 / 3, hard, hard, 1, 2 * 5 / 3])
    assert sw["lesion"][ps.is_lesion].sum() == pytest.approx(sw["lesion"][~ps.is_lesion].sum())
    assert sw["histology"].tolist() == [1, 0, 0, 0, 1]


def test_metrics_count_detector_candidates_that_would_be_reported() -> None:
    kinds = np.asarray(["lesion", "lesion", "candidate", "candidate", "random", "candidate_slice"])
    pred = PatchPredictions(
        np.asarray(["p1", "p1", "p1", "p2", "p2", "p2"]),
        kinds == "lesion",
        np.asarray(["A"] * 6),
        np.asarray([0.9, 0.4, 0.6, 0.1, 0.2, 0.7]),
        np.full((6, 4), 0.25),
        kinds,
    )
    got = by_kind(pred)
    assert got is not None
    assert got["candidates"] == 2 and got["candidate_reported"] == 1
    assert got["candidate_reported_per_patient"] == pytest.approx(0.5)
    # lesion 0.9 beats both candidates, lesion 0.4 beats one of the two: AUC 3/4.
    assert got["auc_lesion_vs_candidate"] == pytest.approx(0.75)
    assert got["kinds"]["candidate_slice"]["fraction_at_0.5"] == 1.0
    assert by_kind(replace(pred, kinds=None)) is None


def test_real_patient_histology_block_never_lowers_the_collection_baseline() -> None:
    from classifier.model.evaluation import COLLECTION_MAJORITY_ACCURACY, real_histology_block

    metrics = {
        "histology": {"accuracy": 0.75, "majority_class_accuracy": 0.5},
        "patients_with_lesion_patches": 20,
    }
    block = real_histology_block(metrics, "test split of real patients")
    assert block == {
        "accuracy": 0.75,
        "majority_baseline": COLLECTION_MAJORITY_ACCURACY,
        "patients": 20,
        "scope": "test split of real patients",
    }
    assert round(COLLECTION_MAJORITY_ACCURACY, 3) == 0.707
    own = {**metrics, "histology": {"accuracy": 0.9, "majority_class_accuracy": 0.8}}
    assert real_histology_block(own, "x")["majority_baseline"] == 0.8
    with pytest.raises(ValueError, match="no per-patient histology accuracy"):
        real_histology_block({**metrics, "histology": {"accuracy": None}}, "x")


def test_training_on_real_data_records_its_histology_accuracy(tmp_path: Path) -> None:
    """A TCIA-layout folder whose images are not the phantom generator's (Manufacturer
    rewritten): training records the test split's histology accuracy in the model metadata,
    the node reads it back, and the card and report name the final file's SHA-256."""
    import pydicom

    from classifier.datasets.phantom import write_tcia_layout
    from classifier.model.inference import LesionClassifier

    data = tmp_path / "data"
    write_tcia_layout(data, 4, 5, ct_size=64, ct_slices=16, class_weights={"A": 1.0})
    for path in data.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.Manufacturer = "SIEMENS"
        ds.save_as(path)
    out = tmp_path / "model" / "real.keras"
    train(data, None, out, epochs=1, seed=2, batch_size=16, command="t", progress=lambda _: None)
    block = read_model_metadata(out)["histology_real_patients"]
    assert block["scope"] == "test split of real patients"
    assert block["majority_baseline"] >= 251 / 355
    info = LesionClassifier.load(out).info
    assert info.histology_real_accuracy == block["accuracy"]
    assert info.histology_real_baseline == block["majority_baseline"]
    card = (out.parent / "MODEL_CARD.md").read_text()
    assert f"SHA-256 `{sha256_of(out)}`" in card
    assert f"per-patient accuracy {block['accuracy']:.3f} against" in card
    report = json.loads((out.parent / "real-report" / "metrics.json").read_text())
    assert report["model"]["sha256"] == sha256_of(out)
