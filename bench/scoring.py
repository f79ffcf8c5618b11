"""Benchmark: the scoring stage's batched, KV-reusing core vs a naive per-sample forward pass.

    .venv/bin/python bench/scoring.py [--prompts 32] [--k 4] [--layers 4]

Model: the embedded default's weak model (SmolLM2-135M cut to `--layers` layers), two copies as
π_weak and π_weak_ref, like the stage. Data: the embedded task's prompts (TL;DR posts, several times
longer than the completions) with K candidate summaries each. Prints rows/s both ways, the ratio
(goal ≥ 5× on CPU) and the largest difference between the two (must be < 1e-4 in fp32).
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from w2s.config import DataConfig, ModelSpec
from w2s.data.splits import build_tables
from w2s.data.synthetic import candidate_summary, make_post
from w2s.models.build import load_spec
from w2s.scoring import length_buckets, score_batch, score_one, tokenise_group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer = load_spec(ModelSpec(source="smollm2_gguf", truncate_layers=args.layers))
    model.eval()
    models = [model, model]
    rng = random.Random(0)
    posts = [make_post(rng, 2, 5) for _ in range(args.prompts)]
    completions = [[candidate_summary(rng, p) for _ in range(args.k)] for p in posts]
    n_prompt = sum(len(tokenizer(p.prompt)["input_ids"]) for p in posts) / len(posts)
    n_completion = sum(len(tokenizer(c)["input_ids"]) for cs in completions for c in cs) / (len(posts) * args.k)
    print(f"{len(posts)} prompts × K={args.k}; mean prompt {n_prompt:.0f} tokens, completion {n_completion:.0f} tokens")
    rows = len(posts) * args.k
    max_length = model.config.max_position_embeddings

    t0 = time.perf_counter()
    naive = [[[score_one(m, tokenizer, p.prompt, c, max_length) for c in cs] for p, cs in zip(posts, completions)] for m in models]
    naive_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    groups = [tokenise_group(tokenizer, p.prompt, cs, max_length) for p, cs in zip(posts, completions)]
    batched = [[None] * len(groups) for _ in models]
    for batch in length_buckets(groups, args.batch_tokens):
        scores = score_batch(models, [groups[i] for i in batch], tokenizer.pad_token_id)
        for m in range(len(models)):
            for slot, gi in enumerate(batch):
                batched[m][gi] = scores[m][slot]
    batched_s = time.perf_counter() - t0

    diff = max(abs(a - b) for m in range(2) for g in range(len(groups)) for a, b in zip(naive[m][g], batched[m][g]))
    print(f"naive per-sample: {rows / naive_s:7.1f} rows/s ({naive_s:.2f}s, both models)")
    print(f"batched + KV:     {rows / batched_s:7.1f} rows/s ({batched_s:.2f}s, both models)")
    print(f"ratio batched/naive: {naive_s / batched_s:.2f}x   max |Δ logp| = {diff:.2e}")


if __name__ == "__main__":
    main()
