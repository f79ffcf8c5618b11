"""Stage `strong_evaluator` (baseline, paper §11.1): the strong model only *evaluates* D_weak.

    w2s baselines --config pipeline_config.yaml --until strong_evaluator

Each weak answer (x, y) of D_weak is scored with

    r_strong(x, y) = log π_ref_strong(y|x) − log π_weak_ref(y|x)

(sequence log-probs, sums over the completion's tokens, each model with its own tokenizer and the
boundary/EOS rule of w2s/scoring.py: a y that stopped includes its EOS), and π_ref_strong is trained
by weighted MLE on D_weak with weights

    w_i = N · exp(r_i/λ) / Σ_{j=1..N} exp(r_j/λ)      over all N rows of D_weak   (mean 1)

DEVIATION from the paper: §11.1 normalises by Z(x), per prompt. D_weak holds ONE answer per prompt,
so per-prompt normalisation would make every weight exactly 1, i.e. plain SFT on D_weak (naive SFT).
The weights are therefore self-normalised over the whole D_weak (Z = the mean of exp(r/λ) over the
data set), which keeps the paper's intent: rows the strong model finds likelier than the weak
reference does count more. `baselines.strong_evaluator.inverse_lambda` is 1/λ. Across prompts r
varies far more than across the K samples of one prompt that EVE normalises over (sequence sums
over answers of different lengths and posts): at 1/λ = 1 the weights collapse onto one row (r_strong
std ≈ 220 nats on the embedded D_weak: ESS 1 of 64). DEVIATION: the paper fixes λ; the default
`inverse_lambda: auto` sets 1/λ per run so the weights' ESS is `target_ess_frac` (0.5) of N, midway
between the two degenerate limits (ESS N: naive SFT; ESS 1: SFT on one answer), whatever the answer
lengths and tokenizers. The 1/λ used is the `inverse_lambda` metric; a number fixes it.

Inputs: `demos` (weak_demos artifact), `strong` (strong_base: scorer and policy start), `weak_ref`
(weak_sft: π_weak_ref). Output: `weights.parquet` (prompt, completion, finish_reason, both
log-probs, r_strong, weight; also the training file) plus the model artifact of
w2s/train_stage.py. Metrics: ESS = (Σw)²/Σw² (N = uniform, 1 = one row takes all), max weight.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from w2s.artifacts import ArtifactRef, store_for
from w2s.baseline_data import effective_sample_size, evaluator_weights, inverse_lambda_for_ess, read_weak_demos
from w2s.config import PipelineConfig, StrongEvaluatorConfig
from w2s.devices import torch_device
from w2s.scoring import score_rows
from w2s.stage import Body, StageOutput, stage
from w2s.tables import model_dir
from w2s.tracking import RunContext
from w2s.budget import matched
from w2s.train_stage import TrainingSlice, run_training, training_slice


class StrongEvaluatorSlice(TrainingSlice):
    """A training slice whose section also carries 1/λ (typed here so the cache key includes it)."""

    train: StrongEvaluatorConfig

    @classmethod
    def from_pipeline(cls, config: PipelineConfig) -> StrongEvaluatorSlice:
        base = training_slice(matched(config.baselines.strong_evaluator, config), config)
        return cls(train=base.train, engine=base.engine, seed=base.seed)


@stage(version=2, reads=StrongEvaluatorSlice.from_pipeline, evaluated_as="strong_evaluator")
def strong_evaluator(ctx: RunContext, cfg: StrongEvaluatorSlice, demos: ArtifactRef, strong: ArtifactRef,
                     weak_ref: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        store = store_for(ctx.artifact_root)
        d_weak = read_weak_demos(store.materialise(demos), f"{demos.stage} artifact {demos.uri}")
        if d_weak.num_rows < cfg.train.batch_size:
            raise ValueError(f"D_weak has {d_weak.num_rows} rows, fewer than baselines.strong_evaluator.batch_size "
                             f"{cfg.train.batch_size}: not one full batch")
        ids, prompts = d_weak.column("prompt_id").to_pylist(), d_weak.column("prompt").to_pylist()
        responses, finish = d_weak.column("response").to_pylist(), d_weak.column("finish_reason").to_pylist()
        cut_empty = [pid for pid, r, f in zip(ids, responses, finish) if r == "" and f != "stop"]
        if cut_empty:
            raise ValueError(f"D_weak rows {cut_empty[:5]} have an empty response that did not stop: nothing to score or learn")
        strong_dir, weak_ref_dir = model_dir(strong, store), model_dir(weak_ref, store)
        ended = [f == "stop" for f in finish]
        device = torch_device(ctx.device)
        logp_strong = np.array(score_rows(strong_dir, prompts, responses, ended, label="π_ref_strong", device=device))
        logp_weak_ref = np.array(score_rows(weak_ref_dir, prompts, responses, ended, label="π_weak_ref", device=device))
        r_strong = logp_strong - logp_weak_ref
        bad = np.flatnonzero(~np.isfinite(r_strong))
        if len(bad):
            raise ValueError(f"non-finite r_strong for prompt_ids {[ids[i] for i in bad[:5]]}")
        inverse_lambda = cfg.train.inverse_lambda
        if inverse_lambda == "auto":
            inverse_lambda = inverse_lambda_for_ess(r_strong, cfg.train.target_ess_frac)
        weights = evaluator_weights(r_strong, inverse_lambda)
        table = pa.table({
            "prompt_id": ids, "prompt": prompts, "completion": responses, "finish_reason": finish,
            "logp_strong_ref": logp_strong, "logp_weak_ref": logp_weak_ref, "r_strong": r_strong,
            "weight": pa.array(weights, pa.float64()),
        })
        writer.write_parquet("weights.parquet", table)
        metrics = {"rows": len(ids), "inverse_lambda": inverse_lambda, "ess": effective_sample_size(weights),
                   "ess_frac": effective_sample_size(weights) / len(ids), "max_weight": float(weights.max()),
                   "r_strong_mean": float(r_strong.mean()), "r_strong_std": float(r_strong.std())}
        trained = run_training(writer, run, cfg, "weighted_mle", strong_dir, [writer.path("weights.parquet")])
        return StageOutput({**trained.metrics, **metrics}, trained.info)

    return body
