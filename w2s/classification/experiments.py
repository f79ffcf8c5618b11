"""The experiments of Burns et al. (papers/002) and the epochs ablation (papers/001 §4.3) on features.

Protocol (Burns et al. §3): the weak model is trained on the ground truth of half A; its soft labels
on half B train the strong student (w2s); the strong ceiling is the strong model trained on B's
ground truth. Every accuracy/ECE is on the held-out test split. Student metrics are means over
`evaluation.seeds` head-training seeds (the weak teacher is one fixed model, seed `run.seed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from w2s.config.classification import AuxLossConfig, HeadConfig
from w2s.classification.heads import fit_head
from w2s.classification.metrics import accuracy, ece, pgr, weak_error_agreement


@dataclass(frozen=True)
class Views:
    """One model's features on the three splits, with the ground truth."""

    a: np.ndarray
    b: np.ndarray
    test: np.ndarray
    y_a: np.ndarray
    y_b: np.ndarray
    y_test: np.ndarray

    @staticmethod
    def of(features: np.ndarray, labels: np.ndarray, split: np.ndarray) -> Views:
        pick = lambda s: features[split == s]  # noqa: E731
        lab = lambda s: labels[split == s]  # noqa: E731
        return Views(pick("weak_train"), pick("w2s_train"), pick("test"), lab("weak_train"), lab("w2s_train"), lab("test"))


def mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def train_teacher(view: Views, head: HeadConfig, seed: int) -> dict[str, np.ndarray]:
    """Weak model on A's ground truth; its soft labels on B and its test predictions."""
    fitted = fit_head(view.a, view.y_a.astype(np.float64), head, seed)
    return {"p_b": fitted.predict(view.b), "p_test": fitted.predict(view.test)}


def ceiling(view: Views, head: HeadConfig, seeds: list[int], n_bins: int) -> tuple[dict[str, float], np.ndarray]:
    rows, first = [], None
    for seed in seeds:
        p = fit_head(view.b, view.y_b.astype(np.float64), head, seed).predict(view.test)
        first = p if first is None else first
        rows.append({"acc": accuracy(p, view.y_test), "ece": ece(p, view.y_test, n_bins)})
    return mean_rows(rows), first


def student_metrics(p: np.ndarray, y: np.ndarray, p_weak_test: np.ndarray, acc_weak: float, acc_ceiling: float, n_bins: int) -> dict[str, float]:
    acc = accuracy(p, y)
    return {"acc": acc, "ece": ece(p, y, n_bins), "pgr": pgr(acc_weak, acc, acc_ceiling),
            "weak_error_agreement": weak_error_agreement(p, p_weak_test, y)}


def w2s(view: Views, labels_b: np.ndarray, p_weak_test: np.ndarray, acc_weak: float, acc_ceiling: float,
        head: HeadConfig, seeds: list[int], n_bins: int, aux: AuxLossConfig | None = None) -> tuple[dict[str, float], np.ndarray]:
    """The strong student on the weak soft labels of B, with plain CE or (given `aux`) the aux loss."""
    rows, first = [], None
    for seed in seeds:
        p = fit_head(view.b, labels_b, head, seed, aux=aux).predict(view.test)
        first = p if first is None else first
        rows.append(student_metrics(p, view.y_test, p_weak_test, acc_weak, acc_ceiling, n_bins))
    return mean_rows(rows), first


def bootstrap(chain: list[Views], labels_b: np.ndarray, p_weak_test: np.ndarray, acc_weak: float, acc_ceiling: float,
              head: HeadConfig, seed: int, n_bins: int) -> list[dict[str, float]]:
    """weak → chain[0] → … → chain[-1] (the strong model): each student learns B from the soft labels
    its predecessor gives B, and labels B for its successor. Burns et al. label with the previous
    student too; with one split B the student labels the inputs it was trained on (see docs)."""
    steps, labels = [], labels_b
    for view in chain:
        fitted = fit_head(view.b, labels, head, seed)
        p = fitted.predict(view.test)
        steps.append(student_metrics(p, view.y_test, p_weak_test, acc_weak, acc_ceiling, n_bins))
        labels = fitted.predict(view.b)
    return steps


def probes(view: Views, labels_b: np.ndarray, lp: HeadConfig, ft: HeadConfig, seeds: list[int]) -> dict[str, float]:
    """Burns et al. fig. 11: lp(weak), lp(gt), ft(weak), ft(gt), ft(weak)+lp(gt), test accuracy."""
    gt = view.y_b.astype(np.float64)
    rows = []
    for seed in seeds:
        ft_weak = fit_head(view.b, labels_b, ft, seed)
        probe_on_ft = fit_head(ft_weak.hidden(view.b), gt, lp, seed)
        rows.append({
            "lp_weak": accuracy(fit_head(view.b, labels_b, lp, seed).predict(view.test), view.y_test),
            "lp_gt": accuracy(fit_head(view.b, gt, lp, seed).predict(view.test), view.y_test),
            "ft_weak": accuracy(ft_weak.predict(view.test), view.y_test),
            "ft_gt": accuracy(fit_head(view.b, gt, ft, seed).predict(view.test), view.y_test),
            "ft_weak_lp_gt": accuracy(probe_on_ft.predict(ft_weak.hidden(view.test)), view.y_test),
        })
    return mean_rows(rows)


def epochs_ablation(view: Views, labels_b: np.ndarray, p_weak_test: np.ndarray, acc_weak: float, acc_ceiling: float,
                    head: HeadConfig, epochs: list[int], seeds: list[int], n_bins: int) -> list[dict[str, float]]:
    """papers/001 §4.3: w2s student accuracy and ECE vs training epochs (one run per seed, evaluated
    at each listed epoch: constant learning rate, so equal to separate runs of that length)."""
    wanted = set(epochs)
    per_epoch: dict[int, list[dict[str, float]]] = {e: [] for e in epochs}
    for seed in seeds:
        def hook(epoch: int, fitted, seed=seed) -> None:
            if epoch in wanted:
                p = fitted.predict(view.test)
                per_epoch[epoch].append(student_metrics(p, view.y_test, p_weak_test, acc_weak, acc_ceiling, n_bins))
        fit_head(view.b, labels_b, head, seed, epochs=max(epochs), on_epoch=hook)
    return [{"epochs": float(e), **mean_rows(per_epoch[e])} for e in sorted(epochs)]
