"""Where forwards run, and whether the machine has the GPUs a config asks for.

`run.device` (auto | cpu | cuda) places every forward pass the pipeline makes outside DeepSpeed
and vLLM: scoring (EVE stage 4), the KL scoring and the gold reward of evaluation, the gold reward of
D_weak, refinement and the teacher-signal gate, and the strong-as-evaluator baseline. `auto` is
CUDA when a GPU is visible. It is not in any cache key: the device changes a stage's numerics only
as its precision does, and precision is in the key (w2s/precision.py). Training ranks and vLLM pick
their device themselves (DeepSpeed's accelerator, vLLM's platform).

`check_gpus` is the preflight: on a machine with GPUs, the training ranks and the vLLM engines
(data_parallel_size replicas of tensor_parallel_size GPUs) must each fit in the GPUs this process
sees, or the run stops before compute with one line naming the key. `check_pod_gpus` makes the same comparison against a Kubernetes pod's
`gpu_count`, so `w2s config validate FILE --pod-gpus N` catches a deployment that would start a
pod too small for the config. On CPU (no GPU visible, or run.device: cpu) ranks are CPU processes
over gloo and any count runs.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

Device = Literal["auto", "cpu", "cuda"]


def torch_device(device: Device = "auto") -> str:
    """The torch device string for `run.device` on this machine."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"run.device=cuda but no CUDA GPU is visible here ({_visible_note()})")
    return device


def gpus_needed(config) -> dict[str, int]:
    """GPUs each engine of `config` needs at once, by the key that asks for them."""
    generation = config.engines.generation
    if generation.data_parallel_size == 1:
        generation_key = ("engines.generation.tensor_parallel_size", generation.tensor_parallel_size)
    else:  # the replicas run at once, each on its own tensor-parallel group
        generation_key = ("engines.generation.data_parallel_size×tensor_parallel_size",
                          generation.data_parallel_size * generation.tensor_parallel_size)
    training = config.engines.training
    # with nodes > 1 the ranks run in pods of their own (each asks for world_size / nodes GPUs), not here
    needed = {"engines.training.world_size": training.world_size} if training.nodes == 1 else {}
    return needed | {generation_key[0]: generation_key[1]}


def _visible_note() -> str:
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"CUDA_VISIBLE_DEVICES={shown!r}" if shown is not None else "CUDA_VISIBLE_DEVICES unset"


def gpu_shortfall(config, available: int, where: str) -> str | None:
    """The first engine that needs more than `available` GPUs, as one line; None when all fit."""
    for key, n in gpus_needed(config).items():
        if n > available:
            return f"{key}={n} needs {n} GPUs; {where} has {available}"
    return None


def check_gpus(config, visible: int | None = None) -> str | None:
    """The preflight on this machine: a one-line problem, or None."""
    visible = torch.cuda.device_count() if visible is None else visible
    if config.run.device == "cuda" and visible == 0:
        return f"run.device=cuda but no CUDA GPU is visible ({_visible_note()})"
    if config.run.device == "cpu" or visible == 0:
        return None
    problem = gpu_shortfall(config, visible, "this machine")
    return f"{problem} visible ({_visible_note()})" if problem else None


def check_pod_gpus(config, gpu_count: int) -> str | None:
    """The same check against the GPUs a pod template requests (its `gpu_count` job variable)."""
    if config.run.device == "cpu":
        return None
    return gpu_shortfall(config, gpu_count, f"a pod with gpu_count={gpu_count}")
