"""The EVE pipeline (paper §3.3, §4.3; DESIGN.md steps 1–7) as a Prefect flow.

    w2s run --config pipeline_config.yaml              # the embedded CPU default, end to end
    w2s run --config configs/tiny.yaml --until data    # stop after a stage

Stages built so far: data → strong_base → weak_base → weak_sft → weak_dpo. The rest of the figure (weak_demos → sampling → scoring → weights → student → evaluation) lands stage by stage.
"""

from __future__ import annotations

from prefect import flow

from tasks.base_models import strong_base_task as strong_base
from tasks.base_models import weak_base_task as weak_base
from tasks.data import data_task as prepare_data
from tasks.weak_demos import weak_demos_task as weak_demos
from tasks.weak_dpo import weak_dpo_task as weak_dpo
from tasks.weak_sft import weak_sft_task as weak_sft
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
    return run
