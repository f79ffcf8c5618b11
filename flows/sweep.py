"""Seeds and the β/λ / K sweeps (paper §5 figures 5, 6): every baseline (or, with `sweep.baselines:
false`, the paper's main comparison only) on each seed in `sweep.seeds`, EVE again at each β/λ in `sweep.beta_over_lambda` and each K in `sweep.k`, one report
with mean ± 95 % CI over seeds. A β/λ point reruns only weights → student → evaluation; a K point
reruns sampling and what follows, and naive SFT too when it trains at EVE's size
(`baselines.naive_sft_data: matched`, fig. 6 scales both); everything else comes from the cache.

    w2s sweep --config pipeline_config.yaml --set "sweep.seeds=[0,1,2]"
    w2s report --flow sweep --config pipeline_config.yaml --set "sweep.seeds=[0,1,2]" --set sweep.baselines=false \
        --set "sweep.beta_over_lambda=[]"      # EVE vs naive SFT paired by seed, as three `w2s run`s left them
"""

from __future__ import annotations

from prefect import flow

from flows.baselines import all_policies
from flows.eve import evaluate_eve, evaluate_students, eve_policies, eve_stages
from tasks.report import report
from w2s.artifacts import ArtifactRef
from w2s.config import PipelineConfig
from w2s.config.presets import PipelinePreset
from w2s.config.loading import with_values
from w2s.orchestration import PipelineState, embedded_default, pipeline_run
from w2s.tracking import RunContext


def sweep_points(config: PipelineConfig) -> list[tuple[str, PipelineConfig, str]]:
    """(label suffix, config, the swept key) of every extra EVE run the sweep asks for, per seed."""
    points = []
    for seed in config.sweep.seeds:
        seeded = with_values(config, **{"run.seed": seed})
        points += [(f"seed:{seed}/beta_over_lambda:{value:g}", with_values(seeded, **{"weights.beta_over_lambda": value}),
                    "beta_over_lambda") for value in config.sweep.beta_over_lambda]
        points += [(f"seed:{seed}/k:{k}", with_values(seeded, **{"sampling.k": k}), "k") for k in config.sweep.k]
    return points


def seeded_policies(ctx: RunContext, config: PipelineConfig) -> tuple[dict[str, ArtifactRef], dict[str, ArtifactRef]]:
    """Every policy (or, with `sweep.baselines: false`, the eve flow's: the anchors, EVE, naive SFT) on
    every seed, and the first seed's EVE diagnostics (weights, teacher signal)."""
    policies = all_policies if config.sweep.baselines else eve_policies
    evaluations, first_diagnostics = {}, None
    for seed in config.sweep.seeds:
        found, diagnostics = policies(ctx, with_values(config, **{"run.seed": seed}))
        evaluations |= {f"{label}/seed:{seed}": ref for label, ref in found.items()}
        first_diagnostics = first_diagnostics or diagnostics
    return evaluations, first_diagnostics


def swept_students(ctx: RunContext, config: PipelineConfig) -> dict[str, ArtifactRef]:
    """EVE at every sweep point; naive SFT beside it at a K point only when K sizes its data."""
    found = {}
    for suffix, point, swept in sweep_points(config):
        eve = eve_stages(ctx, point)
        if swept == "k" and point.baselines.naive_sft_data == "matched":
            found |= {f"{policy}/{suffix}": ref for policy, ref in evaluate_students(ctx, point, eve).items()}
        else:
            found[f"eve/{suffix}"] = evaluate_eve(ctx, point, eve)
    return found


@flow(name="sweep", log_prints=True)
def sweep(config: PipelineConfig = embedded_default(), preset: PipelinePreset | None = None, until: str | None = None) -> PipelineState:
    with pipeline_run(config, "sweep", until, preset=preset) as run:
        evaluations, diagnostics = seeded_policies(run.ctx, run.config)
        report(run.ctx, run.config, evaluations=evaluations | swept_students(run.ctx, run.config), **diagnostics)
    return run
