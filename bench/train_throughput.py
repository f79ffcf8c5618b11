"""weighted_mle tokens/s through our DeepSpeed engine vs a plain transformers + torch loop.

Both loops see the same model, the same micro-batches (same rows, same padding) and the same
optimiser (torch AdamW with foreach=True, clipping at 1.0); the plain loop uses the model's own mean-token loss and no
weights, so the ratio is what weighting + DeepSpeed cost. CPU: ZeRO-0 fp32, one process.
Goal: ratio >= 0.9.

The two loops run in lockstep in one process: after each engine step (the trainer's on_step hook)
the plain loop runs the same step on its own copy of the model. Shared machines swing by 2-4x
from minute to minute with other people's load, which would swamp a 10 % question if the loops ran
one after the other; interleaved, each pair of steps sees the same load, and the median of the
per-step ratios is robust to the bursts that remain. The first `--warmup` steps are not timed.

    .venv/bin/python bench/train_throughput.py [--model DIR] [--steps 6] [--batch-size 4] [--micro 2]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "w2s-tests" / "torch_extensions"))

from w2s.config import StudentConfig, TrainingEngineConfig  # noqa: E402
from w2s.training import train  # noqa: E402
from w2s.training.data import batch_indices, collate, example_sequences, load_data  # noqa: E402

WORDS = "the cat sat on a mat while rain fell over quiet hills and rivers ran to the sea".split()


def make_data(path: Path, rows: int, words: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    pq.write_table(pa.table({
        "prompt": [f"Summarise: {text(words)}\nSummary:" for _ in range(rows)],
        "completion": [" " + text(words) for _ in range(rows)],
        "weight": [rng.uniform(0.0, 3.0) for _ in range(rows)],
    }), path)


class PlainLoop:
    """A textbook transformers + torch training step, on the engine's batches."""

    def __init__(self, model_dir: Path, data_file: Path, cfg: StudentConfig, seed: int):
        from w2s.models.build import load_pretrained

        self.model, self.tok = load_pretrained(model_dir)
        self.model.config.use_cache = False
        self.model.train()
        self.data = load_data([data_file], "completion", self.tok, cfg, self.model.config.max_position_embeddings)
        # the engine's optimiser settings (foreach=True is torch's GPU default, not its CPU one)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.learning_rate, weight_decay=0.0, foreach=True)
        self.cfg, self.seed = cfg, seed

    def step(self, step: int) -> int:
        cfg, data = self.cfg, self.data
        # the engine's batch: same rows, same length-sorted micro-batches, same padding
        rows = sorted(batch_indices(step, len(data), cfg.batch_size, self.seed), key=lambda i: len(data.sequences[i].ids))
        tokens = 0
        for m in range(0, len(rows), cfg.micro_batch_size):
            batch = collate(example_sequences(data, rows[m : m + cfg.micro_batch_size]), self.tok.pad_token_id)
            loss = self.model(**batch).loss / (cfg.batch_size // cfg.micro_batch_size)
            loss.backward()
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return tokens


def lockstep(model_dir: Path, data_file: Path, cfg: StudentConfig, steps: int, warmup: int, out: Path) -> list[dict]:
    """Per timed step: tokens, and wall/CPU seconds of the engine step and of the plain step."""
    plain = PlainLoop(model_dir, data_file, cfg, seed=0)
    records: list[dict] = []
    last: list[tuple[float, float]] = []

    def on_step(step: int, metrics: dict) -> None:  # engine step `step` (1-based) just finished
        now = (time.perf_counter(), time.process_time())
        engine_s = (now[0] - last[-1][0], now[1] - last[-1][1]) if last else None
        tokens = plain.step(step - 1)
        after = (time.perf_counter(), time.process_time())
        if step > warmup and engine_s is not None:
            assert tokens == metrics["tokens"], "the two loops must see the same batch"
            records.append({"tokens": tokens, "engine_wall": engine_s[0], "engine_cpu": engine_s[1],
                            "plain_wall": after[0] - now[0], "plain_cpu": after[1] - now[1]})
        last.append(after)

    train(cfg.model_copy(update={"max_steps": warmup + steps}), TrainingEngineConfig(zero_stage=0), "weighted_mle",
          model_dir, [data_file], out, seed=0, progress=False, on_step=on_step)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = Path.home() / ".cache" / "w2s-tests" / "smollm2-135m-instruct-v1"
    parser.add_argument("--model", type=Path, default=default_model)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--micro", type=int, default=2)
    parser.add_argument("--words", type=int, default=40, help="words in each prompt and completion")
    args = parser.parse_args()
    if not (args.model / "config.json").exists():
        sys.exit(f"{args.model} is not an HF model folder (run the tests once to convert SmolLM2, or pass --model)")
    cfg = StudentConfig(learning_rate=1e-5, warmup_steps=0, batch_size=args.batch_size, micro_batch_size=args.micro,
                        max_seq_len=512, checkpoint_fractions=[1.0])
    with tempfile.TemporaryDirectory(prefix="w2s-bench-") as tmp:
        data_file = Path(tmp) / "data.parquet"
        make_data(data_file, rows=args.batch_size * (args.steps + args.warmup), words=args.words)
        records = lockstep(args.model, data_file, cfg, args.steps, args.warmup, Path(tmp) / "out")
    tokens = sum(r["tokens"] for r in records)
    rate = {k: tokens / sum(r[k] for r in records) for k in ("engine_wall", "engine_cpu", "plain_wall", "plain_cpu")}
    paired = {c: statistics.median(r[f"plain_{c}"] / r[f"engine_{c}"] for r in records) for c in ("wall", "cpu")}
    for i, r in enumerate(records):
        print(f"step {i + args.warmup + 1}: {r['tokens']} tokens  engine {r['engine_wall']:.2f} s  plain {r['plain_wall']:.2f} s")
    print(f"model: {args.model.name}  batch {args.batch_size} (micro {args.micro})  timed steps {len(records)}  "
          f"{tokens / len(records):.0f} tokens/step  threads {torch.get_num_threads()}  load avg {os.getloadavg()[0]:.1f}")
    print(f"{'':36s}{'tokens/s (wall)':>16s}{'tokens/CPU-s':>14s}")
    print(f"{'plain transformers+torch loop':36s}{rate['plain_wall']:16.1f}{rate['plain_cpu']:14.1f}")
    print(f"{'w2s engine (weighted_mle, ZeRO-0)':36s}{rate['engine_wall']:16.1f}{rate['engine_cpu']:14.1f}")
    print(f"{'ratio engine/plain, totals':36s}{rate['engine_wall'] / rate['plain_wall']:16.3f}{rate['engine_cpu'] / rate['plain_cpu']:14.3f}")
    print(f"{'ratio engine/plain, median of steps':36s}{paired['wall']:16.3f}{paired['cpu']:14.3f}   (goal >= 0.9)")

if __name__ == "__main__":
    main()
