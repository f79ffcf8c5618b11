"""Benchmark: the scoring stage's batched, prompt-sharing core vs a naive per-sample forward pass.

    .venv/bin/python bench/scoring.py [--prompts 32] [--k 4] [--layers 4] [--filler 2 5] [--repeats 3]

Model: the embedded default's weak model (SmolLM2-135M cut to `--layers` layers), two copies as
π_weak and π_weak_ref, like the stage. Data: the embedded task's prompts (TL;DR posts with `--filler`
filler sentences, several times longer than the completions) with K candidate summaries each. Both ways
run alternately `--repeats` times in this process (so a busy machine slows both alike); prints rows/s,
the ratio per repeat and its median (goal ≥ 5× on CPU) and the largest difference between the two.
That difference is fp32 rounding, about 1e-4 here: the 4-layer cut scores completions at ~-300 nats,
and against an fp64 pass the naive side is off by as much as the batched one (6e-5 vs 7e-5 on 8
prompts); the 1e-4 equivalence bound is checked on small sums in tests/test_scoring.py.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from w2s.config import ModelSpec
from w2s.data.synthetic import candidate_summary, make_post
from w2s.models.build import load_spec
from w2s.scoring import score_groups, score_one, tokenise_group


def naive(models, tokenizer, posts, completions, max_length):
    return [[[score_one(m, tokenizer, p.prompt, c, max_length) for c in cs] for p, cs in zip(posts, completions)] for m in models]


def batched(models, tokenizer, posts, completions, max_length, batch_tokens):
    groups = [tokenise_group(tokenizer, p.prompt, cs, max_length) for p, cs in zip(posts, completions)]
    return score_groups(models, groups, tokenizer.pad_token_id, batch_tokens)


def timed(fn, *args):
    started = time.perf_counter()
    return fn(*args), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--filler", type=int, nargs=2, default=(2, 5), metavar=("MIN", "MAX"))
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer = load_spec(ModelSpec(source="smollm2_gguf", truncate_layers=args.layers))
    model.eval()
    models = [model, model]
    rng = random.Random(0)
    posts = [make_post(rng, *args.filler) for _ in range(args.prompts)]
    completions = [[candidate_summary(rng, p) for _ in range(args.k)] for p in posts]
    n_prompt = sum(len(tokenizer(p.prompt)["input_ids"]) for p in posts) / len(posts)
    n_completion = sum(len(tokenizer(c)["input_ids"]) for cs in completions for c in cs) / (len(posts) * args.k)
    print(f"{len(posts)} prompts × K={args.k}; mean prompt {n_prompt:.0f} tokens, completion {n_completion:.0f} tokens; "
          f"{torch.get_num_threads()} threads")
    rows = len(posts) * args.k
    max_length = model.config.max_position_embeddings
    batched(models, tokenizer, posts[:2], completions[:2], max_length, args.batch_tokens)  # warm-up
    naive(models, tokenizer, posts[:1], completions[:1], max_length)
    ratios = []
    for repeat in range(args.repeats):
        slow, naive_s = timed(naive, models, tokenizer, posts, completions, max_length)
        fast, batched_s = timed(batched, models, tokenizer, posts, completions, max_length, args.batch_tokens)
        diff = max(abs(a - b) for m in range(2) for g in range(len(posts)) for a, b in zip(slow[m][g], fast[m][g]))
        ratios.append(naive_s / batched_s)
        print(f"[{repeat}] naive {rows / naive_s:6.1f} rows/s ({naive_s:.2f}s), batched {rows / batched_s:6.1f} rows/s "
              f"({batched_s:.2f}s), both models; ratio {ratios[-1]:.2f}x, max |Δ logp| = {diff:.2e}")
    print(f"ratio batched/naive: median {statistics.median(ratios):.2f}x over {len(ratios)} repeats")


if __name__ == "__main__":
    main()
