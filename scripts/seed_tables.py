"""Per-seed tables of an artifact root, for docs/results: the weak teacher's gold signal of each seed
(teacher_signal, followed back to its sampling stage's seed), and every evaluated policy's P(π) at
each checkpoint with PGR against that seed's π_weak and strong ceiling (fig. 3's curves).

    .venv/bin/python scripts/seed_tables.py ARTIFACT_ROOT [--policies eve naive_sft]

Reads manifests and Parquet only (nothing is unpickled, nothing recomputed). Several artifacts of one
stage and seed (other configs) are told apart by key; pass the root of one configuration.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq


def manifests(root: Path) -> list[dict]:
    found = []
    for path in sorted(root.glob("*/*/manifest.json")):
        manifest = json.loads(path.read_text())
        manifest["folder"] = path.parent
        found.append(manifest)
    return found


def seed_of_signal(signal: dict, by_digest: dict[str, dict]) -> int:
    scoring = by_digest[signal["inputs"]["scores"]]
    return by_digest[scoring["inputs"]["samples"]]["config"]["seed"]


def signal_rows(found: list[dict]) -> list[str]:
    by_digest = {m["digest"]: m for m in found if "digest" in m}
    rows = ["| seed | D_weak | matched (π_weak on EVE's prompts) | strong samples (β/λ = 0) | EVE β/λ = 1 | EVE β/λ = ∞ "
            "| best of K | pairwise accuracy (pairs) | top-1 (chance) |", "|---|---|---|---|---|---|---|---|---|"]
    matched = {m["config"].get("seed"): m["metrics"].get("gold_reward_matched") for m in found if m["stage"] == "matched_demos"}
    for signal in sorted((m for m in found if m["stage"] == "teacher_signal"), key=lambda m: seed_of_signal(m, by_digest)):
        seed, x = seed_of_signal(signal, by_digest), signal["metrics"]
        matched_gold = matched.get(seed)
        rows.append(f"| {seed} | {x['gold_d_weak']:.3f} | {'–' if matched_gold is None else f'{matched_gold:.3f}'} "
                    f"| {x['gold_uniform']:.3f} | {x['gold_weighted/beta_over_lambda:1']:.3f} | {x['gold_weighted/beta_over_lambda:inf']:.3f} "
                    f"| {x['gold_best_of_k']:.3f} | {x['pairwise_accuracy']:.3f} ({x['pairs']:.0f}) "
                    f"| {x['top1_agreement']:.3f} ({x['top1_chance']:.3f}) |")
    return rows


def curves(found: list[dict]) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """(policy, seed) → [(fraction of training, mean gold reward)] in training order."""
    out = {}
    for m in found:
        if not m["stage"].startswith("evaluate_"):
            continue
        table = pq.read_table(m["folder"] / "samples.parquet", columns=["fraction", "gold_reward"]).to_pandas()
        points = table.groupby("fraction")["gold_reward"].mean().sort_index()
        out[(m["stage"].removeprefix("evaluate_"), m["config"]["seed"])] = [(float(f), float(g)) for f, g in points.items()]
    return out


def curve_rows(found: list[dict], policies: list[str]) -> list[str]:
    found_curves = curves(found)
    seeds = sorted({seed for (_, seed) in found_curves})
    rows = ["| policy | seed | PGR over training (fraction of the run: PGR) | peak (at) | final − peak |",
            "|---|---|---|---|---|"]
    for policy in policies:
        for seed in seeds:
            if (policy, seed) not in found_curves or ("weak", seed) not in found_curves:
                continue
            weak, strong = found_curves[("weak", seed)][-1][1], found_curves[("strong_ceiling", seed)][-1][1]
            pgr = [(f, (g - weak) / (strong - weak)) for f, g in found_curves[(policy, seed)]]
            peak = max(pgr, key=lambda p: p[1])
            shown = " / ".join(f"{f:.2f}: {v:+.3f}" for f, v in pgr)
            rows.append(f"| {policy} | {seed} | {shown} | {peak[1]:+.3f} ({peak[0]:.2f}) | {pgr[-1][1] - peak[1]:+.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--policies", nargs="+", default=["eve", "naive_sft"])
    args = parser.parse_args()
    found = manifests(args.root)
    print("\n".join(signal_rows(found)) + "\n\n" + "\n".join(curve_rows(found, args.policies)))


if __name__ == "__main__":
    main()
