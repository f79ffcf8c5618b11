"""Stage `weak_sft` (EVE stage 1a, paper §9.2): the weak base model, SFT on the *chosen* responses of
the gold-labelled preferences → π_weak_ref.

    w2s run --config pipeline_config.yaml --until weak_sft
"""

from __future__ import annotations

import pyarrow as pa

from w2s.artifacts import ArtifactRef, ArtifactStore
from w2s.data.splits import read_preferences
from w2s.orchestration import StageTask
from w2s.stage import Stage, StageOutput, execute
from w2s.tables import model_dir
from w2s.tracking import RunContext
from w2s.train_stage import TrainingSlice, run_training, training_slice

STAGE = Stage("weak_sft", version=1)


def weak_sft(ctx: RunContext, cfg: TrainingSlice, data: ArtifactRef, base: ArtifactRef) -> ArtifactRef:
    def body(writer, run) -> StageOutput:
        store = ArtifactStore(ctx.artifact_root)
        prefs = read_preferences(store.materialise(data), data.stage)
        writer.write_parquet("train/chosen.parquet", pa.table({"prompt": prefs["prompt"], "completion": prefs["chosen"]}))
        return run_training(writer, run, cfg, "sft", model_dir(base, store), [writer.path("train/chosen.parquet")])

    return execute(ctx, STAGE, cfg, {"data": data, "base": base}, body)


weak_sft_task = StageTask(STAGE, weak_sft, select=lambda config: training_slice(config.weak_sft, config))
