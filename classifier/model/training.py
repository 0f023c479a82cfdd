"""Train the lesion/histology CNN on a Lung-PET-CT-Dx style collection (TCIA layout + XML boxes).

Patients are split (never slices) into train/validation/test, stratified by class and
deterministic in the seed. The patches of each split come from classifier.model.patch_set. The
histology loss is class-weighted (inverse frequency) and masked on negative patches; the lesion
loss weighs detector-candidate patches HARD_NEGATIVE_WEIGHT.
Beside the model it writes MODEL_CARD.md (classifier.model.model_card), TensorBoard logs and
the evaluation report (classifier.model.evaluation) of the test split.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from classifier.model.evaluation import (
    METRICS_FILE,
    PatchPredictions,
    real_histology_block,
    write_report,
)
from classifier.model.model_card import (
    ModelCardFacts,
    SplitFacts,
    learning_rate_text,
    training_device,
    write_model_card,
)
from classifier.model.patch_set import (
    PATCH_KINDS,
    BuildStats,
    PatchSet,
    build_patch_set,
    scan,
)
from classifier.model.patches import (
    CH_LUNG,
    CH_MEDIASTINAL,
    CH_PET_FLAG,
    CH_SUV,
    PATCH_SHAPE,
)
from classifier.types import HISTOLOGY_CLASSES

if TYPE_CHECKING:
    from classifier.datasets.tcia_dataset import DatasetScan

SPLIT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train, validation, test
# Lesion-loss weight of detector-candidate patches (on or away from a box): there are few of
# them, and they are exactly what analyze() scores.
HARD_NEGATIVE_WEIGHT = 2.0
LEARNING_RATE = 1e-3
PHANTOM_MANUFACTURER = "lungnode phantom"


def split_patients(labels: dict[str, str], seed: int) -> dict[str, list[str]]:
    """Split patient ids into train/validation/test, stratified by class, deterministic in seed.

    Each class gives round(fraction * n) patients to test and validation, but a class keeps at
    least one training patient; with two patients the second goes to test before validation.
    """
    rng = np.random.default_rng(seed)
    split: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for cls in sorted(set(labels.values())):
        ids = sorted(p for p, c in labels.items() if c == cls)
        rng.shuffle(ids)
        n = len(ids)
        n_test = min(round(SPLIT_FRACTIONS[2] * n) or (1 if n >= 2 else 0), n - 1)
        n_val = min(round(SPLIT_FRACTIONS[1] * n) or (1 if n >= 3 else 0), n - 1 - n_test)
        split["test"] += ids[:n_test]
        split["validation"] += ids[n_test : n_test + n_val]
        split["train"] += ids[n_test + n_val :]
    return {k: sorted(v) for k, v in split.items()}


def class_weights(labels: Sequence[str]) -> dict[str, float]:
    """Inverse-frequency weights n / (k * n_c) over the classes present; absent classes get 0."""
    counts = Counter(labels)
    present = [c for c in HISTOLOGY_CLASSES if counts[c] > 0]
    total = sum(counts[c] for c in present)
    return {
        c: (total / (len(present) * counts[c]) if counts[c] else 0.0) for c in HISTOLOGY_CLASSES
    }


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips, quarter turns, shifts of up to 3 pixels, CT/SUV intensity jitter and PET
    dropout (so the model also works on CT alone); returns a new array."""
    out = np.empty_like(batch)
    pad = 3
    for i, patch in enumerate(batch):
        p = np.rot90(patch, k=int(rng.integers(4)), axes=(0, 1))
        if rng.random() < 0.5:
            p = p[:, ::-1]
        padded = np.pad(p, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        dr, dc = rng.integers(0, 2 * pad + 1, size=2)
        p = padded[dr : dr + PATCH_SHAPE[0], dc : dc + PATCH_SHAPE[1]].copy()
        ct_channels = list(CH_LUNG + CH_MEDIASTINAL)
        p[..., ct_channels] = np.clip(
            p[..., ct_channels] * rng.uniform(0.95, 1.05) + rng.uniform(-0.03, 0.03), 0, 1
        )
        if p[0, 0, CH_PET_FLAG] > 0 and rng.random() < 0.25:
            p[..., CH_SUV] = 0.0
            p[..., CH_PET_FLAG] = 0.0
        else:
            p[..., CH_SUV] = np.clip(p[..., CH_SUV] * rng.uniform(0.85, 1.15), 0, 1)
        out[i] = p
    return out


def _targets(
    ps: PatchSet, weights: dict[str, float]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Keras targets and per-output sample weights: histology masked on background patches;
    lesion loss with detector-candidate patches (positive or negative) weighted
    HARD_NEGATIVE_WEIGHT, then lesion patches scaled so both classes weigh the same in all."""
    index = {c: i for i, c in enumerate(HISTOLOGY_CLASSES)}
    onehot = np.zeros((len(ps.labels), len(HISTOLOGY_CLASSES)), dtype=np.float32)
    onehot[np.arange(len(ps.labels)), [index[c] for c in ps.labels]] = 1.0
    hist_w = np.asarray([weights[c] for c in ps.labels], dtype=np.float32) * ps.is_lesion
    y = {"lesion": ps.is_lesion.astype(np.float32)[:, None], "histology": onehot}
    hard = np.isin(ps.kinds, ("lesion_candidate", "candidate", "candidate_slice"))
    lesion_w = np.where(hard, HARD_NEGATIVE_WEIGHT, 1.0).astype(np.float32)
    positive, negative = lesion_w[ps.is_lesion].sum(), lesion_w[~ps.is_lesion].sum()
    if positive > 0 and negative > 0:
        lesion_w[ps.is_lesion] *= negative / positive
    sw = {"lesion": lesion_w, "histology": hist_w}
    return y, sw


def _make_sequence(ps: PatchSet, weights: dict[str, float], batch_size: int, seed: int) -> Any:
    import keras

    y, sw = _targets(ps, weights)

    class AugmentedPatches(keras.utils.PyDataset):
        """Shuffled, augmented batches; the order and augmentation depend on seed and epoch."""

        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng([seed, 0]).permutation(len(ps.labels))

        def __len__(self) -> int:
            return int(np.ceil(len(ps.labels) / batch_size))

        def __getitem__(
            self, i: int
        ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
            rows = self.order[i * batch_size : (i + 1) * batch_size]
            rng = np.random.default_rng([seed, self.epoch, i])
            x = augment(ps.patches[rows], rng)
            return x, {k: v[rows] for k, v in y.items()}, {k: v[rows] for k, v in sw.items()}

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(ps.labels))

    return AugmentedPatches()


def _data_description(dataset: DatasetScan) -> str:
    """'synthetic phantoms generated by lungnode synth ...' or the real collection's name."""
    from classifier.imaging.dicom_io import read_header

    first = next((a.path for p in dataset.patients for a in p.annotated), None)
    phantom = (
        first is not None
        and str(read_header(Path(first)).get("Manufacturer", "")) == PHANTOM_MANUFACTURER
    )
    n = len(dataset.patients)
    if phantom:
        return (
            f"synthetic phantoms generated by lungnode synth ({n} patients, "
            f"data fingerprint {dataset.fingerprint()})"
        )
    return f"Lung-PET-CT-Dx layout ({n} patients, data fingerprint {dataset.fingerprint()})"


def train(
    data_dir: Path,
    annotations_dir: Path | None,
    out: Path,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 32,
    command: str,
    progress: Callable[[str], None] = print,
) -> Path:
    """Train on a TCIA-layout folder and write the model, MODEL_CARD.md, TensorBoard logs and
    the evaluation report (on the test split) beside `out`; return `out`."""
    from classifier.model.inference import REAL_HISTOLOGY_KEY, sha256_of, write_model_metadata

    out = Path(out)
    if out.suffix != ".keras":
        raise ValueError(f"model file {out} must end in .keras (Keras 3 format)")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs} and batch_size={batch_size} must be at least 1")
    started = time.monotonic()
    dataset = scan(Path(data_dir), annotations_dir)
    labels = {p.patient_id: p.label for p in dataset.patients if p.annotated and p.label}
    if not labels:
        raise ValueError(f"no annotated patients found in {data_dir}; check the annotation folder")
    split = split_patients(labels, seed)
    progress(
        f"split by patient (seed {seed}): " + ", ".join(f"{k} {len(v)}" for k, v in split.items())
    )
    stats = BuildStats()
    sets = {
        k: build_patch_set(dataset, v, seed=seed, progress=progress, stats=stats)
        for k, v in split.items()
    }
    if not sets["train"].is_lesion.any():
        raise ValueError(
            f"no lesion patches could be built from {data_dir}; see the skipped counts {stats}"
        )
    weights = class_weights(sets["train"].labels[sets["train"].is_lesion].tolist())
    progress(
        "histology class weights (inverse frequency of training lesion patches): "
        + ", ".join(f"{c} {w:.2f}" for c, w in weights.items())
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    model, hist = _fit(
        sets,
        weights,
        name=out.stem.replace("-", "_"),
        log_dir=out.parent / f"{out.stem}.logs",
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    device = training_device(model.weights)
    progress(f"trained on {device.describe()}")
    trained_on = _data_description(dataset)
    version = importlib.metadata.version("lungnode")
    model.save(out)
    metadata: dict[str, Any] = {
        "name": out.stem,
        "version": version,
        "trained_on": trained_on,
        "clinical_use": False,
        "seed": seed,
        "epochs": epochs,
        "command": command,
        "split": split,
        "class_weights": weights,
        "data_fingerprint": dataset.fingerprint(),
        "history": hist,
        "device": device.as_metadata(),
    }
    write_model_metadata(out, metadata)
    sha = sha256_of(out)
    report_dir = out.parent / f"{out.stem}-report"
    metrics = _report(out, sets, report_dir, version, sha, hist, dataset.fingerprint(), seed)
    histology_real = None
    held_out = str(metrics.get("scope", "")).startswith("test")
    if (
        "phantom" not in trained_on
        and held_out
        and metrics["histology"].get("accuracy") is not None
    ):
        # Real patients in the test split: their histology accuracy decides whether the node
        # states histology under [results] histology = auto. The file changes, so does its hash.
        histology_real = real_histology_block(metrics, "test split of real patients")
        write_model_metadata(out, {**metadata, REAL_HISTOLOGY_KEY: histology_real})
        sha = sha256_of(out)
        _record_sha(report_dir, sha)
    elapsed = time.monotonic() - started
    facts = ModelCardFacts(
        model_file=out.name,
        name=out.stem,
        version=version,
        sha256=sha,
        parameters=model.count_params(),
        trained_on=trained_on,
        data_fingerprint=dataset.fingerprint(),
        command=command,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=f"Adam {learning_rate_text(LEARNING_RATE)}",
        hard_negative_weight=HARD_NEGATIVE_WEIGHT,
        elapsed_s=elapsed,
        device=device,
        splits=_split_facts(dataset, split, sets),
        class_weights=weights,
        stats=stats,
        metrics=metrics,
        report_dir=report_dir.name,
        logs_dir=f"{out.stem}.logs",
        histology_real=histology_real,
    )
    write_model_card(facts, out.parent)
    progress(f"model {out} (sha256 {sha[:12]}...), card and report written in {elapsed:.0f} s")
    return out


def _record_sha(report_dir: Path, sha: str) -> None:
    """Name the model file's final SHA-256 in the report's metrics.json."""
    path = report_dir / METRICS_FILE
    metrics = json.loads(path.read_text())
    metrics.setdefault("model", {})["sha256"] = sha
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def _fit(
    sets: dict[str, PatchSet],
    weights: dict[str, float],
    *,
    name: str,
    log_dir: Path,
    epochs: int,
    seed: int,
    batch_size: int,
    progress: Callable[[str], None],
) -> tuple[Any, dict[str, list[float]]]:
    """Build, compile and fit the network on the train split (validated on the validation split
    when it has patches); return the model and its history."""
    import keras

    from classifier.model.network import build_model

    keras.utils.set_random_seed(seed)
    model = build_model(name=name)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss={"lesion": "binary_crossentropy", "histology": "categorical_crossentropy"},
        metrics={"lesion": ["accuracy"]},
        weighted_metrics={"histology": ["accuracy"]},
    )
    validation = None
    if len(sets["validation"].labels):
        y_val, sw_val = _targets(sets["validation"], weights)
        validation = (sets["validation"].patches, y_val, sw_val)

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted((logs or {}).items()))
            progress(f"epoch {epoch + 1}/{epochs}: {shown}")

    history = model.fit(
        _make_sequence(sets["train"], weights, batch_size, seed),
        validation_data=validation,
        epochs=epochs,
        verbose=0,
        callbacks=[
            Progress(),
            keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False),
        ],
    )
    return model, {k: [float(v) for v in vs] for k, vs in history.history.items()}


