"""Synthetic misfit-vs-gain experiments (seed paper 001 §5.3, after Charikar et al. 2024) as a Prefect flow.

    w2s theory --config configs/theory.yaml                          # default: 3 settings × 3 losses, 100 tasks
    w2s theory --config configs/theory.yaml --set theory.n_finetune_tasks=20

Stages: theory_runs (ground truth h*, weak/strong representations, weak and weak-to-strong linear
heads per task; per-task misfit and gain; fraction of tasks with gain ≥ misfit) → theory_plots
(misfit vs gain with y = x per setting and loss, logged to MLflow). Rerunning reuses both stages.
"""

from __future__ import annotations

from prefect import flow

from tasks.theory import theory_plots as plot_misfit_vs_gain
from tasks.theory import theory_runs as weak_to_strong_runs
from w2s.orchestration import PipelineState, pipeline_run
from w2s.config.theory import TheoryPipelineConfig


@flow(name="w2s_theory", log_prints=True)
def w2s_theory(config: TheoryPipelineConfig = TheoryPipelineConfig(), until: str | None = None) -> PipelineState:
    with pipeline_run(config, "w2s_theory", until) as run:
        runs = weak_to_strong_runs(run.ctx, config)
        plot_misfit_vs_gain(run.ctx, config, runs=runs)
    return run
