"""Stage `weak_sft` (EVE stage 1a, paper §9.2): the weak base model, SFT on the *chosen* responses of
the gold-labelled preferences → π_weak_ref.

    w2s run --config pipeline_config.yaml --until weak_sft
"""

from __future__ import annotations

from w2s.artifacts import ArtifactRef
from w2s.orchestration import StageTask
from w2s.stage import Stage
from w2s.tracking import RunContext
from w2s.train_stage import TrainingSlice, train_on_gold_preferences, training_slice

STAGE = Stage("weak_sft", version=1)


def weak_sft(ctx: RunContext, cfg: TrainingSlice, data: ArtifactRef, base: ArtifactRef) -> ArtifactRef:
    return train_on_gold_preferences(ctx, STAGE, cfg, "sft", data, base, "base")


weak_sft_task = StageTask(STAGE, weak_sft, select=lambda config: training_slice(config.weak_sft, config))
