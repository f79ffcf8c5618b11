"""Stage `weak_dpo` (EVE stage 1b, paper §9.2): DPO with β = 0.1 from π_weak_ref on the same gold
preferences → π_weak. Reference log-probs of π_weak_ref are computed once, before the first step,
and kept in the artifact (never recomputed per step; a resumed run reuses them).

    w2s run --config pipeline_config.yaml --until weak_dpo
"""

from __future__ import annotations

from w2s.artifacts import ArtifactRef, ArtifactStore
from w2s.data.splits import read_preferences
from w2s.orchestration import StageTask
from w2s.stage import Stage, StageOutput, execute
from w2s.tables import model_dir
from w2s.tracking import RunContext
from w2s.train_stage import TrainingSlice, run_training, training_slice

STAGE = Stage("weak_dpo", version=1)


def weak_dpo(ctx: RunContext, cfg: TrainingSlice, data: ArtifactRef, weak_ref: ArtifactRef) -> ArtifactRef:
    def body(writer, run) -> StageOutput:
        store = ArtifactStore(ctx.artifact_root)
        prefs = read_preferences(store.materialise(data), data.stage)
        writer.write_parquet("train/pairs.parquet", prefs.select(["prompt", "chosen", "rejected"]))
        return run_training(writer, run, cfg, "dpo", model_dir(weak_ref, store), [writer.path("train/pairs.parquet")])

    return execute(ctx, STAGE, cfg, {"data": data, "weak_ref": weak_ref}, body)


weak_dpo_task = StageTask(STAGE, weak_dpo, select=lambda config: training_slice(config.weak_dpo, config))
