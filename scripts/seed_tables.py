"""Per-seed tables of an artifact root, for docs/results: the weak teacher's gold signal of each seed
(teacher_signal, followed back to its sampling stage's seed), how other orderings of the same strong
samples agree with gold, every evaluated policy's P(π) at each checkpoint with PGR against that
seed's π_weak and strong ceiling (fig. 3's curves), the KL estimates at each checkpoint, and EVE's
student at every β/λ the root holds (fig. 5).

    .venv/bin/python scripts/seed_tables.py ARTIFACT_ROOT [--policies eve naive_sft]

Reads manifests and Parquet only (nothing is unpickled, nothing recomputed). Several artifacts of one
stage and seed (other configs) are told apart by key; pass the root of one configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq


def manifests(root: Path) -> list[dict]:
    """Every manifest of the root, but of a stage run at several versions (a cache kept across code
    changes) only the newest version's artifacts."""
    found = []
    for path in sorted(root.glob("*/*/manifest.json")):
        manifest = json.loads(path.read_text())
        manifest["folder"] = path.parent
        found.append(manifest)
    newest = {}
    for m in found:
        newest[m["stage"]] = max(newest.get(m["stage"], m["version"]), m["version"])
    return [m for m in found if m["version"] == newest[m["stage"]]]


def seed_of_signal(signal: dict, by_digest: dict[str, dict]) -> int:
    scoring = by_digest[signal["inputs"]["scores"]]
    return by_digest[scoring["inputs"]["samples"]]["config"]["seed"]


def signal_rows(found: list[dict]) -> list[str]:
    by_digest = {m["digest"]: m for m in found if "digest" in m}
    rows = ["| seed | D_weak | matched (π_weak on EVE's prompts) | strong samples (β/λ = 0) | EVE β/λ = 1 | EVE β/λ = ∞ "
            "| best of K | pairwise accuracy (pairs) | top-1 (chance) |", "|---|---|---|---|---|---|---|---|---|"]
    matched = {m["config"].get("seed"): m["metrics"].get("gold_reward_matched") for m in found if m["stage"] == "matched_demos"}
    d_weak = {by_digest[m["inputs"]["weak"]]["config"].get("seed"): m["metrics"].get("gold_reward_d_weak")
              for m in found if m["stage"] == "weak_demos" and m["inputs"].get("weak") in by_digest}
    for signal in sorted((m for m in found if m["stage"] == "teacher_signal"), key=lambda m: seed_of_signal(m, by_digest)):
        seed, x = seed_of_signal(signal, by_digest), signal["metrics"]
        cells = [d_weak.get(seed), matched.get(seed)]
        rows.append(f"| {seed} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in cells) +
                    f" | {x['gold_uniform']:.3f} | {x['gold_weighted/beta_over_lambda:1']:.3f} | {x['gold_weighted/beta_over_lambda:inf']:.3f} "
                    f"| {x['gold_best_of_k']:.3f} | {x['pairwise_accuracy']:.3f} ({x['pairs']:.0f}) "
                    f"| {x['top1_agreement']:.3f} ({x['top1_chance']:.3f}) |")
    return rows


def ordering_rows(found: list[dict]) -> list[str]:
    """Pairwise accuracy against gold of orderings of each seed's strong samples (the teacher probe)."""
    import numpy as np

    from w2s.rewards import load_gold_reward
    from w2s.config import GoldRewardSpec
    from w2s.teacher_signal import _groups, _pairwise

    by_digest = {m["digest"]: m for m in found if "digest" in m}
    reward = load_gold_reward(GoldRewardSpec())
    rows = ["| seed | log-ratio (eq. 8) | log-ratio per token | −length | log π_weak_ref | log π_weak |", "|---|---|---|---|---|---|"]
    for signal in sorted((m for m in found if m["stage"] == "teacher_signal"), key=lambda m: seed_of_signal(m, by_digest)):
        scoring = by_digest[signal["inputs"]["scores"]]
        table = pq.read_table(sorted((scoring["folder"] / "shards").glob("*.parquet"))).to_pandas()
        data = by_digest[signal["inputs"]["data"]]
        meta = pq.read_table(data["folder"] / "student.parquet", columns=["prompt_id", "meta"]).to_pandas().set_index("prompt_id")["meta"]
        gold = reward.score(list(table.prompt), list(table.completion), [meta[p] for p in table.prompt_id])
        _, members = _groups(list(table.prompt_id))
        ratio, length = (table.logp_weak - table.logp_weak_ref).to_numpy(), table.n_tokens_weak.to_numpy().astype(float)
        orders = [ratio, ratio / np.maximum(length, 1), -length, table.logp_weak_ref.to_numpy(), table.logp_weak.to_numpy()]
        rows.append(f"| {seed_of_signal(signal, by_digest)} | " + " | ".join(f"{_pairwise(o, gold, members)[0]:.3f}" for o in orders) + " |")
    return rows


