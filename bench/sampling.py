"""Strong-reference sampling throughput: the stage on vLLM vs transformers `generate` vs raw `LLM.generate`.

    .venv/bin/python bench/sampling.py [--prompts 16 --k 4 --max-tokens 48 --model DIR]

All three runs get the same 2-shot TL;DR prompts (embedded task), the same K and max_tokens, and no
stop sequence (every sample runs to max_tokens unless EOS), so tokens/s compare like for like.
- transformers: one left-padded `generate(do_sample=True, num_return_sequences=K)` over all prompts.
- stage: `tasks.sampling.sampling` with the vLLM backend; its rate is generated tokens over the stage's
  wall time minus engine init and shutdown (fixed per run, printed apart; data reads, prompt
  building, checks, IPC, the prefix warm-up, Parquet and MLflow are all included).
- raw: `vllm.LLM` in this process with the same engine arguments and seeds, one `generate` call.
Goals (issues 4, 18): stage ≥ 10× transformers (bf16); stage ≥ 0.8× raw. Results: README's bench table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_inputs(ctx, model_dir: Path, n_prompts: int):
    from tests.test_sampling import make_inputs

    return make_inputs(ctx, model_dir, n_student=n_prompts)


def fewshot_prompts(refs) -> list[str]:
    import pyarrow.parquet as pq

    from w2s.generation import fewshot_prompt

    demos = pq.read_table(refs["exemplars"].local_dir() / "exemplars.parquet")
    pairs = list(zip(demos.column("prompt").to_pylist(), demos.column("response").to_pylist()))
    return [fewshot_prompt("tldr", pairs, p) for p in pq.read_table(refs["data"].local_dir() / "student.parquet").column("prompt").to_pylist()]


def bench_transformers(model_dir: Path, prompts: list[str], k: int, max_tokens: int, dtype: str) -> dict:
    import torch

    from w2s.models.build import load_pretrained

    model, tok = load_pretrained(model_dir, dtype=getattr(torch, dtype))
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=k,
                             max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id)
    wall = time.perf_counter() - started
    new = out[:, enc["input_ids"].shape[1]:]
    eos = tok.eos_token_id
    tokens = sum(int((row == eos).nonzero()[0, 0]) + 1 if (row == eos).any() else row.shape[0] for row in new)
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall}


def bench_stage(ctx, refs, k: int, max_tokens: int) -> dict:
    from tasks.sampling import SamplingStageConfig, sampling
    from w2s.config import GenerationEngineConfig, SamplingConfig

    cfg = SamplingStageConfig(sampling=SamplingConfig(k=k, max_tokens=max_tokens, stop=[], shard_rows=100_000),
                              engine=GenerationEngineConfig(backend="vllm"), seed=0)
    started = time.perf_counter()
    ref = sampling.run(ctx, cfg, **refs)
    wall = time.perf_counter() - started
    metrics = json.loads((ref.local_dir() / "manifest.json").read_text())["metrics"]
    # engine init and shutdown are fixed costs per stage run, reported apart (raw excludes them too)
    work = wall - metrics["engine_init_s"] - metrics["engine_close_s"]
    return {"tokens": metrics["generated_tokens"], "wall_s": wall, "init_s": metrics["engine_init_s"], "work_s": work,
            "close_s": metrics["engine_close_s"], "generate_s": metrics["generate_s"], "tok_s": metrics["generated_tokens"] / work,
            "tok_s_with_close": metrics["generated_tokens"] / (work + metrics["engine_close_s"]),
            "prefill_requested": metrics["prefill_requested"], "prefill_computed": metrics.get("prefill_computed")}


def bench_raw_vllm(model_dir: Path, prompts: list[str], ids: list[str], k: int, max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    from w2s.config import GenerationEngineConfig
    from w2s.generation import derive_seed
    from w2s.generation.requests import model_context
    from w2s.generation.vllm_backend import llm_kwargs, worker_env

    engine_cfg = GenerationEngineConfig(backend="vllm")
    # the same OpenMP binding the stage's engine process gets (this process hosts the engine here)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = worker_env(engine_cfg)["VLLM_CPU_OMP_THREADS_BIND"]
    started = time.perf_counter()
    llm = LLM(**llm_kwargs(engine_cfg, str(model_dir), 0, model_context(model_dir)))
    init = time.perf_counter() - started
    params = [SamplingParams(n=k, seed=derive_seed(0, i), temperature=1.0, top_p=1.0, max_tokens=max_tokens) for i in ids]
    started = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - started
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {"tokens": tokens, "wall_s": wall, "init_s": init, "tok_s": tokens / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--model", type=Path, default=None, help="HF folder; default the SmolLM2-135M test cache")
    parser.add_argument("--hf-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args()

    from tests.conftest import _build_once
    from tests.test_sampling import make_ctx

    model_dir = args.model or _build_once("smollm2-135m-instruct-v1", {"source": "smollm2_gguf"})
    with tempfile.TemporaryDirectory(prefix="bench-sampling-") as tmp:
        ctx = make_ctx(Path(tmp) / "artifacts")
        refs = build_inputs(ctx, Path(model_dir), args.prompts)
        prompts = fewshot_prompts(refs)
        import pyarrow.parquet as pq

        ids = pq.read_table(refs["data"].local_dir() / "student.parquet").column("prompt_id").to_pylist()
        print(f"# {len(prompts)} prompts x K={args.k} x max_tokens={args.max_tokens}, no stop; prompt chars mean "
              f"{sum(map(len, prompts)) / len(prompts):.0f}; model {model_dir}", flush=True)
        hf = None if args.skip_hf else bench_transformers(Path(model_dir), prompts, args.k, args.max_tokens, args.hf_dtype)
        if hf:
            print(f"transformers generate ({args.hf_dtype}): {hf['tok_s']:8.1f} tok/s  ({hf['tokens']} tokens in {hf['wall_s']:.1f} s)", flush=True)
        stage = bench_stage(ctx, refs, args.k, args.max_tokens)
        print(f"stage on vLLM             : {stage['tok_s']:8.1f} tok/s  ({stage['tokens']} tokens; stage {stage['wall_s']:.1f} s "
              f"= engine init {stage['init_s']:.1f} s + {stage['work_s']:.1f} s + engine shutdown {stage['close_s']:.1f} s; generate calls {stage['generate_s']:.1f} s; "
              f"prefill computed {stage['prefill_computed']} of {stage['prefill_requested']} tokens)", flush=True)
        raw = bench_raw_vllm(Path(model_dir), prompts, ids, args.k, args.max_tokens)
        print(f"raw LLM.generate          : {raw['tok_s']:8.1f} tok/s  ({raw['tokens']} tokens in {raw['wall_s']:.1f} s; init {raw['init_s']:.1f} s)")
        if hf:
            print(f"stage / transformers      : {stage['tok_s'] / hf['tok_s']:8.2f}x  (goal >= 10)")
        print(f"stage / raw LLM.generate  : {stage['tok_s'] / raw['tok_s']:8.2f}   (goal >= 0.8; "
              f"{stage['tok_s_with_close'] / raw['tok_s']:.2f} counting the engine shutdown)")


if __name__ == "__main__":
    main()
