"""Stage `evaluate_<policy>` (paper §5, §9.3, §9.5): a policy answers the test prompts, the gold
reward scores the answers → P(π); for policies trained from the strong base, the k3 estimate of
KL(π_θ‖π_ref_strong) from the same samples, each scored as it was drawn (y + the stop string it
stopped on, or y + EOS; Record.sampled), since k3 is unbiased only for the sample's own log-prob. The
gold reward sees y alone. Intermediate checkpoints of a training artifact are
evaluated too (PGR over training, figure 3).

Every policy draws its answer to a prompt with the same seed (derive_seed(run seed, "eval:" + id)),
so paired comparisons (win-rate) see common random numbers.

    w2s run --config pipeline_config.yaml --until evaluate_eve
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, model_serializer

from w2s.artifacts import ArtifactRef, ArtifactStore, store_for
from w2s.config import EvaluationConfig, GenerationEngineConfig, GoldRewardSpec, PipelineConfig
from w2s.evaluation import k3_terms, performance
from w2s.generation import answer_with, open_engine, pinned_backend
from w2s.devices import torch_device
from w2s.rewards import load_gold_reward
from w2s.scoring import score_rows
from w2s.stage import REGISTRY, Body, Stage, StageOutput, stage
from w2s.tables import model_dir
from w2s.tracking import RunContext

VERSION = 3  # v2: k3 scores y + its stop string, not y + EOS; v3: k3 in the format the sampler ran (as_sampled)
TABLE = "evaluation_samples.json"


class EvaluateSlice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    evaluation: EvaluationConfig
    engine: GenerationEngineConfig
    gold_reward: GoldRewardSpec
    seed: int

    @model_serializer(mode="wrap")
    def _old_keys_for_the_old_behaviour(self, handler):
        """The cache key's config: `kl_checkpoints` is named only when it is not `all`, the behaviour
        before the option existed, so evaluations cached then keep their keys."""
        dumped = handler(self)
        if dumped["evaluation"].get("kl_checkpoints") == "all":
            dumped["evaluation"] = {k: v for k, v in dumped["evaluation"].items() if k != "kl_checkpoints"}
        return dumped

    @classmethod
    def from_pipeline(cls, config: PipelineConfig) -> EvaluateSlice:
        from w2s.precision import resolve

        engine = pinned_backend(config.engines.generation)
        precision = config.evaluation.score_precision  # as_sampled depends on the models only (their digests)
        evaluation = config.evaluation.model_copy(update={"score_precision": precision if precision == "as_sampled" else resolve(precision)})
        return cls(evaluation=evaluation, engine=engine, gold_reward=config.models.gold_reward, seed=config.run.seed)

    def precision_of(self, model_dir) -> str:
        from w2s.precision import sampled_precision

        precision = self.evaluation.score_precision
        return sampled_precision(self.engine.backend, model_dir) if precision == "as_sampled" else precision


def policy_checkpoints(policy: ArtifactRef, store: ArtifactStore, with_intermediate: bool) -> list[dict]:
    """[{name, step, fraction, path}] of the final model and (if wanted) each kept checkpoint."""
    folder = model_dir(policy, store).parent
    manifest = store.read_manifest(policy.stage, policy.key)
    kept = (manifest.info.get("checkpoints") if manifest else None) or []
    final = {"name": "final", "step": (manifest.info.get("steps") if manifest else None), "fraction": 1.0, "path": folder / "model"}
    rows = [final]
    if with_intermediate:
        for c in kept:
            if c["path"] != "model":
                rows.append({"name": f"step-{c['step']}", "step": c["step"], "fraction": c["fraction"], "path": folder / c["path"]})
    return rows


def evaluate_policy(ctx: RunContext, cfg: EvaluateSlice, data: ArtifactRef, policy: ArtifactRef,
                    kl_ref: ArtifactRef | None = None) -> Body:
    def body(writer, run) -> StageOutput:
        store = store_for(ctx.artifact_root)
        test = pq.read_table(store.materialise(data) / "test.parquet")
        test = test.slice(0, min(cfg.evaluation.n_prompts or test.num_rows, test.num_rows))
        if test.num_rows == 0:
            raise ValueError(f"{data.stage} has no test prompts")
        reward = load_gold_reward(cfg.gold_reward, torch_device(ctx.device))
        ids, prompts, metas = (test.column(c).to_pylist() for c in ("prompt_id", "prompt", "meta"))
        points = policy_checkpoints(policy, store, cfg.evaluation.checkpoints)
        with open_engine(cfg.engine, points[0]["path"], cfg.seed) as engine:  # one engine; each checkpoint swapped in
            answered = []
            for point in points:
                engine.use_weights(point["path"])
                answers = answer_with(engine, cfg.seed, cfg.evaluation, ids, prompts, seed_salt="eval:", what="test prompts")
                answered.append([answers[pid] for pid in ids])
        n_kl = len(points) if cfg.evaluation.kl_checkpoints == "all" else 1  # points[0] is the final model
        kl = kl_logps(ctx, cfg, writer.stage, prompts, points[:n_kl], answered[:n_kl], kl_ref, store) if kl_ref is not None else None
        tables, metrics = [], {}
        for i, (point, records) in enumerate(zip(points, answered)):
            responses = [r.completion for r in records]
            gold = reward.score(prompts, responses, metas)
            columns = {
                "checkpoint": [point["name"]] * len(ids), "step": pa.array([point["step"]] * len(ids), pa.int64()),
                "fraction": pa.array([point["fraction"]] * len(ids), pa.float64()), "prompt_id": ids, "prompt": prompts,
                "response": responses, "n_tokens": pa.array([r.n_tokens for r in records], pa.int32()),
                "finish_reason": [r.finish_reason for r in records], "stop_string": [r.stop_string for r in records],
                "gold_reward": pa.array(gold, pa.float64()),
            }
            prefix = "" if point["name"] == "final" else f"{point['name']}/"
            metrics[f"{prefix}gold_reward"] = performance(gold)
            if kl is not None and i < len(kl.policy):
                logp, logp_ref = kl.policy[i], kl.reference[i]
                k3 = k3_terms(logp, logp_ref)
                columns |= {"logp_policy": logp, "logp_ref": logp_ref, "k3": k3}
                metrics[f"{prefix}kl_k3"] = float(np.mean(k3))
            if point["step"] is not None:  # MLflow draws these against the training step (fig. 3's curve)
                run.log_metrics({f"checkpoint/{name}": metrics[f"{prefix}{name}"] for name in ("gold_reward", "kl_k3")
                                 if f"{prefix}{name}" in metrics}, step=point["step"])
            tables.append(pa.table(columns))
        samples = pa.concat_tables(tables, promote_options="default")
        writer.write_parquet("samples.parquet", samples)
        shown = [c for c in ("checkpoint", "prompt_id", "prompt", "response", "gold_reward", "k3") if c in samples.column_names]
        run.log_table(samples.select(shown).to_pydict(), TABLE)  # MLflow's evaluation view: every answer, its reward, its k3
        return StageOutput(metrics, {"policy": writer.stage.removeprefix("evaluate_"), "n_prompts": len(ids),
                                     "kl_reference": kl_ref.stage if kl_ref is not None else None,
                                     "kl_precision": kl.precision if kl is not None else None})

    return body


class KLLogps(NamedTuple):
    policy: list[np.ndarray]  # per checkpoint, log π_θ of each answer
    reference: list[np.ndarray]  # per checkpoint, log π_ref of the same answers
    precision: dict[str, str]  # the format each side was scored in


def kl_logps(ctx: RunContext, cfg: EvaluateSlice, stage: str, prompts: list[str], points: list[dict], answered: list[list],
             kl_ref: ArtifactRef, store: ArtifactStore) -> KLLogps:
    """Per checkpoint, log π_θ and log π_ref of each answer as it was drawn (y + its stop string, or
    y + EOS; Record.sampled). π_ref is loaded once and scores every checkpoint's answers in one call."""
    device, batch = torch_device(ctx.device), cfg.evaluation.score_batch_tokens
    drawn = [[r.sampled() for r in records] for records in answered]
    formats = [cfg.precision_of(point["path"]) for point in points]
    policy = [np.array(score_rows(point["path"], prompts, [d for d, _ in rows], [e for _, e in rows], batch,
                                  f"{stage} {point['name']}", precision, device))
              for point, rows, precision in zip(points, drawn, formats)]
    ref_dir = model_dir(kl_ref, store)
    ref_format = cfg.precision_of(ref_dir)
    flat = [row for rows in drawn for row in rows]
    ref = np.array(score_rows(ref_dir, prompts * len(points), [d for d, _ in flat], [e for _, e in flat], batch,
                              f"{kl_ref.stage} (KL reference)", ref_format, device))
    return KLLogps(policy, list(ref.reshape(len(points), len(prompts))), {"policy": formats[0], "reference": ref_format})


