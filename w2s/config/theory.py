"""Typed config of the synthetic misfit-vs-gain experiments (seed paper 001 §5.3, after Charikar et al. 2024).

`configs/theory.yaml` overrides these defaults; `--set theory.n_finetune_tasks=200` overrides the file.
The defaults are sized for 2 CPU cores (one to two minutes); the docstring of `TheoryConfig` lists
the paper's sizes. Artifact root and MLflow come from the shared `RunConfig`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from w2s.config import RunConfig, RunScoped, Section
from w2s.config.base import PositiveInt, Rows, Seed, Steps, Width
Loss = Literal["squared", "reverse_kl", "forward_kl"]
Setting = Literal["realizable", "pretrain", "perturb"]


class TheoryConfig(Section):
    """Sizes and knobs of §5.3. Paper scale: 20 pre-training tasks, 100 fine-tuning tasks, 2000 points
    for each of pre-training, weak fine-tuning, weak-to-strong and test; we keep all of those except
    `n_points` (weak, w2s and test samples: 2000 in the paper, 1000 here); the pre-training budget is
    ours (not given in the paper)."""

    seed: Seed = Field(0, description="Seeds the ground truth, the tasks, every sample and every init.")
    input_dim: Width = Field(8, description="x ~ N(0, input_std² I) in R^input_dim.")
    input_std: float = Field(1.0, gt=0, description="Spread of x (a deviation: see docs/theory.md).")
    rep_dim: Width = Field(16, description="Width of every hidden layer and of the representation.")
    truth_layers: PositiveInt = Field(16, description="Linear layers of the ground-truth representation h*.")
    weak_layers: PositiveInt = Field(2, description="Linear layers of the weak representation h_w.")
    strong_layers: PositiveInt = Field(8, description="Linear layers of the strong representation h_s.")
    n_pretrain_tasks: Rows = Field(20, description="Tasks h_w and h_s are pre-trained on.")
    n_finetune_tasks: Rows = Field(100, description="New tasks: one point per task in each plot.")
    n_points: Rows = Field(1000, description="Points in each of the weak, w2s and test samples.")
    n_pretrain_points: Rows = Field(2000, description="Points in the pre-training sample (shared by its tasks).")
    pretrain_steps: Steps = Field(600, description="Full-batch Adam steps of representation pre-training.")
    pretrain_lr: float = Field(3e-3, gt=0)
    perturb_weak_std: float = Field(0.1, gt=0, description="Gaussian noise on every parameter of h* → h_w.")
    perturb_strong_std: float = Field(0.02, gt=0, description="Same for h_s; must be below the weak noise.")
    head_max_iter: Steps = Field(100, description="Newton iterations (at most) for the KL linear heads.")
    losses: tuple[Loss, ...] = ("squared", "reverse_kl", "forward_kl")
    settings: tuple[Setting, ...] = ("realizable", "pretrain", "perturb")
    theorem_tol: float = Field(1e-8, gt=0, description="Relative slack for gain ≥ misfit (numerical error only).")

    @model_validator(mode="after")
    def _strong_closer(self) -> TheoryConfig:
        if self.perturb_strong_std >= self.perturb_weak_std:
            raise ValueError("perturb_strong_std must be smaller than perturb_weak_std (strong is closer to h*)")
        return self


class TheoryPipelineConfig(RunScoped):
    """The whole config of `w2s theory`: where it writes (shared RunConfig) and what it computes."""

    run: RunConfig = RunConfig(experiment="w2s-theory", artifact_root="artifacts/theory")
    theory: TheoryConfig = TheoryConfig()


def load_theory_config(path: str | None = None, overrides: list[str] | None = None) -> TheoryPipelineConfig:
    """YAML file + `--set key=value` overrides → the validated config (w2s.config.loading.load_config)."""
    from w2s.config.loading import load_config

    return load_config(path, overrides, schema=TheoryPipelineConfig)
