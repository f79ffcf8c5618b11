"""Which float format forwards and training run in: bf16 where the hardware computes it natively
(a CUDA GPU, or a CPU with AMX or AVX512-BF16, where a bf16 GEMM runs ~7× an fp32 one on these
machines), fp32 elsewhere: an AVX2-only CPU emulates bf16, and a tiny Llama's training step under
bf16 autocast took 10× its fp32 step there (2-core EPYC, 2026-12-07). Numerics that need the range
stay fp32 whatever this says: log-softmax and the summed sequence log-probs (w2s/scoring.py), the loss and its accumulation, and the weights
and optimiser state: training in bf16 is autocast over fp32 weights (w2s/training/engine.py).

`auto` is resolved before a stage's key is computed, so an artifact says which format made it and
a machine that would compute in another format does not reuse it silently. bench/precision.py
measures the speed and what bf16 does to the log-probs and the F-weights' ranking.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@cache
def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (Linux flags; elsewhere no)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in _BF16_CPU_FLAGS)
    except OSError:
        pass
    return False


def resolve(precision: Precision, device: str = "auto") -> Literal["fp32", "bf16"]:
    if precision != "auto":
        return precision
    on_gpu = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    return "bf16" if on_gpu or cpu_has_bf16() else "fp32"


def torch_dtype(precision: Precision) -> torch.dtype:
    return torch.bfloat16 if resolve(precision) == "bf16" else torch.float32


def sampled_precision(backend: str, model_dir) -> Literal["fp32", "bf16"]:
    """The format a generation backend computes the model in `model_dir` in.

    vLLM runs a model in the dtype its config.json declares (a model trained in bf16 declares
    bfloat16, though its file holds the fp32 master weights); the transformers backend loads fp32.
    A bf16-trained checkpoint's fp32 masters carry sub-ulp updates that its bf16 forward never
    saw, so the two formats are different policies: on a student checkpoint vLLM's own log-prob of
    its samples was 3.3 nats above the fp32 forward's and 0.25 from the bf16 forward's (the base
    model, whose weights are bf16-exact: 0.16 and 0.22). The k3 KL is unbiased only for the log-prob
    of the distribution that drew the sample, so evaluation scores in this format (docs/results)."""
    if backend != "vllm":
        return "fp32"
    config = json.loads((Path(model_dir) / "config.json").read_text())
    declared = config.get("dtype") or config.get("torch_dtype")
    return "bf16" if declared == "bfloat16" else "fp32"
