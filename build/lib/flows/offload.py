"""The `eve-stage` flow: one stage of any flow on its own, the target of offload
(`orchestration.offload`; deployments/prefect.yaml: eve-stage-gpu).

    prefect deploy flows/offload.py:eve_stage --name eve-stage-gpu --pool gpu

The stage is looked up by name in the registry (`import tasks` declares every stage of every
flow) and runs with the same task, retries and cache as in the calling flow; both sides compute
the same key, so the artifact is handed over through the shared artifact root.
"""

from __future__ import annotations

from prefect import flow

import tasks
from w2s.artifacts import ArtifactRef
from w2s.config import OffloadConfig, PipelineConfig
from w2s.orchestration import infrastructure_overrides, run_as_task
from w2s.tracking import RunContext


@flow(name="eve-stage", log_prints=True)
def eve_stage(stage: str, config: PipelineConfig, ctx: RunContext, inputs: dict[str, ArtifactRef]) -> ArtifactRef:
    registry = tasks.all_stages()
    if stage not in registry:
        raise ValueError(f"eve-stage: unknown stage {stage!r}; one of {', '.join(registry)}")
    local = config.model_copy(update={"orchestration": config.orchestration.model_copy(update={"offload": OffloadConfig()})})
    return run_as_task(registry[stage], ctx.model_copy(update=infrastructure_overrides()), local, inputs)
