"""Stage `dpo_weak_reward` (baseline, paper §5.2 and §11.2): DPO of π_ref_strong on preference pairs
of its own samples, labelled by the weak teacher's implicit reward log π_weak − log π_weak_ref.

    w2s baselines --config pipeline_config.yaml --until dpo_weak_reward

Inputs: `scores` (the scoring artifact: the K few-shot samples of π_ref_strong per student prompt
with logp_weak, logp_weak_ref) and `strong` (the strong_base model, policy start AND DPO reference:
the trainer computes the reference log-probs from the initial weights once and keeps them in
`ref_logps.parquet`). Per prompt, chosen = the sample with the highest weak log-ratio, rejected =
the lowest (w2s/baseline_data.select_pairs: ties, equal texts and empty completions are skipped and
counted). `baselines.dpo_weak_reward`: β = 0.05, 1 epoch, checkpoints at 25/50/100 % (fig. 9 needs
the over-optimisation trajectory). Output: `train/pairs.parquet` (with the sample indices and
log-ratios behind each pair) plus the model artifact of w2s/train_stage.py.

The pair uses the plain task prompt x (the one the weak teacher scored), not the few-shot prompt
the samples were drawn with, as EVE's student does. Deviation to know: the DPO data path appends EOS
to both sides of every pair (w2s/training/data.py), also to a sample cut at max_tokens, whereas
scoring gave such a sample no EOS; `pairs_with_length_cut` counts the pairs this touches.
"""

from __future__ import annotations

import numpy as np

from w2s.artifacts import ArtifactRef, store_for
from w2s.baseline_data import read_scores, select_pairs
from w2s.budget import matched
from w2s.stage import Body, StageOutput, stage
from w2s.tables import model_dir, shard_paths
from w2s.tracking import RunContext
from w2s.train_stage import TrainingSlice, run_training, training_slice


@stage(version=2, reads=lambda config: training_slice(matched(config.baselines.dpo_weak_reward, config, epochs_fixed=True), config),
       evaluated_as="dpo_weak_reward")
def dpo_weak_reward(ctx: RunContext, cfg: TrainingSlice, scores: ArtifactRef, strong: ArtifactRef) -> Body:
    if getattr(cfg.train, "beta", None) is None:
        raise ValueError("dpo_weak_reward needs a DPO config (baselines.dpo_weak_reward carries beta)")

    def body(writer, run) -> StageOutput:
        store = store_for(ctx.artifact_root)
        table = read_scores(shard_paths(scores, store), f"{scores.stage} artifact {scores.uri}")
        pairs, counts = select_pairs(table)
        if counts["pairs"] < cfg.train.batch_size:
            raise ValueError(
                f"{counts['pairs']} DPO pairs from {counts['prompts']} prompts (skipped: {counts['skipped_tie']} ties, "
                f"{counts['skipped_equal_text']} equal texts, {counts['skipped_too_few']} with < 2 non-empty samples) "
                f"are fewer than baselines.dpo_weak_reward.batch_size {cfg.train.batch_size}: not one full batch")
        writer.write_parquet("train/pairs.parquet", pairs)
        margin = np.asarray(pairs.column("chosen_log_ratio").to_numpy()) - np.asarray(pairs.column("rejected_log_ratio").to_numpy())
        cut = [a == "length" or b == "length" for a, b in zip(pairs.column("chosen_finish_reason").to_pylist(),
                                                                pairs.column("rejected_finish_reason").to_pylist())]
        metrics = {**counts, "log_ratio_margin_mean": float(margin.mean()), "pairs_with_length_cut": int(sum(cut))}
        trained = run_training(writer, run, cfg, "dpo", model_dir(strong, store), [writer.path("train/pairs.parquet")])
        return StageOutput({**trained.metrics, **metrics}, trained.info)

    return body
