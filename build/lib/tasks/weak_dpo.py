"""Stage `weak_dpo` (EVE stage 1b, paper §9.2): DPO with β = 0.1 from π_weak_ref on the same gold
preferences → π_weak. Reference log-probs of π_weak_ref are computed once, before the first step,
and kept in the artifact (never recomputed per step; a resumed run reuses them).

    w2s run --config pipeline_config.yaml --until weak_dpo
"""

from __future__ import annotations

from w2s.artifacts import ArtifactRef
from w2s.stage import Body, stage
from w2s.tracking import RunContext
from w2s.train_stage import TrainingSlice, train_on_gold_preferences, training_slice


@stage(version=1, reads=lambda config: training_slice(config.weak_dpo, config), evaluated_as="weak")
def weak_dpo(ctx: RunContext, cfg: TrainingSlice, data: ArtifactRef, weak_ref: ArtifactRef) -> Body:
    return train_on_gold_preferences(ctx, cfg, "dpo", data, weak_ref)
