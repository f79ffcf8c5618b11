"""Stage `teacher_signal`: how good the weak teacher's ranking of the strong samples is, by the gold
reward (w2s/teacher_signal.py): the gold reward of EVE's F-weighted training data over β/λ against
naive SFT's data (D_weak, or π_weak's K answers to EVE's prompts under `matched`) and best-of-K, pairwise and top-1 agreement of the weak log-ratio with the
gold ordering. Evaluation only: nothing trains on it. Part of `w2s run`; the report shows it.

    w2s run --config pipeline_config.yaml     # then see the report's "Weak-teacher signal" section
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
from w2s.artifacts import ArtifactRef, store_for
from w2s.baseline_data import read_scores, read_weak_demos
from w2s.config import GoldRewardSpec, PipelineConfig, SweepConfig
from w2s.config.base import Section
from w2s.devices import torch_device
from w2s.rewards import load_gold_reward
from w2s.stage import Body, StageOutput, stage
from w2s.tables import shard_paths
from w2s import teacher_signal as signals
from w2s.tracking import RunContext


class TeacherSignalSlice(Section):
    gold_reward: GoldRewardSpec
    beta_over_lambda: tuple[float, ...]
    naive_sft_data: str  # which data `demos` is: the label of the report's comparison row

    @classmethod
    def from_pipeline(cls, config: PipelineConfig) -> TeacherSignalSlice:
        # the paper's grid (fig. 5; the sweep's schema default), the run's own β/λ and every swept one:
        # computing a point costs nothing, training one costs a student
        betas = sorted({*SweepConfig().beta_over_lambda, config.weights.beta_over_lambda, *config.sweep.beta_over_lambda})
        return cls(gold_reward=config.models.gold_reward, beta_over_lambda=tuple(betas),
                   naive_sft_data=config.baselines.naive_sft_data)


# 2: compared against naive SFT's own data (matched demos under `matched`), not always D_weak
@stage(version=2, reads=TeacherSignalSlice.from_pipeline)
def teacher_signal(ctx: RunContext, cfg: TeacherSignalSlice, data: ArtifactRef, demos: ArtifactRef,
                   scores: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        store = store_for(ctx.artifact_root)
        samples = read_scores(shard_paths(scores, store), scores.stage)
        student = pq.read_table(store.materialise(data) / "student.parquet", columns=["prompt_id", "meta"])
        meta_of = dict(zip(student.column("prompt_id").to_pylist(), student.column("meta").to_pylist()))
        ids = samples.column("prompt_id").to_pylist()
        missing = sorted(set(ids) - set(meta_of))
        if missing:
            raise ValueError(f"{scores.stage}: prompt_ids {missing[:5]} are not in {data.stage}/student.parquet")
        reward = load_gold_reward(cfg.gold_reward, torch_device(ctx.device))
        gold = np.asarray(reward.score(samples.column("prompt").to_pylist(), samples.column("completion").to_pylist(),
                                       [meta_of[pid] for pid in ids]), np.float64)
        naive_data = read_weak_demos(store.materialise(demos), demos.stage)
        naive_gold = np.asarray(naive_data.column("gold_reward").to_numpy(zero_copy_only=False), np.float64)
        signal = signals.teacher_signal(ids, samples.column("logp_weak").to_numpy(), samples.column("logp_weak_ref").to_numpy(),
                                gold, naive_gold, list(cfg.beta_over_lambda))
        document = signal.as_json() | {"naive_sft_data": cfg.naive_sft_data}
        writer.write_bytes("signal.json", json.dumps(document, indent=1).encode())  # β/λ = ∞ dumps as Infinity
        signals.plot_signal(signal, writer.path("teacher_signal.png"), cfg.naive_sft_data)
        run.log_artifact(writer.path("teacher_signal.png"))
        return StageOutput({k: v for k, v in signal.metrics().items() if not math.isnan(v)})

    return body
