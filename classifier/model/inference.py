"""Load the Keras 3 model once and run it on batches of patches with a fixed batch shape.

Provenance (name, version, training data, clinical use) travels inside the .keras file as a
JSON zip-archive comment, which Keras ignores; the SHA-256 is taken over the file's bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from classifier.model.calibration import (
    PlattCalibration,
    calibration_path,
    read_sidecar,
)
from classifier.model.patches import PATCH_SHAPE
from classifier.types import HISTOLOGY_CLASSES, UNCALIBRATED_CERTAINTY, ModelInfo

log = logging.getLogger(__name__)

BATCH_SIZE = 32
METADATA_FORMAT = "lungnode-model-metadata/1"
BUNDLED_MODEL = Path(__file__).resolve().parent / "weights" / "lungnode-demo.keras"
_GPU_CONFIGURED = False


def write_model_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Store `metadata` (JSON-serialisable) in the .keras archive's zip comment."""
    payload = json.dumps({"format": METADATA_FORMAT, **metadata}, sort_keys=True).encode("utf-8")
    if len(payload) > 65535:
        raise ValueError(f"model metadata for {path} is {len(payload)} bytes; the limit is 65535")
    with zipfile.ZipFile(path, "a") as zf:
        zf.comment = payload


def read_model_metadata(path: Path) -> dict[str, Any]:
    """Return the metadata stored by write_model_metadata, or {} when the file carries none."""
    with zipfile.ZipFile(path, "r") as zf:
        comment = zf.comment
    if not comment:
        return {}
    try:
        data = json.loads(comment.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == METADATA_FORMAT else {}


REAL_HISTOLOGY_KEY = "histology_real_patients"


def real_histology(meta: dict[str, Any], path: Path) -> dict[str, float | None]:
    """ModelInfo's histology_real_accuracy and histology_real_baseline from the metadata's
    "histology_real_patients" block ({"accuracy", "majority_baseline", ...}, fractions 0-1);
    both None without the block. A malformed block raises ValueError naming the file."""
    block = meta.get(REAL_HISTOLOGY_KEY)
    if block is None:
        return {"histology_real_accuracy": None, "histology_real_baseline": None}
    values = []
    for key in ("accuracy", "majority_baseline"):
        value = block.get(key) if isinstance(block, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(
                f"model file {path}: metadata {REAL_HISTOLOGY_KEY}.{key} is {value!r}; expected "
                "a fraction from 0 to 1 (record it with classifier.model.evaluation."
                "real_histology_block), or leave the block out"
            )
        values.append(float(value))
    return {"histology_real_accuracy": values[0], "histology_real_baseline": values[1]}


def sha256_of(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksum(path: Path) -> Path:
    """`<file>.sha256` beside a model file, in sha256sum's format, so that `lungnode
    check-config` (and `sha256sum -c`) can tell a changed or corrupted file."""
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.write_text(f"{sha256_of(path)}  {path.name}\n", encoding="utf-8")
    return sidecar


def _configure_tensorflow_gpus() -> None:
    """Let TensorFlow grow GPU memory on demand instead of taking all of it at first use."""
    global _GPU_CONFIGURED
    import keras

    if _GPU_CONFIGURED or keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # already initialised by someone else in this process
            log.warning("could not enable memory growth on %s: %s", gpu.name, exc)
    _GPU_CONFIGURED = True


class LesionClassifier:
    """A loaded lesion/histology model: `predict(patches)` -> (lesion score, histology probs);
    `certainty(scores)` -> the scores' calibrated probabilities (the raw scores without a
    calibration, and `info.certainty` says which)."""

    def __init__(
        self,
        model: Any,
        info: ModelInfo,
        calibration: PlattCalibration | None = None,
        uncalibrated: str = UNCALIBRATED_CERTAINTY,
    ) -> None:
        """`uncalibrated`: what the certainty is said to be without a calibration."""
        self.model = model
        self.calibration = calibration
        self.info = dataclasses.replace(
            info, certainty=calibration.describe() if calibration else uncalibrated
        )
        self._lesion_index, self._histology_index = _output_order(model)

    def certainty(self, scores: np.ndarray) -> np.ndarray:
        """The Certainty of Finding of raw lesion scores: calibrated when the model has a
        calibration, else the scores themselves."""
        scores = np.asarray(scores, dtype=np.float64)
        return scores if self.calibration is None else self.calibration.probability(scores)

    @classmethod
    def load(cls, path: Path) -> LesionClassifier:
        """Load a .keras file once (compile=False); errors name the file and what to do."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"model file {path} does not exist; set [classifier] model in config.ini to a "
                f".keras file, or leave it empty for the bundled model {BUNDLED_MODEL}"
            )
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"model file {path} is not a Keras 3 .keras archive (not a zip file); "
                "re-save the model with model.save('name.keras') or use the bundled model"
            )
        _configure_tensorflow_gpus()
        import keras

        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as exc:
            raise ValueError(
                f"model file {path} could not be loaded by Keras {keras.__version__} "
                f"({type(exc).__name__}: {exc}); the file is corrupt or was not written by "
                "Keras 3: retrain it with `lungnode train` or use the bundled model"
            ) from exc
        meta = read_model_metadata(path)
        histology = real_histology(meta, path)
        info = ModelInfo(
            name=str(meta.get("name", model.name)),
            version=str(meta.get("version", "unknown")),
            sha256=sha256_of(path),
            trained_on=str(meta.get("trained_on", "unknown (no lungnode metadata in the file)")),
            clinical_use=bool(meta.get("clinical_use", False)),
            histology_real_accuracy=histology["histology_real_accuracy"],
            histology_real_baseline=histology["histology_real_baseline"],
        )
        calibration, kept = read_sidecar(path, info.sha256)
        if calibration is None and kept is None:
            log.info(
                "model %s has no calibration beside it (%s): a finding's certainty is the raw "
                "lesion score",
                path,
                calibration_path(path).name,
            )
        classifier = cls(model, info, calibration, kept or UNCALIBRATED_CERTAINTY)
        classifier._check_shapes(path)
        return classifier

    def _check_shapes(self, path: Path) -> None:
        in_shape = tuple(self.model.inputs[0].shape[1:])
        if in_shape != PATCH_SHAPE:
            raise ValueError(
                f"model file {path} expects input {in_shape}, but patches are {PATCH_SHAPE}; "
                "use a model trained by this version of lungnode"
            )

    def predict(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (n,) lesion probabilities and (n, 4) histology probabilities (HISTOLOGY_CLASSES
        order) for float32 patches of shape (n, *PATCH_SHAPE); runs in batches of BATCH_SIZE."""
        patches = np.asarray(patches, dtype=np.float32)
        if patches.ndim != 4 or tuple(patches.shape[1:]) != PATCH_SHAPE:
            raise ValueError(
                f"patches must have shape (n, {', '.join(map(str, PATCH_SHAPE))}), "
                f"got {patches.shape}"
            )
        if not np.all(np.isfinite(patches)):
            raise ValueError("patches contain NaN or infinite values; check the CT/SUV volumes")
        n = patches.shape[0]
        lesion = np.zeros((n,), dtype=np.float32)
        histology = np.zeros((n, len(HISTOLOGY_CLASSES)), dtype=np.float32)
        batch = np.zeros((BATCH_SIZE, *PATCH_SHAPE), dtype=np.float32)
        for start in range(0, n, BATCH_SIZE):
            stop = min(start + BATCH_SIZE, n)
            batch[: stop - start] = patches[start:stop]
            batch[stop - start :] = 0.0
            outputs = self.model.predict_on_batch(batch)
            lesion_out, histology_out = _split_outputs(
                outputs, self._lesion_index, self._histology_index
            )
            lesion[start:stop] = np.asarray(lesion_out).reshape(BATCH_SIZE, -1)[: stop - start, 0]
            histology[start:stop] = np.asarray(histology_out)[: stop - start]
        return lesion, histology


def _output_order(model: Any) -> tuple[str | int, str | int]:
    """Find the lesion and histology outputs by name (dict outputs) or by position (list)."""
    names = list(getattr(model, "output_names", None) or [])
    if "lesion" in names and "histology" in names:
        return "lesion", "histology"
    raise ValueError(
        f"model {model.name} has outputs {names}; expected two named outputs 'lesion' and "
        "'histology' (see classifier.model.network.build_model)"
    )


def _split_outputs(
    outputs: Any, lesion_key: str | int, histology_key: str | int
) -> tuple[Any, Any]:
    if isinstance(outputs, dict):
        return outputs[lesion_key], outputs[histology_key]
    raise TypeError(f"model returned {type(outputs).__name__}; expected a dict of named outputs")
