"""Stages `strong_sft` → `strong_dpo`: the strong ceiling π_strong of PGR (paper §5, §9.5): the strong
base trained like the weak teacher, but on the gold data itself (SFT on gold chosen, then DPO on the
gold preferences), so P(π_strong) is what the strong model reaches with perfect supervision.

    w2s baselines --config pipeline_config.yaml --until strong_dpo
"""

from __future__ import annotations

from w2s.artifacts import ArtifactRef
from w2s.orchestration import StageTask
from w2s.stage import Stage
from w2s.tracking import RunContext
from w2s.train_stage import TrainingSlice, train_on_gold_preferences, training_slice

SFT = Stage("strong_sft", version=1)
DPO = Stage("strong_dpo", version=1)


def strong_sft(ctx: RunContext, cfg: TrainingSlice, data: ArtifactRef, strong: ArtifactRef) -> ArtifactRef:
    return train_on_gold_preferences(ctx, SFT, cfg, "sft", data, strong, "strong")


def strong_dpo(ctx: RunContext, cfg: TrainingSlice, data: ArtifactRef, strong_sft: ArtifactRef) -> ArtifactRef:
    return train_on_gold_preferences(ctx, DPO, cfg, "dpo", data, strong_sft, "strong_sft")


strong_sft_task = StageTask(SFT, strong_sft, select=lambda config: training_slice(config.baselines.strong_sft, config))
strong_dpo_task = StageTask(DPO, strong_dpo, select=lambda config: training_slice(config.baselines.strong_dpo, config))
