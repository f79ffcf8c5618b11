"""Stage `weak_demos` (EVE stage 2): the weak teacher π_weak answers prompts.

* `weak_demos.parquet` — D_weak: π_weak's answers to the weak-demo prompts (naive-SFT and refinement
  baselines train on these), with their gold reward.
* `exemplars.parquet` — the held-out exemplar pool with π_weak's answers; the sampling stage draws
  its `sampling.num_shots` demonstrations from it (§9.6: per student prompt by default).
* `eval.parquet` — π_weak_ref's and π_weak's answers to `n_eval_prompts` test prompts and their gold
  reward, so MLflow shows whether DPO improved on SFT.

    w2s run --config pipeline_config.yaml --until weak_demos
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from w2s.artifacts import ArtifactRef, store_for
from w2s.config import GenerationEngineConfig, GoldRewardSpec, PipelineConfig, WeakDemosConfig
from w2s.generation import answer_each, pinned_backend
from w2s.devices import torch_device
from w2s.rewards import load_gold_reward
from w2s.stage import Body, StageOutput, stage
from w2s.tables import model_dir
from w2s.tracking import RunContext

class WeakDemosSlice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    demos: WeakDemosConfig
    engine: GenerationEngineConfig
    gold_reward: GoldRewardSpec
    seed: int

    @classmethod
    def from_pipeline(cls, config: PipelineConfig) -> WeakDemosSlice:
        engine = pinned_backend(config.engines.generation)
        return cls(demos=config.weak_demos, engine=engine, gold_reward=config.models.gold_reward, seed=config.run.seed)


def _answer(model: str, cfg: WeakDemosSlice, tables: list[pa.Table]) -> dict[str, dict]:
    ids = [pid for table in tables for pid in table.column("prompt_id").to_pylist()]
    prompts = [prompt for table in tables for prompt in table.column("prompt").to_pylist()]
    records = answer_each(cfg.engine, model, cfg.seed, cfg.demos, ids, prompts, what="prompts")
    return {pid: {"response": r.completion, "n_tokens": r.n_tokens, "finish_reason": r.finish_reason} for pid, r in records.items()}


def _with_answers(table: pa.Table, answers: dict[str, dict], reward) -> pa.Table:
    ids = table.column("prompt_id").to_pylist()
    rows = [answers[pid] for pid in ids]
    responses = [r["response"] for r in rows]
    gold = reward.score(table.column("prompt").to_pylist(), responses, table.column("meta").to_pylist())
    return pa.table({
        "prompt_id": ids, "prompt": table.column("prompt"), "response": responses,
        "n_tokens": pa.array([r["n_tokens"] for r in rows], pa.int32()), "finish_reason": [r["finish_reason"] for r in rows],
        "gold_reward": pa.array(gold, pa.float64()), "meta": table.column("meta"),
    })


@stage(version=2, reads=WeakDemosSlice.from_pipeline)
def weak_demos(ctx: RunContext, cfg: WeakDemosSlice, data: ArtifactRef, weak: ArtifactRef, weak_ref: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        store = store_for(ctx.artifact_root)
        folder = store.materialise(data)
        demo_prompts = pq.read_table(folder / "weak_demo.parquet")
        exemplar_prompts = pq.read_table(folder / "exemplar.parquet")
        test = pq.read_table(folder / "test.parquet")
        test = test.slice(0, min(cfg.demos.n_eval_prompts, test.num_rows))
        reward = load_gold_reward(cfg.gold_reward, torch_device(ctx.device))

        answers = _answer(str(model_dir(weak, store)), cfg, [demo_prompts, exemplar_prompts, test])
        ref_answers = _answer(str(model_dir(weak_ref, store)), cfg, [test])
        d_weak = _with_answers(demo_prompts, answers, reward)
        exemplars = _with_answers(exemplar_prompts, answers, reward)
        eval_weak, eval_ref = _with_answers(test, answers, reward), _with_answers(test, ref_answers, reward)
        writer.write_parquet("weak_demos.parquet", d_weak)
        writer.write_parquet("exemplars.parquet", exemplars)
        writer.write_parquet("eval.parquet", pa.concat_tables([
            eval_ref.append_column("policy", pa.array(["weak_ref"] * eval_ref.num_rows)),
            eval_weak.append_column("policy", pa.array(["weak"] * eval_weak.num_rows)),
        ]))
        metrics = {
            "gold_reward_test_weak_ref": float(np.mean(eval_ref.column("gold_reward").to_numpy())),
            "gold_reward_test_weak": float(np.mean(eval_weak.column("gold_reward").to_numpy())),
            "gold_reward_d_weak": float(np.mean(d_weak.column("gold_reward").to_numpy())),
            "gold_reward_exemplars": float(np.mean(exemplars.column("gold_reward").to_numpy())),
            "response_tokens_mean": float(np.mean(d_weak.column("n_tokens").to_numpy())),
            "finish_length_frac": float(np.mean([r == "length" for r in d_weak.column("finish_reason").to_pylist()])),
        }
        return StageOutput(metrics, {"exemplar_ids": exemplars.column("prompt_id").to_pylist()})

    return body
