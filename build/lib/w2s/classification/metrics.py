"""Metrics of the classification experiments. `p` is always the predicted probability of class 1.

* ECE (Guo et al. 2017), equal-width bins over the confidence max(p, 1−p) ∈ [0.5, 1] binned on
  [0, 1] (the convention of most implementations; bins below 0.5 stay empty):
  ECE = Σ_b |B_b|/n · |acc(B_b) − conf(B_b)|. papers/001 uses the marginal calibration error, which
  for binary classification is twice this ECE (its §4.2); we report ECE.
* PGR (Burns et al.) = (acc_w2s − acc_weak)/(acc_ceiling − acc_weak).
* Agreement with the weak model's errors: among test examples the weak model gets wrong, the
  fraction where the student predicts the same (wrong) label (Burns et al., "student-supervisor
  agreement" restricted to supervisor mistakes).
"""

from __future__ import annotations

import math

import numpy as np


def predictions(p: np.ndarray) -> np.ndarray:
    return (np.asarray(p) >= 0.5).astype(np.int64)


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predictions(p) == np.asarray(y)))


def ece(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y)
    confidence = np.maximum(p, 1.0 - p)
    correct = (predictions(p) == y).astype(np.float64)
    # bin b holds confidences in (b/n, (b+1)/n]; confidence 0 cannot occur (≥ 0.5)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        member = bins == b
        if member.any():
            total += member.mean() * abs(correct[member].mean() - confidence[member].mean())
    return float(total)


def pgr(acc_weak: float, acc_w2s: float, acc_ceiling: float) -> float:
    gap = acc_ceiling - acc_weak
    if abs(gap) < 1e-12:
        return math.nan  # no gap to recover: PGR is undefined
    return (acc_w2s - acc_weak) / gap


def weak_error_agreement(p_student: np.ndarray, p_weak: np.ndarray, y: np.ndarray) -> float:
    weak_pred, y = predictions(p_weak), np.asarray(y)
    wrong = weak_pred != y
    if not wrong.any():
        return math.nan
    return float(np.mean(predictions(p_student)[wrong] == weak_pred[wrong]))


def summary(p: np.ndarray, y: np.ndarray, n_bins: int) -> dict[str, float]:
    return {"acc": accuracy(p, y), "ece": ece(p, y, n_bins)}
