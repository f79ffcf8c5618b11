"""The §5.3 experiment: for each (setting, loss), weak heads on ground truth, strong heads on weak
labels, then per-task misfit and gain (seed paper 001 §5.3; Charikar et al. 2024 §5).

Per task t, with F* = θ*_t·h*, f_w the weak head on h_w fitted to F* on the weak sample, and f_sw the
strong head on h_s fitted to f_w on the w2s sample:

    misfit = objective(f_w, f_sw)         (what weak-to-strong training minimised)
    gain   = error(F*, f_w) − error(F*, f_sw)

Both are reported on the held-out test sample (the paper's protocol; columns `misfit`, `gain`) and on
the w2s sample itself (`misfit_fit`, `gain_fit`), the distribution the strong head was projected
under, where Charikar's Theorem 1 (realizable, squared loss, convex class) holds exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from w2s.config.theory import TheoryConfig
from w2s.theory.model import DTYPE, MLP, error, fit_heads, generator, ground_truth, objective, perturb, pretrain, random_mlp

SAMPLES = ("pretrain", "weak", "w2s", "test")


@dataclass
class World:
    """What every setting shares: the ground truth, the four samples and the two sets of tasks."""

    truth: MLP
    x: dict[str, torch.Tensor]
    pretrain_tasks: torch.Tensor  # (n_pretrain_tasks, rep_dim)
    finetune_tasks: torch.Tensor  # (n_finetune_tasks, rep_dim)


def make_world(cfg: TheoryConfig) -> World:
    def sample(name: str) -> torch.Tensor:
        n = cfg.n_pretrain_points if name == "pretrain" else cfg.n_points
        return cfg.input_std * torch.randn(n, cfg.input_dim, generator=generator(cfg.seed, "x", name), dtype=DTYPE)

    x = {name: sample(name) for name in SAMPLES}
    truth = ground_truth(cfg.input_dim, cfg.rep_dim, cfg.truth_layers, generator(cfg.seed, "truth"), x["pretrain"])

    def tasks(name: str, count: int) -> torch.Tensor:
        return torch.randn(count, cfg.rep_dim, generator=generator(cfg.seed, "tasks", name), dtype=DTYPE) / cfg.rep_dim**0.5

    return World(truth, x, tasks("pretrain", cfg.n_pretrain_tasks), tasks("finetune", cfg.n_finetune_tasks))


class Representations:
    """Weak and strong representations per (setting, loss); pre-trained ones are built once and shared
    (the realizable and pre-training settings use the same pre-trained weak representation)."""

    def __init__(self, cfg: TheoryConfig, world: World):
        self.cfg, self.world = cfg, world
        self._pretrained: dict[tuple[str, str], MLP] = {}

    def pretrained(self, role: str, loss: str) -> MLP:
        if (role, loss) not in self._pretrained:
            cfg, world = self.cfg, self.world
            layers = cfg.weak_layers if role == "weak" else cfg.strong_layers
            init = random_mlp(cfg.input_dim, cfg.rep_dim, layers, generator(cfg.seed, "init", role, loss))
            x = world.x["pretrain"]
            labels = world.pretrain_tasks @ world.truth(x).T
            self._pretrained[(role, loss)] = pretrain(init, loss, x, labels, cfg.pretrain_steps, cfg.pretrain_lr,
                                                      generator(cfg.seed, "heads", role, loss))
        return self._pretrained[(role, loss)]

    def pair(self, setting: str, loss: str) -> tuple[MLP, MLP]:
        """(h_w, h_s) for one setting."""
        cfg = self.cfg
        if setting == "realizable":  # h_s = h*: every task is exactly a linear head on the strong representation
            return self.pretrained("weak", loss), self.world.truth
        if setting == "pretrain":
            return self.pretrained("weak", loss), self.pretrained("strong", loss)
        if setting == "perturb":  # same architecture as h*; the strong one is perturbed less
            return (perturb(self.world.truth, cfg.perturb_weak_std, generator(cfg.seed, "perturb", "weak")),
                    perturb(self.world.truth, cfg.perturb_strong_std, generator(cfg.seed, "perturb", "strong")))
        raise ValueError(f"unknown setting {setting!r}")


@dataclass
class Heads:
    weak: torch.Tensor  # (tasks, rep_dim) on h_w
    strong: torch.Tensor  # (tasks, rep_dim) on h_s, fitted to the weak heads' labels


def fit_w2s(cfg: TheoryConfig, world: World, loss: str, weak_rep: MLP, strong_rep: MLP) -> Heads:
    x_weak, x_w2s = world.x["weak"], world.x["w2s"]
    truth_labels = world.finetune_tasks @ world.truth(x_weak).T
    weak = fit_heads(loss, weak_rep(x_weak), truth_labels, cfg.head_max_iter)
    weak_labels = weak @ weak_rep(x_w2s).T
    strong = fit_heads(loss, strong_rep(x_w2s), weak_labels, cfg.head_max_iter)
    return Heads(weak, strong)


def evaluate(loss: str, truth_out: torch.Tensor, weak_out: torch.Tensor, w2s_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-task quantities from outputs (tasks × n) of F*, f_w and f_sw on one sample."""
    weak_error, w2s_error = error(loss, truth_out, weak_out), error(loss, truth_out, w2s_out)
    return {"weak_error": weak_error, "w2s_error": w2s_error, "misfit": objective(loss, weak_out, w2s_out),
            "gain": weak_error - w2s_error}