def _report(
    model_path: Path,
    sets: dict[str, PatchSet],
    report_dir: Path,
    version: str,
    sha: str,
    history: dict[str, list[float]],
    data_fingerprint: str,
    seed: int,
) -> dict[str, Any]:
    """The evaluation report of the saved model on the test split (validation, then train,
    when it is empty); return its metrics."""
    from classifier.model.inference import LesionClassifier

    scope_name = next((k for k in ("test", "validation", "train") if len(sets[k].labels)), "test")
    test = sets[scope_name]
    lesion, histo = LesionClassifier.load(model_path).predict(test.patches)
    return write_report(
        PatchPredictions(test.patient_ids, test.is_lesion, test.labels, lesion, histo, test.kinds),
        report_dir,
        title=f"{model_path.stem} {version} ({scope_name} split)",
        history=history,
        extra={
            "model": {"name": model_path.stem, "version": version, "sha256": sha},
            "data_fingerprint": data_fingerprint,
            "scope": f"{scope_name} split recorded in the model",
        },
        seed=seed,
    )


def _split_facts(
    dataset: DatasetScan, split: dict[str, list[str]], sets: dict[str, PatchSet]
) -> tuple[SplitFacts, ...]:
    """Patients per class and patches per kind of each split, for the model card."""
    out = []
    for name in ("train", "validation", "test"):
        patients = Counter(p.label for p in dataset.patients if p.patient_id in split[name])
        out.append(
            SplitFacts(
                name=name,
                patient_ids=tuple(split[name]),
                patients_per_class={c: patients[c] for c in HISTOLOGY_CLASSES},
                patches_per_kind={k: sets[name].count(k) for k in PATCH_KINDS},
            )
        )
    return tuple(out)
