"""Stage `matched_demos` (paper §5, fig. 6): naive SFT's training data at EVE's training-set size.
π_weak answers each of EVE's student prompts `sampling.k` times, zero-shot, as it answers the
weak-demo prompts for D_weak; naive SFT then trains on n_student·K rows on the same prompts EVE
trains on, where D_weak gives it n_weak_demo rows on other prompts. Used when
`baselines.naive_sft_data: matched`; the K sweep (`w2s sweep`, fig. 6) then scales both methods.

    w2s run --config pipeline_config.yaml --set baselines.naive_sft_data=matched --until matched_demos

Output: `weak_demos.parquet` with D_weak's columns plus `sample_idx` (a prompt_id repeats K times),
and its mean gold reward (`gold_reward_matched`, comparable to weak_demos' `gold_reward_d_weak`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from w2s.artifacts import ArtifactRef, store_for
from w2s.config import GenerationEngineConfig, GoldRewardSpec, PipelineConfig, WeakDemosConfig
from w2s.devices import torch_device
from w2s.generation import Request, derive_seed, open_engine, pinned_backend
from w2s.rewards import load_gold_reward
from w2s.stage import Body, StageOutput, stage
from w2s.tables import model_dir
from w2s.tracking import RunContext


class MatchedDemosSlice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    demos: WeakDemosConfig  # π_weak answers as it does for D_weak: same temperature, length, stops
    k: int
    engine: GenerationEngineConfig
    gold_reward: GoldRewardSpec
    seed: int

    @classmethod
    def from_pipeline(cls, config: PipelineConfig) -> MatchedDemosSlice:
        return cls(demos=config.weak_demos, k=config.sampling.k, engine=pinned_backend(config.engines.generation),
                   gold_reward=config.models.gold_reward, seed=config.run.seed)


def matched_requests(cfg: MatchedDemosSlice, student: pa.Table) -> list[Request]:
    # the salt keeps these draws independent of D_weak's and the evaluation's seeds for the same id
    return [Request(pid, prompt, n=cfg.k, seed=derive_seed(cfg.seed, "matched:" + pid))
            for pid, prompt in zip(student.column("prompt_id").to_pylist(), student.column("prompt").to_pylist())]


@stage(version=1, reads=MatchedDemosSlice.from_pipeline)
def matched_demos(ctx: RunContext, cfg: MatchedDemosSlice, data: ArtifactRef, weak: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        store = store_for(ctx.artifact_root)
        student = pq.read_table(store.materialise(data) / "student.parquet")
        with open_engine(cfg.engine, model_dir(weak, store), cfg.seed) as engine:
            result = engine.generate(matched_requests(cfg, student), cfg.demos)
        if result.skipped:
            raise ValueError(f"student prompts {result.skipped[:5]} do not fit π_weak with max_tokens={cfg.demos.max_tokens}")
        rows = {pid: i for i, pid in enumerate(student.column("prompt_id").to_pylist())}
        records = sorted(result.records, key=lambda r: (rows[r.request_id], r.sample_idx))
        at = [rows[r.request_id] for r in records]
        prompts, metas = student.column("prompt").take(at), student.column("meta").take(at)
        responses = [r.completion for r in records]
        gold = load_gold_reward(cfg.gold_reward, torch_device(ctx.device)).score(prompts.to_pylist(), responses, metas.to_pylist())
        table = pa.table({
            "prompt_id": [r.request_id for r in records], "sample_idx": pa.array([r.sample_idx for r in records], pa.int32()),
            "prompt": prompts, "response": responses, "n_tokens": pa.array([r.n_tokens for r in records], pa.int32()),
            "finish_reason": [r.finish_reason for r in records], "gold_reward": pa.array(gold, pa.float64()), "meta": metas,
        })
        writer.write_parquet("weak_demos.parquet", table)
        return StageOutput({"rows": table.num_rows, "gold_reward_matched": float(np.mean(gold)),
                            "response_tokens_mean": float(np.mean(table.column("n_tokens").to_numpy()))}, {})

    return body
