"""Benchmark: bf16 vs fp32 on this CPU — speed of a training step and of scoring, the fraction of the
bf16 GEMM peak the training step reaches, and what bf16 does to the science (log-probs, F-weights).

    .venv/bin/python bench/precision.py [--root artifacts] [--steps 6] [--rows 64] [--repeats 2]

Everything runs in this one process, fp32 and bf16 alternately `--repeats` times, so a busy
machine slows both alike; each figure is the median over repeats.

- GEMM peak: a 2048³ matmul in bf16 and in fp32 (best of 10), TFLOP/s.
- Training: the trainer (DeepSpeed ZeRO-0, weighted MLE) on SmolLM2-135M, `--steps` optimiser
  steps at batch 8; tokens/s from the trainer's own history (first step not timed); achieved FLOP/s
  = 6 · parameters · tokens/s (forward + backward; attention's share is small at these lengths),
  as a fraction of the bf16 GEMM peak measured here.
- Scoring: the scoring stage's batched core (w2s/scoring.py) with π_weak and π_weak_ref. On the
  embedded default's real artifacts when `--root` has them (weak_dpo, weak_sft, sampling: run
  `w2s run --config pipeline_config.yaml --until sampling` first), otherwise SmolLM2-135M and its
  4-layer cut on the embedded task's prompts (said in the output).
- Science: per row, |Δ log π| between fp32 and bf16 for each model and |Δ| of the log-ratio
  log π_weak − log π_weak_ref; per prompt, the Spearman rank correlation of the F-weights (eq. 8,
  β/λ = 1) computed from fp32 vs bf16 log-probs, and how often the top-weighted sample is the same.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s.config import ModelSpec, StudentConfig, TrainingEngineConfig  # noqa: E402
from w2s.models.build import load_pretrained, load_spec, save_model  # noqa: E402
from w2s.precision import cpu_has_bf16  # noqa: E402
from w2s.scoring import score_groups, tokenise_group  # noqa: E402
from w2s.weights import eve_weights  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gemm_tflops(dtype: torch.dtype, n: int = 2048, tries: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: oneDNN picks its kernel
    best = min(_timed(lambda: a @ b) for _ in range(tries))
    return 2 * n**3 / best / 1e12


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


# ------------------------------------------------------------------------------ inputs
def model_folders(root: Path, work: Path) -> tuple[Path, Path, str]:
    """(π_weak, π_weak_ref, what they are): the run's weak teacher if `root` has it, else stand-ins."""
    weak, ref = sorted(root.glob("weak_dpo/*/model")), sorted(root.glob("weak_sft/*/model"))
    if weak and ref:
        return weak[-1], ref[-1], f"the run's π_weak / π_weak_ref ({weak[-1].parent.name[:12]})"
    folders = []
    for name, layers in (("full", None), ("cut", 4)):
        model, tokenizer = load_spec(ModelSpec(source="smollm2_gguf", truncate_layers=layers))
        save_model(model, tokenizer, work / name)
        folders.append(work / name)
    return folders[0], folders[1], "stand-ins: SmolLM2-135M and its 4-layer cut (no run artifacts under --root)"


