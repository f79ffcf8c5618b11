"""Stage `naive_sft`: the naive W2S baseline (paper §5 "SFT"): the strong base fine-tuned on the weak
teacher's demonstrations D_weak. Checkpoints at `baselines.naive_sft.checkpoint_fractions` show its
early peak and later decline (figure 3).

    w2s baselines --config pipeline_config.yaml --until naive_sft
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from w2s.artifacts import ArtifactRef, store_for
from w2s.stage import Body, StageOutput, stage
from w2s.budget import matched
from w2s.tables import model_dir
from w2s.tracking import RunContext
from w2s.train_stage import TrainingSlice, run_training, training_slice


@stage(version=1, reads=lambda config: training_slice(matched(config.baselines.naive_sft, config), config), evaluated_as="naive_sft")
def naive_sft(ctx: RunContext, cfg: TrainingSlice, demos: ArtifactRef, strong: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        store = store_for(ctx.artifact_root)
        d_weak = pq.read_table(store.materialise(demos) / "weak_demos.parquet")
        table = pa.table({"prompt": d_weak["prompt"], "completion": d_weak["response"], "finish_reason": d_weak["finish_reason"]})
        writer.write_parquet("train/d_weak.parquet", table)
        return run_training(writer, run, cfg, "sft", model_dir(strong, store), [writer.path("train/d_weak.parquet")])

    return body
