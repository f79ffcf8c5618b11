"""Stage `weak_dpo` (EVE stage 1b, paper §9.2): DPO with β = 0.1 from π_weak_ref on the same gold
preferences → π_weak. Reference log-probs of π_weak_ref are computed once, before the first step,
and kept in the artifact (never recomputed per step; a resumed run reuses them).

    w2s run --config pipeline_config.yaml --until weak_dpo
"""

from __future__ import annotations

from w2s.artifacts import ArtifactRef
from w2s.orchestration import StageTask
from w2s.stage import Stage
from w2s.tracking import RunContext
from w2s.train_stage import TrainingSlice, train_on_gold_preferences, training_slice

STAGE = Stage("weak_dpo", version=1)


def weak_dpo(ctx: RunContext, cfg: TrainingSlice, data: ArtifactRef, weak_ref: ArtifactRef) -> ArtifactRef:
    return train_on_gold_preferences(ctx, STAGE, cfg, "dpo", data, weak_ref, "weak_ref")


weak_dpo_task = StageTask(STAGE, weak_dpo, select=lambda config: training_slice(config.weak_dpo, config))