def declare_evaluation(label: str) -> Stage:
    """`evaluate_<label>`: the evaluation of the policy declared `evaluated_as=label` (its own stage
    name, so MLflow, the stage table and offload say which policy)."""

    def evaluate(ctx: RunContext, cfg: EvaluateSlice, data: ArtifactRef, policy: ArtifactRef,
                 kl_ref: ArtifactRef | None = None) -> Body:
        return evaluate_policy(ctx, cfg, data, policy, kl_ref)

    return REGISTRY.get(f"evaluate_{label}") or stage(version=VERSION, reads=EvaluateSlice.from_pipeline, name=f"evaluate_{label}")(evaluate)


def declare_evaluations() -> None:
    """One evaluation stage per policy stage in the registry."""
    for label in [s.evaluated_as for s in list(REGISTRY.values()) if s.evaluated_as]:
        declare_evaluation(label)


def evaluate(label: str) -> Stage:
    """The evaluation stage of the policy `label` (a stage declared with `evaluated_as=label`)."""
    if not any(s.evaluated_as == label for s in REGISTRY.values()):
        known = sorted(s.evaluated_as for s in REGISTRY.values() if s.evaluated_as)
        raise ValueError(f"no stage is evaluated as {label!r}; policies: {', '.join(known)}")
    return declare_evaluation(label)
