"""MODEL_CARD.md of a trained model: the facts of one training run (`ModelCardFacts`), rendered
through the template templates/MODEL_CARD.md.tmpl (string.Template), and the device the run
trained on (`TrainingDevice`), as the Keras backend reports it."""

from __future__ import annotations

import importlib.metadata
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from classifier.model.patch_set import (
    BOX_MARGIN_MM,
    HARD_NEGATIVE_SLICES,
    NEAR_NEGATIVE_RING_MM,
    NEAR_NEGATIVES_PER_POSITIVE,
    NEGATIVE_MARGIN_MM,
    NEGATIVES_PER_POSITIVE,
    BuildStats,
)
from classifier.model.patches import PATCH_SHAPE
from classifier.types import HISTOLOGY_CLASSES

TEMPLATE = "MODEL_CARD.md.tmpl"
CARD_FILE = "MODEL_CARD.md"
_BACKEND_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch", "numpy": "NumPy"}


@dataclass(frozen=True)
class TrainingDevice:
    """Where a model was trained: the Keras backend and the accelerators its weights lived on.

    `accelerators` is empty when it trained on the CPU; then `cpu_cores` says how many cores the
    process could use."""

    keras_version: str
    backend: str  # keras.backend.backend(): "tensorflow", "jax" or "torch"
    backend_version: str
    accelerators: tuple[str, ...]  # e.g. ("GPU:0 (NVIDIA H200)",)
    cpu_cores: int

    def describe(self) -> str:
        """'GPU:0 (NVIDIA H200), Keras 3.15.1 on TensorFlow 2.21.0' or 'CPU (16 cores), ...'."""
        where = (
            ", ".join(self.accelerators) if self.accelerators else f"CPU ({self.cpu_cores} cores)"
        )
        backend = _BACKEND_NAMES.get(self.backend, self.backend)
        return f"{where}, Keras {self.keras_version} on {backend} {self.backend_version}"

    def as_metadata(self) -> dict[str, Any]:
        """The JSON stored in the model file's metadata under "device"."""
        return {
            "keras": self.keras_version,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "accelerators": list(self.accelerators),
            "cpu_cores": self.cpu_cores,
            "description": self.describe(),
        }


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _tensorflow_accelerators(weights: Sequence[Any]) -> tuple[str, ...]:
    import tensorflow as tf

    # Where the weights live (e.g. /job:localhost/replica:0/task:0/device:GPU:0) is where the
    # training steps ran: without a distribution strategy TensorFlow places both on one device.
    placed = {str(w.value.device).rpartition("device:")[2] for w in weights}
    names = {}
    for i, gpu in enumerate(tf.config.list_physical_devices("GPU")):
        details = tf.config.experimental.get_device_details(gpu)
        names[f"GPU:{i}"] = str(details.get("device_name", "")) or gpu.name
    used = sorted(d for d in placed if not d.startswith("CPU"))
    return tuple(f"{d} ({names[d]})" if d in names else d for d in used)


def _jax_accelerators(weights: Sequence[Any]) -> tuple[str, ...]:
    devices = {d for w in weights for d in w.value.devices()}
    return tuple(
        f"{d.platform.upper()}:{d.id} ({d.device_kind})"
        for d in sorted(devices, key=lambda d: (d.platform, d.id))
        if d.platform != "cpu"
    )


def _torch_accelerators(weights: Sequence[Any]) -> tuple[str, ...]:
    # Imported by name: torch is there only where Keras runs on the torch backend.
    torch = importlib.import_module("torch")

    devices = {w.value.device for w in weights}
    out = []
    for d in sorted(devices, key=str):
        if d.type == "cuda":
            out.append(f"GPU:{d.index or 0} ({torch.cuda.get_device_name(d)})")
        elif d.type != "cpu":
            out.append(str(d))
    return tuple(out)


_ACCELERATORS = {
    "tensorflow": _tensorflow_accelerators,
    "jax": _jax_accelerators,
    "torch": _torch_accelerators,
}


def training_device(weights: Sequence[Any]) -> TrainingDevice:
    """The device a model's training ran on, read from where its weights (`model.weights`,
    Keras variables) are placed by the active Keras backend."""
    import keras

    backend = keras.backend.backend()
    find = _ACCELERATORS.get(backend)
    distribution = {"torch": "torch", "jax": "jax"}.get(backend, backend)
    version = _version(distribution)
    if backend == "tensorflow":
        import tensorflow as tf

        version = tf.__version__
    return TrainingDevice(
        keras_version=keras.__version__,
        backend=backend,
        backend_version=version,
        accelerators=find(weights) if find is not None else (),
        cpu_cores=_cpu_cores(),
    )


