"""Stages `strong_sft` → `strong_dpo`: the strong ceiling π_strong of PGR (paper §5, §9.5): the strong
base trained like the weak teacher, but on the gold data itself (SFT on gold chosen, then DPO on the
gold preferences), so P(π_strong) is what the strong model reaches with perfect supervision.

    w2s baselines --config pipeline_config.yaml --until strong_dpo
"""

from __future__ import annotations

from w2s.artifacts import ArtifactRef
from w2s.stage import Body, stage
from w2s.tracking import RunContext
from w2s.train_stage import TrainingSlice, train_on_gold_preferences, training_slice


@stage(version=1, reads=lambda config: training_slice(config.baselines.strong_sft, config))
def strong_sft(ctx: RunContext, cfg: TrainingSlice, data: ArtifactRef, strong: ArtifactRef) -> Body:
    return train_on_gold_preferences(ctx, cfg, "sft", data, strong)


@stage(version=1, reads=lambda config: training_slice(config.baselines.strong_dpo, config), evaluated_as="strong_ceiling")
def strong_dpo(ctx: RunContext, cfg: TrainingSlice, data: ArtifactRef, strong_sft: ArtifactRef) -> Body:
    return train_on_gold_preferences(ctx, cfg, "dpo", data, strong_sft)
