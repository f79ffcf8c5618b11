"""A local stand-in for the paper's two TL;DR datasets, in their exact schemas and hub layout.

    .venv/bin/python scripts/make_tldr_fixture.py --out fixtures/tldr            # the real row counts
    .venv/bin/python scripts/make_tldr_fixture.py --out /tmp/tldr --scale 0.01   # 1 % of them (rehearsal)

Writes
  <out>/openai_summarize_comparisons/data/{train,test,valid1,valid2}-00000-of-00001.parquet
      prompt ("SUBREDDIT: …\\nTITLE: …\\nPOST: …", no "TL;DR:"), chosen, rejected ("TL;DR: …")
  <out>/openai_summarize_tldr/data/{train,valid,test}-00000-of-00001.parquet
      prompt (ends with "\\nTL;DR:"), label (" …")
as CarperAI/openai_summarize_comparisons and CarperAI/openai_summarize_tldr store them, so a
config pointed at these folders (data.hf.path, data.hf.prompts.path) runs the code path the hub data
takes. Row counts are the hub's (comparisons: train 92,534 / test 83,629 / valid1 33,082 / valid2
50,715; tldr: train 116,722 / valid 6,447 / test 6,553). The text is synthetic, and two structural
facts are this fixture's assumptions, not measurements of the real data: each post has
`--pairs-per-post` comparisons (default 4), and `--overlap` (default 10 %) of the tldr train posts
are comparisons train posts (the comparisons were collected on TL;DR posts), so the data stage's
exclusion of preference posts from the prompt splits is exercised.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

COMPARISONS = {"train": 92_534, "test": 83_629, "valid1": 33_082, "valid2": 50_715}
TLDR = {"train": 116_722, "valid": 6_447, "test": 6_553}
SUBREDDITS = ("relationships", "AskReddit", "personalfinance", "tifu", "legaladvice", "dogs", "running")


def post(split: str, i: int, rng: random.Random) -> str:
    words = " ".join(rng.choice(("work", "friend", "money", "moved", "week", "because", "said", "never")) for _ in range(24))
    return f"SUBREDDIT: r/{rng.choice(SUBREDDITS)}\nTITLE: {split} post {i}\nPOST: {words}."


def summary(rng: random.Random) -> str:
    return " ".join(rng.choice(("I", "need", "advice", "about", "my", "job", "friend", "help")) for _ in range(rng.randint(4, 12)))


def write(folder: Path, split: str, table: pa.Table) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")


def make(out: Path, scale: float = 1.0, pairs_per_post: int = 4, overlap: float = 0.1, seed: int = 0) -> dict[str, dict[str, int]]:
    rng = random.Random(seed)
    counts: dict[str, dict[str, int]] = {"openai_summarize_comparisons": {}, "openai_summarize_tldr": {}}
    comparison_train_posts: list[str] = []
    for split, rows in COMPARISONS.items():
        n = max(1, round(rows * scale))
        posts = [post(f"cmp-{split}", i, rng) for i in range((n + pairs_per_post - 1) // pairs_per_post)]
        if split == "train":
            comparison_train_posts = posts
        prompts = [posts[i // pairs_per_post] for i in range(n)]
        chosen, rejected = [], []
        for _ in range(n):
            a, b = summary(rng), summary(rng)
            while b == a:
                b = summary(rng)
            chosen.append(f"TL;DR: {a}")
            rejected.append(f"TL;DR: {b}")
        write(out / "openai_summarize_comparisons" / "data", split, pa.table({"prompt": prompts, "chosen": chosen, "rejected": rejected}))
        counts["openai_summarize_comparisons"][split] = n
    for split, rows in TLDR.items():
        n = max(1, round(rows * scale))
        shared = round(n * overlap) if split == "train" else 0
        posts = rng.sample(comparison_train_posts, min(shared, len(comparison_train_posts)))
        posts += [post(f"tldr-{split}", i, rng) for i in range(n - len(posts))]
        write(out / "openai_summarize_tldr" / "data", split,
              pa.table({"prompt": [f"{p}\nTL;DR:" for p in posts], "label": [f" {summary(rng)}" for _ in posts]}))
        counts["openai_summarize_tldr"][split] = n
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write the two datasets into")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real row counts (default 1)")
    parser.add_argument("--pairs-per-post", type=int, default=4, help="comparisons per post (an assumption; default 4)")
    parser.add_argument("--overlap", type=float, default=0.1, help="fraction of tldr train posts also in comparisons train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = make(args.out, args.scale, args.pairs_per_post, args.overlap, args.seed)
    for name, splits in counts.items():
        print(f"{args.out / name}: " + ", ".join(f"{s} {n:,}" for s, n in splits.items()))


if __name__ == "__main__":
    main()
