"""Heads on frozen features, trained with cross-entropy on soft labels or Burns et al.'s aux loss.

Two-logit heads as in Burns et al.: `linear` (a linear probe) and `mlp` (one hidden layer; our CPU
stand-in for fine-tuning the whole model). Inputs are standardised with the training set's mean and
standard deviation. Adam at a constant learning rate, so evaluating after epoch e of one run equals a
separate run of e epochs (the epochs ablation uses that).

Auxiliary confidence loss (Burns et al. 2023, eq. in §4.3.2; their public `logconf_loss_fn`):

    L = (1−α)·CE(f(x), f_w(x)) + α·CE(f(x), f̂_t(x))

f_w = the weak soft labels, f̂_t = the student's own predictions hardened at an adaptive threshold t,
chosen per batch so that the fraction of examples hardened to class 1 equals the weak labels' mean
for class 1 (t = quantile of p(class 0) at that mean). f̂_t is treated as a constant (no gradient).
α rises linearly from 0 to α_max over the first `warmup_frac` of the optimiser steps. As CE is
linear in its target, L = CE(f, (1−α)·f_w + α·f̂_t), which is how it is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from w2s.config.classification import AuxLossConfig, HeadConfig


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of −Σ_c target_c · log softmax(logits)_c (targets are distributions)."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def two_class(p1: torch.Tensor) -> torch.Tensor:
    return torch.stack([1.0 - p1, p1], dim=-1)


def hardened_targets(logits: torch.Tensor, weak_p1: torch.Tensor) -> torch.Tensor:
    """f̂_t: the student's predictions thresholded so that the class-1 share matches the weak labels'."""
    p0 = torch.softmax(logits.detach(), dim=-1)[:, 0]
    threshold = torch.quantile(p0, weak_p1.mean().clamp(0.0, 1.0))
    hard1 = (p0 < threshold).to(logits.dtype)
    return two_class(hard1)


def alpha_at(step_frac: float, cfg: AuxLossConfig) -> float:
    if cfg.warmup_frac <= 0:
        return cfg.alpha_max
    return cfg.alpha_max * min(1.0, step_frac / cfg.warmup_frac)


def aux_confidence_loss(logits: torch.Tensor, weak_p1: torch.Tensor, alpha: float, hardened: torch.Tensor | None = None) -> torch.Tensor:
    if hardened is None:
        hardened = hardened_targets(logits, weak_p1)
    target = (1.0 - alpha) * two_class(weak_p1) + alpha * hardened
    return soft_ce(logits, target)


class Head(torch.nn.Module):
    def __init__(self, dim: int, cfg: HeadConfig):
        super().__init__()
        if cfg.kind == "linear":
            self.body: torch.nn.Module = torch.nn.Identity()
            self.out = torch.nn.Linear(dim, 2)
        else:
            self.body = torch.nn.Sequential(torch.nn.Linear(dim, cfg.hidden), torch.nn.GELU())
            self.out = torch.nn.Linear(cfg.hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


@dataclass
class FittedHead:
    head: Head
    mean: np.ndarray
    std: np.ndarray

    def _inputs(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """p(class 1) per row."""
        self.head.eval()
        return torch.softmax(self.head(self._inputs(x)), dim=-1)[:, 1].numpy().astype(np.float64)

    @torch.no_grad()
    def hidden(self, x: np.ndarray) -> np.ndarray:
        """The head's hidden representation (ft(weak) + lp(gt) probes it)."""
        self.head.eval()
        return self.head.body(self._inputs(x)).numpy()


EpochHook = Callable[[int, FittedHead], None]


@contextmanager
def single_thread() -> Iterator[None]:
    """Small heads run ~7× faster on one intra-op thread than on two busy cores (measured: 260 steps
    in 13 s vs 89 s wall): the per-op work is too small to split."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_head(x: np.ndarray, target_p1: np.ndarray, cfg: HeadConfig, seed: int, aux: AuxLossConfig | None = None,
             epochs: int | None = None, on_epoch: EpochHook | None = None) -> FittedHead:
    """Trains a head on soft labels p(class 1); with `aux`, on the aux confidence loss instead of CE."""
    with single_thread():
        return _fit(x, target_p1, cfg, seed, aux, epochs, on_epoch)


def _fit(x, target_p1, cfg: HeadConfig, seed: int, aux: AuxLossConfig | None, epochs: int | None, on_epoch: EpochHook | None) -> FittedHead:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mean = x.mean(0, keepdims=True)
    std = x.std(0, keepdims=True) + 1e-6
    fitted = FittedHead(Head(x.shape[1], cfg), mean, std)
    inputs = fitted._inputs(x)
    targets = torch.as_tensor(np.asarray(target_p1, dtype=np.float32))
    optimiser = torch.optim.Adam(fitted.head.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    n_epochs = epochs or cfg.epochs
    per_epoch = -(-len(x) // cfg.batch_size)
    total, step = n_epochs * per_epoch, 0
    for epoch in range(1, n_epochs + 1):
        fitted.head.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            logits = fitted.head(inputs[idx])
            if aux is None:
                loss = soft_ce(logits, two_class(targets[idx]))
            else:
                loss = aux_confidence_loss(logits, targets[idx], alpha_at(step / total, aux))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
        if on_epoch is not None:
            on_epoch(epoch, fitted)
    return fitted
