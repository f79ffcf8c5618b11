"""The EVE pipeline (paper §3.3, §4.3; DESIGN.md steps 1–7) as a Prefect flow.

    w2s run --config pipeline_config.yaml              # the embedded CPU default, end to end
    w2s run --config configs/tiny.yaml --until data    # stop after a stage

Stages: data → strong_base → weak_base → weak_sft (π_weak_ref) → weak_dpo (π_weak) → weak_demos
(D_weak + 2 exemplars) → sampling (K few-shot samples of π_ref_strong) → scoring (log π_weak, log
π_weak_ref) → weights (F, eq. 8) → student (weighted MLE). Evaluation lands with its issue.
"""

from __future__ import annotations

from prefect import flow

from tasks.base_models import strong_base_task as strong_base
from tasks.base_models import weak_base_task as weak_base
from tasks.data import data_task as prepare_data
from tasks.sampling import sampling_task as strong_sampling
from tasks.scoring import scoring_task as scoring
from tasks.student import student_task as student
from tasks.weak_demos import weak_demos_task as weak_demos
from tasks.weak_dpo import weak_dpo_task as weak_dpo
from tasks.weak_sft import weak_sft_task as weak_sft
from tasks.weights import weights_task as f_weights
from w2s.config import PipelineConfig
from w2s.orchestration import PipelineState, pipeline_run


@flow(name="eve", log_prints=True)
def eve(config: PipelineConfig = PipelineConfig(), until: str | None = None) -> PipelineState:
    with pipeline_run(config.run_context(), "eve", config.model_dump(mode="json"), until) as run:
        data = prepare_data(run.ctx, config)
        strong = strong_base(run.ctx, config)
        weak = weak_base(run.ctx, config)
        weak_ref_model = weak_sft(run.ctx, config, data=data, base=weak)
        weak_model = weak_dpo(run.ctx, config, data=data, weak_ref=weak_ref_model)
        demos = weak_demos(run.ctx, config, data=data, weak=weak_model, weak_ref=weak_ref_model)
        samples = strong_sampling(run.ctx, config, exemplars=demos, data=data, strong=strong)
        scores = scoring(run.ctx, config, samples=samples, weak=weak_model, weak_ref=weak_ref_model)
        weights = f_weights(run.ctx, config, scores=scores)
        student(run.ctx, config, weights=weights, strong=strong)
    return run
