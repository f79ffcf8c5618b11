"""How good is the weak teacher's signal? Gold-reward diagnostics of EVE's training data.

EVE trains the student on the strong reference's K samples per prompt, weighted by F (eq. 8); naive
SFT trains on D_weak. Before any student is trained, the gold reward (evaluation-only; never seen by
training) says how good each training set is:

  gold_weighted(β/λ) = mean over prompts of (1/K)·Σ_i F_i(β/λ)·r_gold(x, y_i)
      the expected gold reward of the distribution EVE's weighted MLE imitates; β/λ = 0 is the
      plain average of the strong samples, β/λ = ∞ the weak teacher's top pick;
  gold_best_of_k   mean over prompts of max_i r_gold(x, y_i): what a perfect teacher could select;
  gold_naive_sft   mean r_gold of naive SFT's training data (D_weak, or π_weak's K answers to EVE's own
                   prompts under `baselines.naive_sft_data: matched`): what naive SFT imitates;
  pairwise_accuracy  over within-prompt pairs with different gold reward, the fraction the weak
      log-ratio orders the same way (a tie in the log-ratio counts ½; 0.5 is chance);
  top1_agreement   fraction of prompts whose highest log-ratio sample has the highest gold reward
      (ties split evenly); chance is the mean of (#gold-best samples)/K.

If gold_weighted does not rise with β/λ, the teacher cannot help EVE whatever the training does;
if it rises but stays below gold_naive_sft, naive SFT has the better data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from w2s.weights import eve_weights, group_ess


@dataclass(frozen=True)
class SignalPoint:
    beta_over_lambda: float
    gold_weighted: float
    ess_mean: float


@dataclass(frozen=True)
class TeacherSignal:
    prompts: int
    samples: int
    gold_uniform: float
    gold_best_of_k: float
    gold_naive_sft: float
    pairwise_accuracy: float
    pairs: int
    top1_agreement: float
    top1_chance: float
    points: tuple[SignalPoint, ...]

    def metrics(self) -> dict[str, float]:
        flat = {k: float(v) for k, v in asdict(self).items() if k != "points"}
        for point in self.points:
            flat[f"gold_weighted/beta_over_lambda:{point.beta_over_lambda:g}"] = point.gold_weighted
        return flat

    def as_json(self) -> dict:
        return {**self.metrics(), "points": [asdict(p) for p in self.points]}


def _groups(prompt_ids: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    codes = {pid: i for i, pid in enumerate(dict.fromkeys(prompt_ids))}
    group = np.array([codes[pid] for pid in prompt_ids], dtype=np.int64)
    members = [np.flatnonzero(group == g) for g in range(len(codes))]
    return group, members


def _pairwise(delta: np.ndarray, gold: np.ndarray, members: list[np.ndarray]) -> tuple[float, int]:
    agree, pairs = 0.0, 0
    for rows in members:
        d, g = delta[rows], gold[rows]
        dd, dg = d[:, None] - d[None, :], g[:, None] - g[None, :]
        upper = np.triu(np.ones_like(dg, dtype=bool), 1) & (dg != 0)
        pairs += int(upper.sum())
        agree += float((np.sign(dd[upper]) == np.sign(dg[upper])).sum() + 0.5 * (dd[upper] == 0).sum())
    return (agree / pairs if pairs else math.nan), pairs


def _top1(delta: np.ndarray, gold: np.ndarray, members: list[np.ndarray]) -> tuple[float, float]:
    hits, chance = [], []
    for rows in members:
        d, g = delta[rows], gold[rows]
        picked = d == d.max()
        best = g == g.max()
        hits.append((picked & best).sum() / picked.sum())
        chance.append(best.sum() / len(rows))
    return float(np.mean(hits)), float(np.mean(chance))


def teacher_signal(prompt_ids: list[str], logp_weak: np.ndarray, logp_weak_ref: np.ndarray, gold: np.ndarray,
                   gold_naive_sft: np.ndarray, betas: list[float]) -> TeacherSignal:
    """`prompt_ids`, log-probs, `gold`: one entry per strong sample (K per prompt, any order)."""
    if not (len(prompt_ids) == len(logp_weak) == len(logp_weak_ref) == len(gold)) or not prompt_ids:
        raise ValueError("teacher signal: scores and gold rewards must be non-empty and row-aligned")
    if not np.all(np.isfinite(gold)):
        raise ValueError("teacher signal: the gold reward is not finite on some sample")
    group, members = _groups(prompt_ids)
    weak, ref = np.asarray(logp_weak, np.float64), np.asarray(logp_weak_ref, np.float64)
    delta = weak - ref
    gold = np.asarray(gold, np.float64)
    points = []
    for beta in sorted(set(betas) | {0.0}):
        _, weights, _, _ = eve_weights(weak, ref, beta, group)  # β/λ = 0: uniform
        per_prompt = np.bincount(group, weights * gold) / np.bincount(group)
        points.append(SignalPoint(beta, float(per_prompt.mean()), float(group_ess(weights, group, len(members)).mean())))
    accuracy, pairs = _pairwise(delta, gold, members)
    top1, chance = _top1(delta, gold, members)
    return TeacherSignal(
        prompts=len(members), samples=len(prompt_ids), gold_uniform=points[0].gold_weighted,
        gold_best_of_k=float(np.mean([gold[rows].max() for rows in members])),
        gold_naive_sft=float(np.mean(gold_naive_sft)) if len(gold_naive_sft) else math.nan,
        pairwise_accuracy=accuracy, pairs=pairs, top1_agreement=top1, top1_chance=chance, points=tuple(points))


def signal_markdown(signal: dict) -> list[str]:
    """The report's block from a `signal.json` (TeacherSignal.as_json)."""
    lines = ["**Weak-teacher signal** (gold reward of the training data; evaluation only, the first seed)", "",
             "| training data | mean gold reward |", "|---|---|",
             f"| {naive_sft_label(signal.get('naive_sft_data', 'd_weak'))} | {signal.get('gold_naive_sft', signal.get('gold_d_weak')):.3f} |",
             f"| strong samples, unweighted (β/λ = 0) | {signal['gold_uniform']:.3f} |"]
    lines += [f"| EVE, F-weighted, β/λ = {_beta(p['beta_over_lambda'])} (mean ESS {p['ess_mean']:.2f}) | {p['gold_weighted']:.3f} |"
              for p in signal["points"] if p["beta_over_lambda"] > 0]
    lines += [f"| best of K (perfect teacher) | {signal['gold_best_of_k']:.3f} |", "",
              f"Weak log-ratio vs gold: pairwise accuracy {signal['pairwise_accuracy']:.3f} over {int(signal['pairs'])} pairs "
              f"(chance 0.5); top-1 agreement {signal['top1_agreement']:.3f} (chance {signal['top1_chance']:.3f})."]
    return lines


