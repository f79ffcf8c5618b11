"""EVE against the paper's baselines (§5, §11.1, §11.2), every policy evaluated, one PGR report.

    w2s baselines --config pipeline_config.yaml
    w2s baselines --config configs/tiny.yaml --until naive_sft

Policies: π_weak; the strong ceiling; EVE and naive SFT (as the `eve` flow trains them); Refinement (the strong model rewrites
D_weak, §9.6, then SFT); DPO with the weak reward (pairs of strong samples ranked by the weak
log-ratio, β = 0.05); the strong student as evaluator (§11.1). Every stage EVE shares is reused
from the `eve` flow's cache.
"""

from __future__ import annotations

from prefect import flow

from flows.eve import anchor_evaluations, evaluate_students, eve_diagnostics, eve_stages
from tasks.dpo_weak_reward import dpo_weak_reward
from tasks.evaluate import evaluate
from tasks.refinement import refinement
from tasks.report import report
from tasks.strong_evaluator import strong_evaluator
from w2s.artifacts import ArtifactRef
from w2s.config import PipelineConfig
from w2s.config.presets import PipelinePreset
from w2s.orchestration import PipelineState, embedded_default, pipeline_run
from w2s.tracking import RunContext


def all_policies(ctx: RunContext, config: PipelineConfig) -> tuple[dict[str, ArtifactRef], dict[str, ArtifactRef]]:
    """Each policy trained and evaluated (label → its evaluation artifact), and EVE's diagnostics."""
    eve = eve_stages(ctx, config)
    trained = {
        "refinement": refinement(ctx, config, demos=eve.demos, strong=eve.strong),
        "dpo_weak_reward": dpo_weak_reward(ctx, config, scores=eve.scores, strong=eve.strong),
        "strong_evaluator": strong_evaluator(ctx, config, demos=eve.demos, strong=eve.strong, weak_ref=eve.weak_ref),
    }
    evaluations = anchor_evaluations(ctx, config, eve) | evaluate_students(ctx, config, eve)
    for name, policy in trained.items():
        evaluations[name] = evaluate(name)(ctx, config, data=eve.data, policy=policy, kl_ref=eve.strong)
    return evaluations, eve_diagnostics(ctx, config, eve)


@flow(name="baselines", log_prints=True)
def baselines(config: PipelineConfig = embedded_default(), preset: PipelinePreset | None = None, until: str | None = None) -> PipelineState:
    with pipeline_run(config, "baselines", until, preset=preset) as run:
        evaluations, diagnostics = all_policies(run.ctx, run.config)
        report(run.ctx, run.config, evaluations=evaluations, **diagnostics)
    return run