def outputs(world: World, heads: Heads, weak_rep: MLP, strong_rep: MLP, sample: str) -> tuple[torch.Tensor, ...]:
    x = world.x[sample]
    return world.finetune_tasks @ world.truth(x).T, heads.weak @ weak_rep(x).T, heads.strong @ strong_rep(x).T


def run_setting(cfg: TheoryConfig, world: World, reps: Representations, setting: str, loss: str) -> pd.DataFrame:
    weak_rep, strong_rep = reps.pair(setting, loss)
    heads = fit_w2s(cfg, world, loss, weak_rep, strong_rep)
    with torch.no_grad():
        test = evaluate(loss, *outputs(world, heads, weak_rep, strong_rep, "test"))
        fit = evaluate(loss, *outputs(world, heads, weak_rep, strong_rep, "w2s"))
    frame = pd.DataFrame({"setting": setting, "loss": loss, "task": range(cfg.n_finetune_tasks)})
    for name, values in test.items():
        frame[name] = values.numpy()
    for name, values in fit.items():
        frame[f"{name}_fit"] = values.numpy()
    return frame


def run(cfg: TheoryConfig) -> pd.DataFrame:
    """Every configured (setting, loss), one row per fine-tuning task."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only synchronise (10x slower on 2 busy cores)
    try:
        world = make_world(cfg)
        reps = Representations(cfg, world)
        frames = [run_setting(cfg, world, reps, setting, loss) for setting in cfg.settings for loss in cfg.losses]
    finally:
        torch.set_num_threads(threads)
    return pd.concat(frames, ignore_index=True)


def gain_ge_misfit(frame: pd.DataFrame, tol: float, suffix: str = "") -> pd.Series:
    """gain ≥ misfit per row, with a relative slack for floating-point error only."""
    gain, misfit = frame[f"gain{suffix}"], frame[f"misfit{suffix}"]
    slack = tol * (frame[f"weak_error{suffix}"].abs() + misfit.abs() + 1e-300)
    return gain >= misfit - slack


def fractions(frame: pd.DataFrame, tol: float) -> dict[str, float]:
    """Fraction of tasks with gain ≥ misfit per (setting, loss), on the test sample and on the w2s sample."""
    metrics: dict[str, float] = {}
    for (setting, loss), group in frame.groupby(["setting", "loss"], sort=False):
        metrics[f"frac_gain_ge_misfit/{setting}/{loss}"] = float(gain_ge_misfit(group, tol).mean())
        metrics[f"frac_gain_ge_misfit_fit/{setting}/{loss}"] = float(gain_ge_misfit(group, tol, "_fit").mean())
        metrics[f"median_gain_over_misfit/{setting}/{loss}"] = float((group["gain"] / group["misfit"]).median())
    return metrics
