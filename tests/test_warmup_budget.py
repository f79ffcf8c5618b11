"""Fair budgets (issue #16, E3): in the paper-shape config every training stage, baselines included,
reaches its peak learning rate and decays; warm-up never exceeds a stage's own steps."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from w2s.budget import matched
from w2s.config import TrainConfig
from w2s.config.loading import load_config
from w2s.training.engine import lr_lambda, warmup_steps
from w2s.training.trainer import total_steps


def _sections(config):
    """Each training stage's section as it trains (the baselines under the budget rule, w2s/budget.py)."""
    b, k = config.baselines, config.sampling.k
    naive_rows = config.data.n_student * k if b.naive_sft_data == "matched" else config.data.n_weak_demo
    return {"weak_sft": (config.weak_sft, config.data.n_preference), "weak_dpo": (config.weak_dpo, config.data.n_preference),
            "student": (config.student, config.data.n_student * k),
            "strong_sft": (b.strong_sft, config.data.n_preference), "strong_dpo": (b.strong_dpo, config.data.n_preference),
            "naive_sft": (matched(b.naive_sft, config), naive_rows),
            "refinement": (matched(b.refinement.train, config), config.data.n_weak_demo),
            "dpo_weak_reward": (matched(b.dpo_weak_reward, config, epochs_fixed=True), config.data.n_student * k * (k - 1) // 2),
            "strong_evaluator": (matched(b.strong_evaluator, config), config.data.n_weak_demo)}


@pytest.mark.parametrize("name", ["tldr_llama3b.yaml", "tiny.yaml", "../pipeline_config.yaml"])
def test_every_stage_reaches_peak_lr_and_decays(name):
    config = load_config(REPO / "configs" / name, [])
    for stage, (section, rows) in _sections(config).items():
        total = total_steps(section, rows)
        warm = warmup_steps(section, total)
        factors = [lr_lambda(section, total)(step) for step in range(total)]
        assert warm <= section.max_warmup_fraction * total, stage
        assert max(factors) == pytest.approx(1.0), (stage, total, warm)
        if section.lr_scheduler == "cosine" and total > 2:
            assert factors[-1] < max(factors), stage


def test_the_paper_warmup_is_capped_by_a_short_run_and_kept_by_a_long_one():
    cfg = TrainConfig(warmup_steps=150, batch_size=128, micro_batch_size=8)
    assert warmup_steps(cfg, total_steps(cfg, 10_000)) == 39  # 78 steps: at most half warm-up
    assert warmup_steps(cfg, 719) == 150  # 92k pairs at batch 128: the paper's 150 as given
    factor = lr_lambda(cfg, 78)
    assert factor(38) == pytest.approx(1.0) and factor(37) < 1.0
