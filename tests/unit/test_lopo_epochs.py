"""The fine-tune's length is chosen on held-out rows: tumours found first, separation last."""

from __future__ import annotations

from typing import Any

import numpy as np

from classifier.model.evaluation import roc_auc
from classifier.model.lopo import _epoch_objective


def _trial(tp: list[int], fp: list[int], cpm: float, auc: float) -> dict[str, Any]:
    pairs = enumerate(zip(tp, fp, strict=True))
    counts = {f"P{i}": {"tp": t, "fp": f, "tumours": 1} for i, (t, f) in pairs}
    return {"counts_at_0.5": counts, "cpm": cpm, "patch_auc": auc}


def test_the_held_out_separation_counts_pairs_and_ties() -> None:
    # lopo's patch AUC per fold: evaluation.roc_auc (Mann-Whitney, ties half)
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.1, 0.2])) == 1.0
    assert roc_auc(np.array([1, 0]), np.array([0.1, 0.9])) == 0.0
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([0]), np.array([0.5])) is None


def test_a_held_out_tumour_lost_outweighs_any_separation() -> None:
    short = _trial([1, 1, 1], [0, 1, 1], cpm=1.0, auc=0.70)
    long = _trial([1, 0, 1], [0, 0, 0], cpm=0.9, auc=0.95)
    tried = {6: short, 20: long}
    assert max(tried, key=lambda e: _epoch_objective(tried[e], e)) == 6


def test_separation_decides_when_the_rows_tie_and_then_the_shorter_fine_tune() -> None:
    a = _trial([1, 1], [0, 1], cpm=1.0, auc=0.80)
    b = _trial([1, 1], [0, 1], cpm=1.0, auc=0.90)
    tried = {6: a, 14: b, 20: b}
    assert max(tried, key=lambda e: _epoch_objective(tried[e], e)) == 14
    fewer_fp = _trial([1, 1], [0, 0], cpm=1.0, auc=0.60)
    tried = {6: a, 10: fewer_fp}
    assert max(tried, key=lambda e: _epoch_objective(tried[e], e)) == 10