def samples(root: Path, rows: int) -> tuple[pa.Table, str]:
    shards = sorted(root.glob("sampling/*/shards/*.parquet"))
    if shards:
        table = pa.concat_tables(pq.read_table(p, columns=["prompt_id", "prompt", "completion", "finish_reason"]) for p in shards)
        return table.slice(0, rows), f"{min(rows, table.num_rows)} real π_ref_strong samples ({shards[0].parents[1].name[:12]})"
    from w2s.data.synthetic import candidate_summary, make_post
    import random

    rng = random.Random(0)
    posts = [make_post(rng, 2, 5) for _ in range(max(1, rows // 4))]
    ids, prompts, completions = [], [], []
    for i, post in enumerate(posts):
        for _ in range(4):
            ids.append(f"p{i}")
            prompts.append(post.prompt)
            completions.append(candidate_summary(rng, post))
    return pa.table({"prompt_id": ids, "prompt": prompts, "completion": completions, "finish_reason": ["stop"] * len(ids)}), \
        f"{len(ids)} synthetic candidate summaries (no sampling artifact under --root)"


# ------------------------------------------------------------------------------ measurements
def score(folders, table: pa.Table, precision: str) -> tuple[list[np.ndarray], float]:
    models, tokenizer = [], None
    for folder in folders:
        model, tokenizer = load_pretrained(folder, dtype=DTYPES[precision])
        models.append(model.eval())
    rows = {}
    for i, pid in enumerate(table.column("prompt_id").to_pylist()):
        rows.setdefault(pid, []).append(i)
    prompts, completions = table.column("prompt").to_pylist(), table.column("completion").to_pylist()
    ended = [r == "stop" for r in table.column("finish_reason").to_pylist()]
    max_length = models[0].config.max_position_embeddings
    groups = [tokenise_group(tokenizer, prompts[r[0]], [completions[i] for i in r], max_length, [ended[i] for i in r]) for r in rows.values()]
    started = time.perf_counter()
    out = score_groups(models, groups, tokenizer.pad_token_id, 8192)
    wall = time.perf_counter() - started
    order = [i for r in rows.values() for i in r]
    values = []
    for per_model in out:
        flat = np.empty(table.num_rows)
        flat[order] = [v for group in per_model for v in group]
        values.append(flat)
    return values, table.num_rows / wall


def train_tokens_per_s(model_dir: Path, data: Path, precision: str, steps: int, out: Path, batch: tuple[int, int]) -> float:
    from w2s.training import train

    cfg = StudentConfig(max_steps=steps, learning_rate=1e-5, warmup_steps=0, lr_scheduler="constant", batch_size=batch[0],
                        micro_batch_size=batch[1], checkpoint_fractions=[1.0])
    result = train(cfg, TrainingEngineConfig(precision=precision), "weighted_mle", model_dir, [data], out)
    return statistics.median(h["tokens_per_s"] for h in result.history[1:])


def training_data(table: pa.Table, path: Path) -> Path:
    kept = [i for i, text in enumerate(table.column("completion").to_pylist()) if text.strip()]  # a stop at once is empty
    rows = table.take(kept)
    pq.write_table(pa.table({"prompt": rows.column("prompt"), "completion": rows.column("completion"), "weight": [1.0] * rows.num_rows}), path)
    return path


def science(fp32: list[np.ndarray], bf16: list[np.ndarray], prompt_ids: list[str]) -> dict[str, float]:
    codes = {pid: i for i, pid in enumerate(dict.fromkeys(prompt_ids))}
    group = np.array([codes[p] for p in prompt_ids])
    _, w32, _, _ = eve_weights(fp32[0], fp32[1], 1.0, group)
    _, w16, _, _ = eve_weights(bf16[0], bf16[1], 1.0, group)
    rho, same_top = [], []
    for g in range(len(codes)):
        rows = np.flatnonzero(group == g)
        if len(rows) > 1:
            rho.append(spearman(w32[rows], w16[rows]))
            same_top.append(float(np.argmax(w32[rows]) == np.argmax(w16[rows])))
    ratio32, ratio16 = fp32[0] - fp32[1], bf16[0] - bf16[1]
    rho = [r for r in rho if not np.isnan(r)]
    return {
        "abs_dlogp_weak_mean": float(np.mean(np.abs(fp32[0] - bf16[0]))), "abs_dlogp_weak_max": float(np.max(np.abs(fp32[0] - bf16[0]))),
        "abs_dlogp_ref_mean": float(np.mean(np.abs(fp32[1] - bf16[1]))),
        "logp_weak_mean": float(np.mean(fp32[0])),
        "abs_dratio_mean": float(np.mean(np.abs(ratio32 - ratio16))), "abs_dratio_max": float(np.max(np.abs(ratio32 - ratio16))),
        "ratio_std": float(np.std(ratio32)),
        "spearman_F_mean": float(np.mean(rho)), "spearman_F_min": float(np.min(rho)), "top_sample_same": float(np.mean(same_top)),
        "prompts": float(len(rho)),
    }


def report_scoring(speed, values, table) -> None:
    s32, s16 = statistics.median(speed["fp32"]), statistics.median(speed["bf16"])
    print(f"scoring (2 models): fp32 {s32:.2f} rows/s, bf16 {s16:.2f} rows/s, ratio {s16 / s32:.2f}×")
    numbers = science(values["fp32"], values["bf16"], table.column("prompt_id").to_pylist())
    print("science (fp32 vs bf16 log-probs on the same rows):")
    print(f"  |Δ log π_weak| mean {numbers['abs_dlogp_weak_mean']:.3f} max {numbers['abs_dlogp_weak_max']:.3f} nats "
          f"(log π_weak mean {numbers['logp_weak_mean']:.1f}); |Δ log π_weak_ref| mean {numbers['abs_dlogp_ref_mean']:.3f}")
    print(f"  |Δ log-ratio| mean {numbers['abs_dratio_mean']:.3f} max {numbers['abs_dratio_max']:.3f} nats "
          f"(the log-ratio's own std across rows: {numbers['ratio_std']:.2f})")
    print(f"  F-weights per prompt: Spearman mean {numbers['spearman_F_mean']:.3f}, min {numbers['spearman_F_min']:.3f} "
          f"over {numbers['prompts']:.0f} prompts; same top sample {numbers['top_sample_same']:.0%}")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("artifacts"), help="an artifact root with the embedded default's stages")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", type=int, default=64, help="sample rows to score (and to train on)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs=2, default=[16, 8], metavar=("BATCH", "MICRO"),
                        help="training batch and micro-batch (default: the embedded default's student, 16 and 8)")
    parser.add_argument("--skip-scoring", action="store_true")
    parser.add_argument("--force", action="store_true", help="measure the bf16 legs even where bf16 is slower than fp32")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"CPU bf16 instructions (AMX / AVX512-BF16): {cpu_has_bf16()}; torch threads {torch.get_num_threads()}")

    print(f"load average (1 min) {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs: measure only on an idle machine")
    probe = {name: gemm_tflops(dtype, n=512, tries=3) for name, dtype in DTYPES.items()}
    if probe["bf16"] < probe["fp32"] and not args.force:
        # a CPU without AMX/AVX512-BF16 converts every bf16 element (≈ 1 GFLOP/s against fp32's ≈ 90 on a
        # 2-core EPYC with AVX2 only): a 2048³ bf16 GEMM alone takes a minute, the training and scoring legs
        # hours, and `precision: auto` trains in fp32 there anyway
        print(f"GEMM 512³: bf16 {probe['bf16'] * 1e3:.1f} GFLOP/s, fp32 {probe['fp32'] * 1e3:.1f} GFLOP/s: bf16 is not native "
              "on this machine, so `precision: auto` runs fp32 here; nothing more to compare (--force measures it anyway)")
        return
    peak = {name: gemm_tflops(dtype) for name, dtype in DTYPES.items()}
    print(f"GEMM 2048³: bf16 {peak['bf16']:.3f} TFLOP/s, fp32 {peak['fp32']:.3f} TFLOP/s, ratio {peak['bf16'] / peak['fp32']:.1f}×")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weak, ref, what_models = model_folders(args.root, work)
        table, what_rows = samples(args.root, args.rows)
        print(f"models: {what_models}\nrows: {what_rows}")

        speed = {"fp32": [], "bf16": []}
        values = {}
        for _ in range(0 if args.skip_scoring else args.repeats):
            for precision in ("fp32", "bf16"):
                values[precision], rows_per_s = score([weak, ref], table, precision)
                speed[precision].append(rows_per_s)
        if not args.skip_scoring:
            report_scoring(speed, values, table)
        strong = next(Path.home().glob(".cache/w2s-tests/smollm2-135m-instruct-v1/**/config.json"), None)
        if strong is None:
            model, tokenizer = load_spec(ModelSpec(source="smollm2_gguf"))
            save_model(model, tokenizer, work / "strong")
            strong_dir = work / "strong"
        else:
            strong_dir = strong.parent
        n_params = sum(p.numel() for p in load_pretrained(strong_dir)[0].parameters())
        data = training_data(table, work / "train.parquet")
        tok = {"fp32": [], "bf16": []}
        for r in range(args.repeats):
            for precision in ("fp32", "bf16"):
                tok[precision].append(train_tokens_per_s(strong_dir, data, precision, args.steps, work / f"train-{precision}-{r}", tuple(args.batch)))
        t32, t16 = statistics.median(tok["fp32"]), statistics.median(tok["bf16"])
        flops = 6 * n_params * t16
        print(f"training step (SmolLM2-135M, {n_params / 1e6:.0f}M params, ZeRO-0, batch {args.batch[0]} / micro {args.batch[1]}): fp32 {t32:.0f} tok/s, bf16 {t16:.0f} tok/s, "
              f"ratio {t16 / t32:.2f}×")
        print(f"  bf16 achieved {flops / 1e12:.3f} TFLOP/s = {flops / 1e12 / peak['bf16']:.0%} of the bf16 GEMM peak "
              f"(fp32: {6 * n_params * t32 / 1e12 / peak['fp32']:.0%} of the fp32 peak)")


if __name__ == "__main__":
    main()
