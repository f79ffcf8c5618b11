"""Stage `weak_sft` (EVE stage 1a, paper §9.2): the weak base model, SFT on the *chosen* responses of
the gold-labelled preferences → π_weak_ref.

    w2s run --config pipeline_config.yaml --until weak_sft
"""

from __future__ import annotations

from w2s.artifacts import ArtifactRef
from w2s.stage import Body, stage
from w2s.tracking import RunContext
from w2s.train_stage import TrainingSlice, train_on_gold_preferences, training_slice


@stage(version=1, reads=lambda config: training_slice(config.weak_sft, config))
def weak_sft(ctx: RunContext, cfg: TrainingSlice, data: ArtifactRef, base: ArtifactRef) -> Body:
    return train_on_gold_preferences(ctx, cfg, "sft", data, base)
