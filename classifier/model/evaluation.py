"""Evaluation report of a lesion/histology model: patient-level histology metrics with bootstrap
confidence intervals, patch-level lesion detection AUC, and the PNGs and JSON that show them.

Histology is scored per patient (mean of the histology probabilities of the patient's lesion
patches, then argmax), because the label is a patient's diagnosis, not a slice's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classifier.types import HISTOLOGY_CLASSES

BOOTSTRAP_ROUNDS = 1000
# Always answering adenocarcinoma on Lung-PET-CT-Dx (patients: A 251, G 61, B 38, E 5).
COLLECTION_MAJORITY_ACCURACY = 251 / 355
METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
ROC_PNG = "roc_histology.png"
CURVES_PNG = "training_curves.png"


@dataclass(frozen=True)
class PatchPredictions:
    """Model outputs on a set of patches, with the patient and truth of each patch."""

    patient_ids: np.ndarray  # (n,) str
    is_lesion: np.ndarray  # (n,) bool, truth
    labels: np.ndarray  # (n,) str: the patient's histology class
    lesion_prob: np.ndarray  # (n,)
    histology_prob: np.ndarray  # (n, 4) in HISTOLOGY_CLASSES order
    kinds: np.ndarray | None = None  # (n,) str: patch_set.PATCH_KINDS, when known


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold (ties handled together)."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    n_pos, n_neg = y.sum(), (~y).sum()
    tpr = np.r_[0.0, tps / max(n_pos, 1)]
    fpr = np.r_[0.0, fps / max(n_neg, 1)]
    return fpr, tpr


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None without both classes."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion_matrix(truth: Sequence[str], predicted: Sequence[str]) -> np.ndarray:
    """Counts [true class, predicted class] in HISTOLOGY_CLASSES order."""
    index = {c: i for i, c in enumerate(HISTOLOGY_CLASSES)}
    cm = np.zeros((len(HISTOLOGY_CLASSES),) * 2, dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        cm[index[t], index[p]] += 1
    return cm


def balanced_accuracy(cm: np.ndarray) -> float | None:
    """Mean recall over the classes that occur in the truth."""
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return None
    return float(np.mean(np.diag(cm)[present] / support[present]))


def macro_f1(cm: np.ndarray) -> float | None:
    """Mean F1 over the classes that occur in the truth or the predictions."""
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    if not present.any():
        return None
    f1 = np.where(support + predicted > 0, 2 * tp / np.maximum(support + predicted, 1), 0.0)
    return float(np.mean(f1[present]))


def patient_level(pred: PatchPredictions) -> dict[str, Any]:
    """Aggregate the lesion patches of each patient by mean histology probability."""
    ids, truth, probs = [], [], []
    for pid in sorted(set(pred.patient_ids[pred.is_lesion].tolist())):
        rows = (pred.patient_ids == pid) & pred.is_lesion
        ids.append(pid)
        truth.append(str(pred.labels[rows][0]))
        probs.append(pred.histology_prob[rows].mean(axis=0))
    probs_arr = np.asarray(probs, dtype=np.float64).reshape(-1, len(HISTOLOGY_CLASSES))
    predicted = [HISTOLOGY_CLASSES[i] for i in probs_arr.argmax(axis=1)] if ids else []
    return {"patient_ids": ids, "truth": truth, "predicted": predicted, "probabilities": probs_arr}


def by_kind(pred: PatchPredictions) -> dict[str, Any] | None:
    """Lesion probability per patch kind, the AUC of lesion patches against the detector's
    false candidates alone, and how many of those candidates would be reported (p >= 0.5)."""
    if pred.kinds is None:
        return None
    kinds = np.asarray(pred.kinds, dtype=str)
    rows = {}
    for kind in sorted(set(kinds.tolist())):
        p = pred.lesion_prob[kinds == kind]
        rows[kind] = {
            "patches": int(p.size),
            "mean_probability": float(p.mean()),
            "fraction_at_0.5": float(np.mean(p >= 0.5)),
        }
    hard = pred.is_lesion | (kinds == "candidate")
    candidates = kinds == "candidate"
    reported = int(np.count_nonzero(pred.lesion_prob[candidates] >= 0.5))
    n_patients = len(set(pred.patient_ids.tolist()))
    return {
        "kinds": rows,
        "auc_lesion_vs_candidate": roc_auc(pred.is_lesion[hard], pred.lesion_prob[hard]),
        "candidates": int(np.count_nonzero(candidates)),
        "candidate_reported": reported,
        "candidate_reported_per_patient": reported / n_patients if n_patients else None,
    }


def _bootstrap(
    n: int, statistic: Callable[[np.ndarray], float | None], seed: int
) -> tuple[float, float] | None:
    """Percentile 95% interval of statistic(indices) over resamples of range(n)."""
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(BOOTSTRAP_ROUNDS):
        value = statistic(rng.integers(0, n, size=n))
        if value is not None:
            values.append(value)
    if len(values) < BOOTSTRAP_ROUNDS // 2:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def compute_metrics(pred: PatchPredictions, seed: int = 0) -> dict[str, Any]:
    """Every number of the report, as a JSON-ready dict."""
    patients = patient_level(pred)
    truth, predicted = patients["truth"], patients["predicted"]
    cm = confusion_matrix(truth, predicted)
    t_arr, p_arr = np.asarray(truth), np.asarray(predicted)

    def cm_of(idx: np.ndarray) -> np.ndarray:
        return confusion_matrix(t_arr[idx], p_arr[idx])

    unique_patients = np.asarray(sorted(set(pred.patient_ids.tolist())))
    rows_of = {pid: np.nonzero(pred.patient_ids == pid)[0] for pid in unique_patients}

    def auc_of(idx: np.ndarray) -> float | None:
        rows = np.concatenate([rows_of[p] for p in unique_patients[idx]])
        return roc_auc(pred.is_lesion[rows], pred.lesion_prob[rows])

    per_class_auc = {}
    for k, c in enumerate(HISTOLOGY_CLASSES):
        per_class_auc[c] = (
            roc_auc(t_arr == c, patients["probabilities"][:, k]) if len(truth) else None
        )
    counts = {c: int((t_arr == c).sum()) for c in HISTOLOGY_CLASSES}
    return {
        "patients": len(unique_patients),
        "patients_with_lesion_patches": len(truth),
        "patches": len(pred.patient_ids),
        "lesion_patches": int(pred.is_lesion.sum()),
        "class_counts_patients": counts,
        "histology": {
            "aggregation": "per patient: mean of lesion-patch histology probabilities, argmax",
            "accuracy": float(np.mean(t_arr == p_arr)) if len(truth) else None,
            "balanced_accuracy": balanced_accuracy(cm),
            "balanced_accuracy_ci95": _bootstrap(
                len(truth), lambda i: balanced_accuracy(cm_of(i)), seed
            ),
            "macro_f1": macro_f1(cm),
            "macro_f1_ci95": _bootstrap(len(truth), lambda i: macro_f1(cm_of(i)), seed + 1),
            "majority_class_accuracy": (max(counts.values()) / len(truth)) if len(truth) else None,
            "one_vs_rest_auc": per_class_auc,
            "confusion_matrix": {
                "classes": list(HISTOLOGY_CLASSES),
                "rows_true_cols_predicted": cm.tolist(),
            },
            "per_patient": [
                {
                    "patient_id": pid,
                    "truth": t,
                    "predicted": p,
                    "probabilities": dict(zip(HISTOLOGY_CLASSES, map(float, pr), strict=True)),
                }
                for pid, t, p, pr in zip(
                    patients["patient_ids"],
                    truth,
                    predicted,
                    patients["probabilities"],
                    strict=True,
                )
            ],
        },
        "lesion_detection": {
            "unit": "patch (lesion box centre vs detector candidates away from boxes and random"
            " lung locations)",
            "auc": roc_auc(pred.is_lesion, pred.lesion_prob),
            "auc_ci95": _bootstrap(len(unique_patients), auc_of, seed + 2),
            "accuracy_at_0.5": float(np.mean((pred.lesion_prob >= 0.5) == pred.is_lesion))
            if len(pred.is_lesion)
            else None,
            "by_kind": by_kind(pred),
        },
        "bootstrap": {
            "rounds": BOOTSTRAP_ROUNDS,
            "unit": "patient",
            "seed": seed,
            "interval": "percentile 2.5-97.5",
        },
    }


def real_histology_block(metrics: Mapping[str, Any], scope: str) -> dict[str, Any]:
    """The model metadata's "histology_real_patients" from an evaluation on real patients
    (`compute_metrics`): per-patient accuracy and the majority-class baseline it must beat, the
    larger of the evaluated patients' own and the collection's (COLLECTION_MAJORITY_ACCURACY),
    so a split with few adenocarcinomas cannot lower the bar."""
    histology = metrics["histology"]
    accuracy = histology.get("accuracy")
    if accuracy is None:
        raise ValueError(
            f"no per-patient histology accuracy in the evaluation ({scope}): it had no lesion "
            "patches; evaluate on real patients with annotated tumours"
        )
    own = histology.get("majority_class_accuracy") or 0.0
    return {
        "accuracy": float(accuracy),
        "majority_baseline": float(max(own, COLLECTION_MAJORITY_ACCURACY)),
        "patients": int(metrics["patients_with_lesion_patches"]),
        "scope": scope,
    }


def _plot_confusion(cm: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=100)
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
    ticks = range(len(HISTOLOGY_CLASSES))
    ax.set_xticks(ticks, HISTOLOGY_CLASSES)
    ax.set_yticks(ticks, HISTOLOGY_CLASSES)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (patient)")
    threshold = cm.max() / 2 if cm.max() else 1
    for i in ticks:
        for j in ticks:
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > threshold else "black",
            )
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_roc(pred: PatchPredictions, metrics: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    patients = patient_level(pred)
    truth = np.asarray(patients["truth"])
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.2), dpi=100)
    ax = axes[0]
    for k, c in enumerate(HISTOLOGY_CLASSES):
        auc = metrics["histology"]["one_vs_rest_auc"][c]
        if auc is None:
            ax.plot([], [], label=f"{c}: n/a (needs both classes)")
            continue
        fpr, tpr = roc_curve(truth == c, patients["probabilities"][:, k])
        ax.step(fpr, tpr, where="post", label=f"{c} vs rest: AUC {auc:.2f}")
    ax.set_title("Histology, per patient (one vs rest)", fontsize=10)
    ax = axes[1]
    auc = metrics["lesion_detection"]["auc"]
    if auc is not None:
        fpr, tpr = roc_curve(pred.is_lesion, pred.lesion_prob)
        ax.step(fpr, tpr, where="post", color="C3", label=f"lesion vs background: AUC {auc:.3f}")
    hard = (metrics["lesion_detection"].get("by_kind") or {}).get("auc_lesion_vs_candidate")
    if hard is not None and pred.kinds is not None:
        rows = pred.is_lesion | (pred.kinds == "candidate")
        fpr, tpr = roc_curve(pred.is_lesion[rows], pred.lesion_prob[rows])
        ax.step(
            fpr,
            tpr,
            where="post",
            color="C4",
            ls=":",
            label=f"vs detector candidates: AUC {hard:.3f}",
        )
    ax.set_title("Lesion detection, per patch", fontsize=10)
    for ax in axes:
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_history(history: Mapping[str, Sequence[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.8), dpi=100)
    for key, ax in (("loss", axes[0]), ("accuracy", axes[1])):
        for name in sorted(history):
            if name.endswith(key) and history[name]:
                epochs = np.arange(1, len(history[name]) + 1)
                ax.plot(
                    epochs,
                    history[name],
                    marker="o",
                    ms=3,
                    ls="--" if name.startswith("val_") else "-",
                    label=name,
                )
        ax.set_xlabel("epoch")
        ax.set_title(
            key
            + (" (histology: class-weighted, lesion patches only)" if key == "accuracy" else ""),
            fontsize=9,
        )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    pred: PatchPredictions,
    report_dir: Path,
    *,
    title: str,
    history: Mapping[str, Sequence[float]] | None = None,
    extra: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute the metrics and write metrics.json and the PNGs into report_dir; return metrics."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(pred, seed=seed)
    metrics.update(dict(extra or {}))
    cm = np.asarray(metrics["histology"]["confusion_matrix"]["rows_true_cols_predicted"])
    _plot_confusion(
        cm,
        report_dir / CONFUSION_PNG,
        f"{title}\nper-patient histology ({metrics['patients_with_lesion_patches']} patients)",
    )
    _plot_roc(pred, metrics, report_dir / ROC_PNG)
    files = [CONFUSION_PNG, ROC_PNG]
    if history:
        _plot_history(history, report_dir / CURVES_PNG)
        files.append(CURVES_PNG)
        metrics["training_history"] = {k: [float(v) for v in vs] for k, vs in history.items()}
    metrics["files"] = files + [METRICS_FILE]
    (report_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics
