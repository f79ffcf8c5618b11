"""Representations (ReLU MLPs), the three losses on model outputs, and linear-head fitting.

Everything is float64 torch on CPU, seeded through named generators so a component's randomness does
not depend on which settings run before it.

Output distributions (seed paper 001, "output distribution divergence"): a model's outputs on a sample
x_1..x_n are normalised over the sample into p_f(x_i) = exp f(x_i) / Σ_j exp f(x_j). The paper
normalises outputs over the whole data domain; we use softmax over the evaluation sample because a
linear head can output negative numbers (docs/theory.md lists this deviation).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

DTYPE = torch.float64
NOISE = 1e-13  # float64 resolution of an objective that sums a thousand terms of size ~ log n


def generator(seed: int, *tag: object) -> torch.Generator:
    """A generator for one named component: the same (seed, tag) always gives the same stream."""
    return torch.Generator().manual_seed(zlib.crc32(repr((seed, *tag)).encode()))


@dataclass
class MLP:
    """`layers` linear maps with ReLU between them (none after the last): R^in → R^width."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = x @ w.T + b
            if i < len(self.weights) - 1:
                x = torch.relu(x)
        return x

    def parameters(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases]

    def detached(self) -> MLP:
        return MLP([w.detach().clone() for w in self.weights], [b.detach().clone() for b in self.biases])


def random_mlp(in_dim: int, width: int, layers: int, gen: torch.Generator) -> MLP:
    """He-normal weights (keeps the ReLU signal's scale through depth) and small random biases."""
    weights, biases = [], []
    fan_in = in_dim
    for _ in range(layers):
        weights.append(torch.randn(width, fan_in, generator=gen, dtype=DTYPE) * (2.0 / fan_in) ** 0.5)
        biases.append(torch.randn(width, generator=gen, dtype=DTYPE) * 0.1)
        fan_in = width
    return MLP(weights, biases)


def ground_truth(in_dim: int, width: int, layers: int, gen: torch.Generator, reference: torch.Tensor) -> MLP:
    """A random deep MLP rescaled so that E‖h*(x)‖²/width = 1 on `reference`: tasks θ ~ N(0, I/width)
    then give outputs of unit scale, so the softmax output distributions are neither flat nor one-hot."""
    mlp = random_mlp(in_dim, width, layers, gen)
    scale = mlp(reference).pow(2).mean().sqrt()
    mlp.weights[-1] = mlp.weights[-1] / scale
    mlp.biases[-1] = mlp.biases[-1] / scale
    return mlp


def perturb(mlp: MLP, std: float, gen: torch.Generator) -> MLP:
    """Independent N(0, std²) noise on every parameter (the paper's 'perturbation' representations)."""
    noisy = lambda t: t + std * torch.randn(t.shape, generator=gen, dtype=DTYPE)  # noqa: E731
    return MLP([noisy(w) for w in mlp.weights], [noisy(b) for b in mlp.biases])


# ------------------------------------------------------------------------------------------ losses
def squared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over the sample (last axis); one value per task."""
    return (a - b).pow(2).mean(dim=-1)


def output_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(p_a ‖ p_b) between the output distributions of outputs a and b over the sample (last axis)."""
    log_a, log_b = torch.log_softmax(a, dim=-1), torch.log_softmax(b, dim=-1)
    return (log_a.exp() * (log_a - log_b)).sum(dim=-1)