@dataclass(frozen=True)
class SplitFacts:
    """One split of the patients: who is in it and the patches built from them."""

    name: str  # "train", "validation" or "test"
    patient_ids: tuple[str, ...]
    patients_per_class: Mapping[str, int]  # histology class -> patients
    patches_per_kind: Mapping[str, int]  # patch_set.PATCH_KINDS -> patches


@dataclass(frozen=True)
class ModelCardFacts:
    """Everything a model card says about one training run, as the run measured it."""

    model_file: str  # file name of the .keras model
    name: str
    version: str
    sha256: str
    parameters: int
    trained_on: str
    data_fingerprint: str
    command: str
    seed: int
    epochs: int
    batch_size: int
    optimizer: str  # e.g. "Adam 1e-3"
    hard_negative_weight: float
    elapsed_s: float
    device: TrainingDevice
    splits: tuple[SplitFacts, ...]
    class_weights: Mapping[str, float]
    stats: BuildStats
    metrics: Mapping[str, Any]  # what evaluation.write_report returned
    report_dir: str  # folder of the evaluation report, relative to the card
    logs_dir: str  # TensorBoard folder, relative to the card
    # The metadata's "histology_real_patients" (evaluation.real_histology_block); None when
    # the model was not evaluated on real patients.
    histology_real: Mapping[str, Any] | None = None

    @property
    def phantom_only(self) -> bool:
        return "phantom" in self.trained_on


def learning_rate_text(rate: float) -> str:
    """1e-3 -> '1e-3' (as people write a learning rate)."""
    mantissa, _, exponent = f"{rate:.0e}".partition("e")
    return f"{mantissa}e{int(exponent)}"


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(value: Any) -> str:
    return "n/a" if not value else f"{value[0]:.3f}-{value[1]:.3f}"


def _kind_lines(by_kind: Mapping[str, Any] | None) -> list[str]:
    """Card lines for the per-kind detection numbers of evaluation.compute_metrics."""
    if not by_kind:
        return []
    lines = []
    if by_kind.get("auc_lesion_vs_candidate") is not None:
        lines.append(
            "- Lesion vs detector candidates only (key-slice patches, as analyze() scores them):"
            f" AUC {_fmt(by_kind['auc_lesion_vs_candidate'])};"
            f" candidates scored >= 0.5 (would be reported as lesions):"
            f" {by_kind['candidate_reported']} of {by_kind['candidates']}"
            f" ({_fmt(by_kind['candidate_reported_per_patient'], 2)} per patient)"
        )
    for kind, row in by_kind.get("kinds", {}).items():
        lines.append(
            f"  - {kind}: {row['patches']} patches, mean lesion probability "
            f"{_fmt(row['mean_probability'])},"
            f" fraction >= 0.5 {_fmt(row['fraction_at_0.5'])}"
        )
    return lines


def _split_row(split: SplitFacts) -> str:
    n = split.patches_per_kind
    cells = [
        split.name,
        str(len(split.patient_ids)),
        *(str(split.patients_per_class.get(c, 0)) for c in HISTOLOGY_CLASSES),
        f"{n.get('lesion', 0)} + {n.get('lesion_candidate', 0)}",
        f"{n.get('candidate', 0)} / {n.get('candidate', 0) + n.get('candidate_slice', 0)}",
        str(n.get("near", 0)),
        str(n.get("random", 0)),
    ]
    return "| " + " | ".join(cells) + " |"


def _lines(lines: Sequence[str]) -> str:
    """Lines for a template block: each ends in a newline, so no lines leave no blank line."""
    return "".join(line + "\n" for line in lines)


def histology_real_text(block: Mapping[str, Any] | None) -> str:
    """The card's line on real-patient histology and what the node does with it."""
    if not block:
        return (
            "not measured (the metadata has no `histology_real_patients`): under `[results] "
            "histology = auto` the node states no histology from this model and says it was not "
            "assessed."
        )
    accuracy, baseline = float(block["accuracy"]), float(block["majority_baseline"])
    verdict = "states" if accuracy > baseline else "does not state"
    return (
        f"per-patient accuracy {accuracy:.3f} against the majority-class baseline "
        f"{baseline:.3f} ({block.get('patients', '?')} patients, {block.get('scope', '')}): "
        f"under `[results] histology = auto` the node {verdict} histology from this model."
    )


