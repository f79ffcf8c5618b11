"""Stage `student` (EVE stage 6, paper §4.3): π_ref_strong trained with weighted MLE on its own
samples, maximising Σ_i F_i · log π_θ(y_i|x) (sequence log-prob = sum over completion tokens; the
batch normalisation is `student.normalisation`, see w2s/training/objectives.py). Intermediate
checkpoints at `student.checkpoint_fractions` (default 10/25/50/100 % of the run) stay in the
artifact for the PGR-over-training curve. A killed run resumes from its last DeepSpeed checkpoint.

    w2s run --config pipeline_config.yaml --until student
"""

from __future__ import annotations

from w2s.artifacts import ArtifactRef, store_for
from w2s.stage import Body, StageOutput, stage
from w2s.tables import model_dir, shard_paths
from w2s.tracking import RunContext
from w2s.train_stage import TrainingSlice, run_training, training_slice


@stage(version=1, reads=lambda config: training_slice(config.student, config), evaluated_as="eve")
def student(ctx: RunContext, cfg: TrainingSlice, weights: ArtifactRef, strong: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        store = store_for(ctx.artifact_root)
        shards = [path for _, path in shard_paths(weights, store)]
        if not shards:
            raise ValueError(f"the weights artifact {weights.uri} has no shards")
        return run_training(writer, run, cfg, "weighted_mle", model_dir(strong, store), shards)

    return body