def objective(loss: str, label: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
    """What fine-tuning (and pre-training) minimises: the loss of `model` outputs against `label` outputs."""
    if loss == "squared":
        return squared(label, model)
    if loss == "forward_kl":
        return output_kl(label, model)
    if loss == "reverse_kl":
        return output_kl(model, label)
    raise ValueError(f"unknown loss {loss!r}")


def error(loss: str, truth: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
    """A model's error against the ground truth, in the direction the theorems bound it: the training
    objective with its arguments swapped (the paper's 'reverse version'); squared loss is symmetric."""
    return objective(loss, model, truth)


# ------------------------------------------------------------------------------------------- heads
def fit_heads(loss: str, features: torch.Tensor, labels: torch.Tensor, max_iter: int) -> torch.Tensor:
    """Linear heads θ (tasks × width) minimising objective(loss, labels, θ·features) for every task.

    features: (n, width); labels: (tasks, n). Squared loss is solved exactly (least squares, minimum
    norm when features are rank deficient). The KL losses are solved per task by damped Newton with
    backtracking, all tasks at once (analytic Hessians, width × width per task): first-order methods
    stop short of the optimum by more than the misfit-vs-gain identities can tolerate."""
    if loss == "squared":
        return torch.linalg.lstsq(features, labels.T, driver="gelsd").solution.T
    # Deep ReLU representations are rank deficient (dead units): Newton runs on whitened coordinates
    # of the column space, where the Hessian is well conditioned, and maps back to the minimum-norm θ.
    # Centring removes the constant direction, to which softmax over the sample is blind (a zero
    # Hessian eigenvalue); it shifts every logit of a task by one constant, so no distribution changes.
    u, sv, vh = torch.linalg.svd(features - features.mean(dim=0), full_matrices=False)
    kept = sv > 1e-10 * sv[0]
    root_n = features.shape[0] ** 0.5
    phi = _newton_heads(loss, u[:, kept] * root_n, labels, max_iter)
    return phi @ (vh[kept].T * (root_n / sv[kept])).T


def _newton_heads(loss: str, features: torch.Tensor, labels: torch.Tensor, max_iter: int) -> torch.Tensor:
    theta = torch.zeros(labels.shape[0], features.shape[1], dtype=DTYPE)
    value = objective(loss, labels, theta @ features.T)
    done = torch.zeros(labels.shape[0], dtype=torch.bool)
    for _ in range(max_iter):
        g, h = _kl_grad_hessian(loss, features, labels, theta)
        # |eigenvalues| (saddle-free Newton): a descent step even where reverse KL is not convex in θ
        eig, vec = torch.linalg.eigh(h)
        floor = 1e-9 * eig.abs().amax(dim=1, keepdim=True).clamp(min=1e-300)
        coef = (vec.transpose(1, 2) @ g[..., None]).squeeze(-1) / eig.abs().clamp(min=floor)
        step = -(vec @ coef[..., None]).squeeze(-1)
        # Newton decrement (the predicted decrease): iterate far below the objective's float resolution,
        # since gain = misfit identities are first order in the gradient left at the strong head
        done |= -(g * step).sum(dim=-1) <= 1e-26
        if done.all():
            break
        size = torch.ones(theta.shape[0], 1, dtype=DTYPE)
        for _ in range(30):  # per-task backtracking; a rise within rounding (sums of n terms ~ log n) is no rise
            trial = objective(loss, labels, (theta + size * step) @ features.T)
            worse = ~done & ~(trial <= value + NOISE)
            if not worse.any():
                break
            size = torch.where(worse[:, None], size / 2, size)
        keep = ~done & (trial <= value + NOISE)
        done |= ~keep  # no step is accepted: at the optimum up to rounding
        theta = torch.where(keep[:, None], theta + size * step, theta)
        value = torch.where(keep, trial, value)
    return theta


def _kl_grad_hessian(loss: str, features: torch.Tensor, labels: torch.Tensor, theta: torch.Tensor):
    """Per-task gradient (tasks × d) and Hessian (tasks × d × d) of the KL objective in θ, by hand:
    with q = softmax(θ·h) and p = softmax(label) over the sample, forward KL(p‖q) has gradient
    Hᵀ(q − p) and Hessian Cov_q(h); reverse KL(q‖p), with c = log q − log p − KL, has gradient
    Hᵀ(q⊙c) and Hessian Hᵀ[diag(q⊙(c+1)) − (q⊙c)qᵀ − q(q⊙c)ᵀ − qqᵀ]H."""
    log_q = torch.log_softmax(theta @ features.T, dim=-1)
    q = log_q.exp()
    if loss == "forward_kl":
        diag, residual, left, right = q, q - torch.softmax(labels, dim=-1), [q], [q]
        signs = [-1.0]
    else:
        c = log_q - torch.log_softmax(labels, dim=-1)
        c = c - (q * c).sum(dim=-1, keepdim=True)
        qc = q * c
        diag, residual = q * (c + 1), qc
        left, right, signs = [qc, q, q], [q, qc, q], [-1.0, -1.0, -1.0]
    grad = residual @ features
    hess = torch.einsum("tn,nd,ne->tde", diag, features, features)
    for sign, a, b in zip(signs, left, right):
        hess = hess + sign * torch.einsum("td,te->tde", a @ features, b @ features)
    return grad, hess


def pretrain(rep: MLP, loss: str, x: torch.Tensor, labels: torch.Tensor, steps: int, lr: float, gen: torch.Generator) -> MLP:
    """Train representation and one linear head per pre-training task jointly (full-batch Adam, cosine
    learning-rate decay) on the mean objective over tasks (paper eq. 48); returns the trained
    representation (the heads are thrown away)."""
    rep = rep.detached()
    params = rep.parameters()
    heads = torch.randn(labels.shape[0], rep.weights[-1].shape[0], generator=gen, dtype=DTYPE) / rep.weights[-1].shape[0] ** 0.5
    for p in (*params, heads):
        p.requires_grad_(True)
    opt = torch.optim.Adam([*params, heads], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)  # decay: deep nets jitter at a fixed lr
    for _ in range(steps):
        opt.zero_grad()
        objective(loss, labels, heads @ rep(x).T).mean().backward()
        opt.step()
        schedule.step()
    return rep.detached()