def template_values(facts: ModelCardFacts) -> dict[str, str]:
    """The template's placeholders filled from the facts."""
    m = facts.metrics
    h, d = m["histology"], m["lesion_detection"]
    stats = facts.stats
    return {
        "name": facts.name,
        "version": facts.version,
        "phantom_note": (
            "Trained on synthetic phantoms only, so its numbers say nothing about real CT."
            if facts.phantom_only
            else ""
        ),
        "model_file": facts.model_file,
        "real_ct": (
            "This training run saw no real CT. `python -m classifier.model.lopo` fine-tunes the "
            "lesion score with real negatives and inserted lesions, reports leave-one-patient-out "
            "FROC/CPM and the chosen threshold, and writes them into this section."
        ),
        "sha256": facts.sha256,
        "patch_shape": str(PATCH_SHAPE),
        "parameters": str(facts.parameters),
        "trained_on": facts.trained_on,
        "data_fingerprint": facts.data_fingerprint,
        "series_not_loadable": str(stats.series_not_loadable),
        "annotated_slices_not_in_ct": str(stats.annotated_slices_not_in_ct),
        "patients_without_patches": str(stats.patients_without_patches),
        "pet_not_usable": str(stats.pet_not_usable),
        "box_margin_mm": f"{BOX_MARGIN_MM:.0f}",
        "extra_hard_negative_slices": str(HARD_NEGATIVE_SLICES - 1),
        "hard_negative_candidates": str(stats.hard_negative_candidates),
        "hard_negative_weight": f"{facts.hard_negative_weight:g}",
        "near_per_positive": str(NEAR_NEGATIVES_PER_POSITIVE),
        "near_ring_mm": f"{NEAR_NEGATIVE_RING_MM[0]:.0f}-{NEAR_NEGATIVE_RING_MM[1]:.0f}",
        "random_per_positive": str(NEGATIVES_PER_POSITIVE),
        "negative_margin_mm": f"{NEGATIVE_MARGIN_MM:.0f}",
        "seed": str(facts.seed),
        "class_columns": " | ".join(HISTOLOGY_CLASSES),
        "class_rule": "---|" * len(HISTOLOGY_CLASSES),
        "split_rows": _lines([_split_row(s) for s in facts.splits]),
        "split_patients": _lines(
            [
                f"- {s.name}: {', '.join(s.patient_ids) if s.patient_ids else '(none)'}"
                for s in facts.splits
            ]
        ),
        "class_weights": ", ".join(f"{c} {w:.2f}" for c, w in facts.class_weights.items()),
        "command": facts.command,
        "epochs": str(facts.epochs),
        "batch_size": str(facts.batch_size),
        "optimizer": facts.optimizer,
        "elapsed_s": f"{facts.elapsed_s:.0f}",
        "device": facts.device.describe(),
        "logs_dir": facts.logs_dir,
        "scope": str(m.get("scope", "test split")),
        "patients": str(m["patients"]),
        "h_accuracy": _fmt(h["accuracy"]),
        "h_balanced_accuracy": _fmt(h["balanced_accuracy"]),
        "h_balanced_accuracy_ci95": _ci(h["balanced_accuracy_ci95"]),
        "h_macro_f1": _fmt(h["macro_f1"]),
        "h_macro_f1_ci95": _ci(h["macro_f1_ci95"]),
        "h_majority_class_accuracy": _fmt(h["majority_class_accuracy"]),
        "histology_real": histology_real_text(facts.histology_real),
        "d_auc": _fmt(d["auc"]),
        "d_auc_ci95": _ci(d["auc_ci95"]),
        "d_accuracy_at_05": _fmt(d["accuracy_at_0.5"]),
        "by_kind": _lines(_kind_lines(d.get("by_kind"))),
        "bootstrap_rounds": str(m["bootstrap"]["rounds"]),
        "report_dir": facts.report_dir,
    }


def load_template() -> string.Template:
    """The card template shipped in the package (package data of classifier.model)."""
    text = resources.files("classifier.model").joinpath("templates", TEMPLATE).read_text()
    return string.Template(text)


def render_model_card(facts: ModelCardFacts) -> str:
    """The card's Markdown; a placeholder the facts do not fill raises KeyError."""
    return load_template().substitute(template_values(facts))


def write_model_card(facts: ModelCardFacts, folder: Path) -> Path:
    """Write MODEL_CARD.md into `folder` (beside the model) and return its path."""
    path = Path(folder) / CARD_FILE
    path.write_text(render_model_card(facts))
    return path


def replace_card_section(card: Path, start: str, end: str, section: str) -> None:
    """Put `section` (which opens with `start` and closes with `end`) into the model card at
    `card`, in place of the text between those markers, or at its end where they are absent."""
    text = card.read_text()
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    card.write_text(text)
