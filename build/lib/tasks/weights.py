"""Stage `weights` (EVE stage 5): per-prompt self-normalised F-weights (eq. 8) from the scores.

Streams shard by shard (bounded memory), adds `log_ratio, weight`, writes per-prompt diagnostics
(ESS, max weight) and a weight histogram (also logged to MLflow). Changing weights.beta_over_lambda
reruns this stage and what follows, never scoring or sampling.

    w2s run --config pipeline_config.yaml --until weights --set weights.beta_over_lambda=0.5
"""

from __future__ import annotations

import pyarrow.parquet as pq

from w2s.artifacts import ArtifactRef, store_for
from w2s.config import WeightsConfig
from w2s.stage import Body, StageOutput, stage
from w2s.tables import shard_paths
from w2s.tracking import RunContext
from w2s.weights import ShardWeighter, plot_histogram


@stage(version=1, reads=lambda config: config.weights)
def weights(ctx: RunContext, cfg: WeightsConfig, scores: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        weighter = ShardWeighter(cfg.beta_over_lambda)
        for index, (rel, path) in enumerate(shard_paths(scores, store_for(ctx.artifact_root))):
            table, diagnostics = weighter.process(pq.read_table(path), f"{scores.stage}/{rel}")
            writer.write_parquet(rel, table)
            writer.write_parquet(f"diagnostics/part-{index:05d}.parquet", diagnostics)
        plot_histogram(weighter.stats, writer.path("weights_histogram.png"), cfg.beta_over_lambda)
        run.log_artifact(writer.path("weights_histogram.png"))
        return StageOutput(weighter.stats.metrics())

    return body
