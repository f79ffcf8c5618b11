"""Stage `refinement` (baseline, paper §5 and §9.6): π_ref_strong rewrites each weak answer of D_weak
with the §9.6 refinement prompt ("… Weak Assistant: y_weak / Can you make the response more helpful
and coherent? / Strong Assistant:"), then π_ref_strong is fine-tuned (SFT) on (x, rewrite).

    w2s baselines --config pipeline_config.yaml --until refinement

Inputs: `demos` (the weak_demos artifact: weak_demos.parquet) and `strong` (the strong_base model).
Output: `refined.parquet` (one row per D_weak row: the refinement prompt, the raw rewrite, the SFT
completion, where it came from, its gold reward and the weak answer's), plus the model artifact of
w2s/train_stage.py (`model/`, `checkpoints/step-*/`). Prompt p's rewrite is sampled with seed
derive_seed(run.seed, "refinement:" + p) with `baselines.refinement` (temperature 0.7, stop "\\n\\n").

Policy for a missing rewrite (w2s/baseline_data.refined_completion): a blank rewrite, or a prompt
skipped as overlong under `on_overlong_prompt: skip`, falls back to the weak answer itself, so the
SFT data keeps every D_weak row; `fallback_empty` / `fallback_skipped` count them. The SFT prompt is
the plain task prompt x, as for naive SFT and EVE; the completion is the rewrite stripped and given
one leading space (the shape of a TL;DR completion); a rewrite cut at max_tokens gets no EOS.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from w2s.artifacts import ArtifactRef, store_for
from w2s.baseline_data import read_weak_demos, refined_completion
from w2s.config import GenerationEngineConfig, GoldRewardSpec, PipelineConfig, RefinementConfig, TrainingEngineConfig
from w2s.generation import Request, derive_seed, open_engine, pinned_backend, refinement_prompt
from w2s.devices import torch_device
from w2s.rewards import load_gold_reward
from w2s.stage import Body, StageOutput, stage
from w2s.tables import model_dir
from w2s.tracking import RunContext
from w2s.budget import matched
from w2s.train_stage import TrainingSlice, run_training, training_slice

REQUEST_PREFIX = "refinement:"


class RefinementSlice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    refinement: RefinementConfig
    engine: GenerationEngineConfig  # backend resolved: vLLM and transformers sample differently
    training: TrainingEngineConfig
    gold_reward: GoldRewardSpec
    seed: int

    @classmethod
    def from_pipeline(cls, config: PipelineConfig) -> RefinementSlice:
        engine = pinned_backend(config.engines.generation)
        refinement = config.baselines.refinement
        refinement = refinement.model_copy(update={"train": matched(refinement.train, config)})
        # the precision resolved, as every training stage's key has it
        return cls(refinement=refinement, engine=engine, training=training_slice(refinement.train, config).engine,
                   gold_reward=config.models.gold_reward, seed=config.run.seed)

    def training_slice(self) -> TrainingSlice:
        return TrainingSlice(train=self.refinement.train, engine=self.training, seed=self.seed)


def build_requests(d_weak: pa.Table, seed: int) -> list[Request]:
    return [Request(pid, refinement_prompt(prompt, response), n=1, seed=derive_seed(seed, REQUEST_PREFIX + pid))
            for pid, prompt, response in zip(d_weak.column("prompt_id").to_pylist(), d_weak.column("prompt").to_pylist(),
                                              d_weak.column("response").to_pylist())]


def refined_table(d_weak: pa.Table, requests: list[Request], records: dict, reward) -> pa.Table:
    """One row per D_weak row, in D_weak order; `records`: request id -> Record (absent: skipped)."""
    rows = d_weak.to_pydict()
    completions, sources, raw, finish, n_tokens = [], [], [], [], []
    for i, pid in enumerate(rows["prompt_id"]):
        record = records.get(pid)
        text, source = refined_completion(record.completion if record else None, rows["response"][i])
        completions.append(text)
        sources.append(source)
        raw.append(record.completion if record else None)
        # a fallback row is the weak answer: it ended (or was cut) the way the weak answer did
        finish.append(record.finish_reason if source == "rewrite" else rows["finish_reason"][i])
        n_tokens.append(record.n_tokens if record else 0)
    gold = reward.score(rows["prompt"], completions, rows["meta"])
    weak_gold = rows["gold_reward"] if "gold_reward" in rows else reward.score(rows["prompt"], rows["response"], rows["meta"])
    return pa.table({
        "prompt_id": rows["prompt_id"], "prompt": rows["prompt"], "weak_response": rows["response"],
        "refinement_prompt": [r.prompt for r in requests], "rewrite": pa.array(raw, pa.string()),
        "completion": completions, "source": sources, "finish_reason": finish,
        "n_tokens": pa.array(n_tokens, pa.int32()), "gold_reward": pa.array(gold, pa.float64()),
        "gold_reward_weak": pa.array(weak_gold, pa.float64()), "meta": rows["meta"],
    })


@stage(version=2, reads=RefinementSlice.from_pipeline, evaluated_as="refinement")
def refinement(ctx: RunContext, cfg: RefinementSlice, demos: ArtifactRef, strong: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        store = store_for(ctx.artifact_root)
        d_weak = read_weak_demos(store.materialise(demos), f"{demos.stage} artifact {demos.uri}")
        if d_weak.num_rows < cfg.refinement.train.batch_size:
            raise ValueError(f"D_weak has {d_weak.num_rows} rows, fewer than baselines.refinement.train.batch_size "
                             f"{cfg.refinement.train.batch_size}: not one full batch")
        strong_dir = model_dir(strong, store)
        reward = load_gold_reward(cfg.gold_reward, torch_device(ctx.device))
        requests = build_requests(d_weak, cfg.seed)
        with open_engine(cfg.engine, strong_dir, cfg.seed) as engine:
            # RefinementConfig is a GenerationParams; generate checks the prompts before the engine starts
            result = engine.generate(requests, cfg.refinement)
            engine_info = engine.info
        table = refined_table(d_weak, requests, {r.request_id: r for r in result.records}, reward)
        writer.write_parquet("refined.parquet", table)
        sources = table.column("source").to_pylist()
        metrics = {
            "rows": table.num_rows,
            "rewrites": sources.count("rewrite"),
            "fallback_empty": sources.count("fallback_empty"),
            "fallback_skipped": sources.count("fallback_skipped"),
            "gold_reward_refined": float(np.mean(table.column("gold_reward").to_numpy())),
            "gold_reward_weak": float(np.mean(table.column("gold_reward_weak").to_numpy())),
            "rewrite_tokens_mean": float(np.mean(table.column("n_tokens").to_numpy())),
            "rewrite_finish_length_frac": float(np.mean([r.finish_reason == "length" for r in result.records])),
            "generate_s": result.wall_s,
        }
        trained = run_training(writer, run, cfg.training_slice(), "sft", strong_dir, [writer.path("refined.parquet")])
        return StageOutput({**trained.metrics, **metrics}, {**(trained.info or {}), "engine": engine_info})

    return body