def _beta(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:g}"


NAIVE_SFT_DATA = {"d_weak": "naive SFT's data: D_weak (π_weak's answers to other prompts)",
                  "matched": "naive SFT's data: π_weak's K answers to EVE's prompts"}


def naive_sft_label(which: str) -> str:
    return NAIVE_SFT_DATA.get(which, f"naive SFT's data ({which})")


def plot_signal(signal: TeacherSignal, path, naive_sft_data: str = "d_weak") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{p.beta_over_lambda:g}" for p in signal.points]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(x, [p.gold_weighted for p in signal.points], "o-", label="EVE training data (F-weighted strong samples)")
    ax.axhline(signal.gold_best_of_k, ls="--", c="tab:green", label="best of K (perfect teacher)")
    ax.axhline(signal.gold_uniform, ls=":", c="tab:gray", label="strong samples, unweighted")
    if not math.isnan(signal.gold_naive_sft):
        ax.axhline(signal.gold_naive_sft, ls="-.", c="tab:red", label=naive_sft_label(naive_sft_data))
    ax.set_xticks(x, labels)
    ax.set_xlabel("β/λ")
    ax.set_ylabel("mean gold reward of the training data")
    ax.set_title(f"Weak-teacher signal: pairwise acc. {signal.pairwise_accuracy:.2f}, top-1 {signal.top1_agreement:.2f} "
                 f"(chance {signal.top1_chance:.2f})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