def kl_rows(found: list[dict], policies: list[str]) -> list[str]:
    """k3 KL and k1 = mean(log π − log π_ref) per checkpoint."""
    evaluations = {(m["stage"], m["config"]["seed"]): m for m in found
                   if m["stage"].startswith("evaluate_") and m["stage"].removeprefix("evaluate_") in policies}
    rows = ["| policy | seed | evaluation version | KL k3 at each checkpoint (fraction: k3 / k1) |", "|---|---|---|---|"]
    for (stage, seed), m in sorted(evaluations.items()):
        table = pq.read_table(m["folder"] / "samples.parquet").to_pandas()
        if "k3" not in table:
            continue
        table["k1"] = table.logp_policy - table.logp_ref
        cells = [f"{f:.2f}: {g.k3.mean():.2f} / {g.k1.mean():+.2f}" for f, g in table.dropna(subset=["k3"]).groupby("fraction")]
        rows.append(f"| {stage.removeprefix('evaluate_')} | {seed} | {m['version']} | {' · '.join(cells)} |")
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


def beta_rows(found: list[dict]) -> list[str]:
    """EVE's student at each β/λ the root holds, per seed: evaluate_eve → its student → the weights
    it trained on (β/λ, mean ESS) and PGR against that seed's anchors (fig. 5 at the student level)."""
    by_digest = {m["digest"]: m for m in found if "digest" in m}
    finals = {}
    for m in found:
        if m["stage"].startswith("evaluate_"):
            table = pq.read_table(m["folder"] / "samples.parquet").to_pandas()
            final = table[table.checkpoint == "final"]
            kl = float(final.k3.mean()) if "k3" in final and final.k3.notna().all() else float("nan")
            finals[m["digest"]] = (float(final.gold_reward.mean()), kl)
    anchors = {(m["stage"], m["config"]["seed"]): finals[m["digest"]][0] for m in found
               if m["stage"] in ("evaluate_weak", "evaluate_strong_ceiling") and "digest" in m}
    points = []
    for m in found:
        student = by_digest.get(m["inputs"].get("policy")) if m["stage"] == "evaluate_eve" else None
        if student is None or student["stage"] != "student":
            continue
        weights, seed = by_digest[student["inputs"]["weights"]], m["config"]["seed"]
        p, kl = finals[m["digest"]]
        weak, strong = anchors[("evaluate_weak", seed)], anchors[("evaluate_strong_ceiling", seed)]
        beta = weights["config"]["beta_over_lambda"]
        beta = float("inf") if beta is None else float(beta)  # the manifest's JSON holds β/λ = ∞ as null
        points.append((seed, beta, weights["metrics"]["ess_mean"], p, (p - weak) / (strong - weak), kl))
    rows = ["| seed | β/λ | mean ESS | student P(π) | PGR | KL k3 (final) |", "|---|---|---|---|---|---|"]
    rows += [f"| {seed} | {beta:g} | {ess:.2f} | {p:.3f} | {pgr:+.3f} | {kl:.2f} |" for seed, beta, ess, p, pgr, kl in sorted(points)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--policies", nargs="+", default=["eve", "naive_sft"])
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    found = manifests(args.root)
    tables = [signal_rows(found), ordering_rows(found), curve_rows(found, args.policies),
              kl_rows(found, [*args.policies, "strong_ceiling"]), beta_rows(found)]
    print("\n\n".join("\n".join(rows) for rows in tables))


if __name__ == "__main__":
    main()
