"""Helpers shared by the training tests (no tests here): small Parquet datasets and settings."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# The shm op DeepSpeed JIT-builds (~60 s) is kept across sessions, next to the converted models.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "w2s-tests" / "torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

PROMPTS = [f"Q{i}: say {w}." for i, w in enumerate(["abc", "hello", "cat", "blue", "seven", "moon", "tree", "fish"])]
ANSWERS = [" abc abc", " hello there", " the cat sat", " blue sky", " seven eight", " the moon", " a tree", " one fish"]


def write_completions(path: Path, weights=None, n: int = 8) -> Path:
    columns = {"prompt": PROMPTS[:n], "completion": ANSWERS[:n]}
    if weights is not None:
        columns["weight"] = list(weights)
    pq.write_table(pa.table(columns), path)
    return path


def write_pairs(path: Path, n: int = 8) -> Path:
    rejected = [a[::-1] for a in ANSWERS[:n]]
    pq.write_table(pa.table({"prompt": PROMPTS[:n], "chosen": ANSWERS[:n], "rejected": rejected}), path)
    return path


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))
