"""In-place weight swap for a running vLLM engine (loaded into vLLM's worker as `worker_extension_cls`).

An evaluation answers the test prompts with every checkpoint of one training run: same architecture,
same tokenizer, new weights. Starting an engine per checkpoint costs ~25 s on CPU; a swap costs
~0.2 s. vLLM's own `reload_weights` is not enough on CPU: it re-processes only the layers it loads,
and the tied `lm_head` loads nothing (it shares `embed_tokens`' weight) — but vLLM-cpu packs a
private copy of that weight for its GEMM (`cpu_linear`), so logits kept using the *old*
embeddings (greedy answers differed from a fresh engine on 4 of 4 prompts). After the reload every
layer that keeps its dense 2-D weight next to a packed copy is repacked from that weight. Layers
whose weight vLLM removed after packing were loaded, and so repacked, by the reload itself.
"""

from __future__ import annotations

import logging

NARROWING = "Attempted to load weight %s with dtype %s into parameter with dtype %s"


class IntendedNarrowing(logging.Filter):
    """Drops vLLM's per-tensor warning for fp32 weights loaded into bf16 parameters. A model trained
    under bf16 autocast is exported as its fp32 weights with `torch_dtype: bfloat16` in its config
    (w2s/training/engine.py), so vLLM computes it in bf16 by rounding each weight once, as intended;
    vLLM warned once per tensor per load or swap (~1,700 of a run's ~2,000 log lines). Every other
    dtype mismatch still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != NARROWING or len(record.args or ()) != 3:
            return True
        return tuple(str(a) for a in record.args[1:]) != ("torch.float32", "torch.bfloat16")


def quiet_intended_narrowing() -> None:
    """Installs the filter on the logger that warns (once per process)."""
    logger = logging.getLogger("vllm.model_executor.models.utils")
    if not any(isinstance(f, IntendedNarrowing) for f in logger.filters):
        logger.addFilter(IntendedNarrowing())


class WeightSwap:
    """Mixed into vLLM's worker; called through `LLM.collective_rpc("w2s_swap_weights", ...)`."""

    def w2s_swap_weights(self, weights_path: str) -> int:
        import torch
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        quiet_intended_narrowing()  # this is the engine-core process, which is not the w2s worker's on a GPU
        self.model_runner.reload_weights(weights_path=weights_path)
        repacked = 0
        for module in self.model_runner.get_model().modules():
            weight = getattr(module, "weight", None)
            if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.numel():
                dispatch_cpu_unquantized_gemm(module, remove_weight=False)
                repacked += 1
        return repacked
