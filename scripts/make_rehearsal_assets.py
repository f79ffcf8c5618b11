"""The local stand-ins `configs/tldr_rehearsal.yaml` reads: the two TL;DR datasets in their hub schema
(1 % of the real row counts, scripts/make_tldr_fixture.py) and a tiny random sequence-classification
gold reward model (a Llama with a byte-level tokenizer, seeded, so every run scores alike).

    .venv/bin/python scripts/make_rehearsal_assets.py            # -> rehearsal/ under the working directory
    .venv/bin/python scripts/make_rehearsal_assets.py --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tldr_fixture  # noqa: E402

SCALE = 0.01


def make_gold_rm(folder: Path, seed: int = 0) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from w2s.models.build import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def make(out: Path) -> None:
    counts = make_tldr_fixture.make(out / "data", scale=SCALE)
    make_gold_rm(out / "gold_rm")
    for name, splits in counts.items():
        print(f"{out / 'data' / name}: " + ", ".join(f"{s} {n:,}" for s, n in splits.items()))
    print(f"{out / 'gold_rm'}: tiny random LlamaForSequenceClassification")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("rehearsal"), help="where to write (default: rehearsal/)")
    make(parser.parse_args().out)
