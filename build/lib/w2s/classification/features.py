"""Frozen LM features: pooled hidden states, extracted once and cached as .npy (no pickle).

A model cut to its first k decoder layers ends in `norm(h_k)` (the final norm applied to the residual
stream after layer k; w2s/models/build.py truncates exactly so). One forward pass of the strong model
therefore yields the features of every truncation of it: the bootstrapping chain's intermediate
models cost no extra forward. `layer=None` means the model's own last layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from w2s.config.classification import FeaturesConfig


def layer_name(layer: int | None) -> str:
    return "final" if layer is None else f"L{layer}"


@torch.no_grad()
def extract(model_dir: str | Path, texts: Sequence[str], layers: Sequence[int | None], cfg: FeaturesConfig) -> dict[str, np.ndarray]:
    from w2s.models.build import load_pretrained

    model, tokenizer = load_pretrained(model_dir)
    model.eval()
    depth = model.config.num_hidden_layers
    for layer in layers:
        if layer is not None and not 1 <= layer <= depth:
            raise ValueError(f"layer {layer} outside 1..{depth} of {model_dir}")
    tokenizer.padding_side = "right"
    base = model.model  # decoder stack without the LM head: the head's logits are not needed
    pooled: dict[str, list[np.ndarray]] = {layer_name(layer): [] for layer in layers}
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch: little padding
    for start in range(0, len(texts), cfg.batch_size):
        chunk = [texts[i] for i in order[start : start + cfg.batch_size]]
        batch = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=cfg.max_length)
        out = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        last = batch["attention_mask"].sum(1) - 1
        for layer in layers:
            # hidden_states[-1] is already normed; hidden_states[k] is the raw residual after k layers
            h = out.hidden_states[-1] if layer is None or layer == depth else base.norm(out.hidden_states[layer])
            if cfg.pooling == "mean":
                vec = (h * mask).sum(1) / mask.sum(1)
            else:
                vec = h[torch.arange(h.shape[0]), last]
            pooled[layer_name(layer)].append(vec.float().numpy())
    inverse = np.argsort(np.asarray(order))
    return {name: np.concatenate(chunks)[inverse].astype(np.float32) for name, chunks in pooled.items()}
