"""EVE's self-normalised importance weights (paper §4.3, eq. 8), streamed shard by shard.

    f_i = (β/λ)·(log π_weak(y_i|x) − log π_weak_ref(y_i|x))          column `log_ratio`
    F_i = K·exp(f_i) / Σ_k exp(f_k)      over the K samples of x      column `weight`

computed as K·exp(f_i − max f − log Σ exp(f_k − max f)), so |f| up to 1e4 gives no overflow; every
prompt's weights average exactly 1.

Limits, as eq. 8 defines them: β/λ → 0 makes every F_i → 1 (uniform, the weak teacher is ignored);
β/λ → ∞ puts all mass on the best-scored sample (one-hot, ties split evenly); `.inf` computes that
limit exactly. NOTE: the paper's prose in §4.3/§5.1 states these limits the other way round (it calls
β/λ = ∞ "no weak supervision"); the formula is unambiguous and this module follows the formula.

Diagnostics per prompt: effective sample size (ΣF)²/ΣF² (K = uniform, 1 = one-hot) and max weight.
Memory stays bounded by one shard plus 8 bytes per prompt (the id hashes that detect a prompt split
across shards).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HIST_EDGES = np.concatenate([[0.0], np.logspace(-4, math.log10(64), 41)])


class WeightsInputError(ValueError):
    """Bad scores: names the shard and prompt_id."""


def group_weights(scores: np.ndarray, group: np.ndarray, hard: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights K·softmax(scores) per group (any row order); `hard`: the β/λ = ∞ limit, one-hot at
    each group's arg-max with ties split evenly. Returns (weights in row order, group sizes, order)."""
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    f = scores[order]
    peak = np.repeat(np.maximum.reduceat(f, starts), sizes)
    if hard:
        is_max = (f == peak).astype(np.float64)
        n_max = np.repeat(np.add.reduceat(is_max, starts), sizes)
        weights_sorted = is_max * np.repeat(sizes, sizes) / n_max
    else:
        shifted = f - peak  # ≤ 0: exp cannot overflow, and the group's max contributes exp(0) = 1
        log_norm = np.repeat(np.log(np.add.reduceat(np.exp(shifted), starts)), sizes)
        weights_sorted = np.repeat(sizes, sizes) * np.exp(shifted - log_norm)
    weights = np.empty_like(weights_sorted)
    weights[order] = weights_sorted
    return weights, sizes, order


def log_ratios(logp_weak: np.ndarray, logp_weak_ref: np.ndarray, beta_over_lambda: float) -> np.ndarray:
    delta = logp_weak - logp_weak_ref
    if math.isinf(beta_over_lambda):
        return np.where(delta > 0, np.inf, np.where(delta < 0, -np.inf, 0.0))
    return beta_over_lambda * delta


def eve_weights(logp_weak: np.ndarray, logp_weak_ref: np.ndarray, beta_over_lambda: float,
                group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 8 per group: (f = log_ratios, F in row order, group sizes, order). At β/λ = ∞ the one-hot
    goes to the largest raw log-ratio: f itself is ±∞ there, which would tie every positive ratio."""
    f = log_ratios(logp_weak, logp_weak_ref, beta_over_lambda)
    hard = math.isinf(beta_over_lambda)
    weights, sizes, order = group_weights(logp_weak - logp_weak_ref if hard else f, group, hard)
    return f, weights, sizes, order


def group_ess(weights: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Effective sample size (ΣF)²/ΣF² of each group: K for uniform weights, 1 for one-hot."""
    total = np.bincount(group, weights=weights, minlength=n_groups)
    return total**2 / np.bincount(group, weights=weights * weights, minlength=n_groups)


@dataclass
class WeightStats:
    prompts: int = 0
    rows: int = 0
    ess_sum: float = 0.0
    ess_min: float = math.inf
    max_weight_sum: float = 0.0
    max_weight_max: float = 0.0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(len(HIST_EDGES) - 1, dtype=np.int64))

    def metrics(self) -> dict[str, float]:
        return {
            "prompts": self.prompts, "rows": self.rows, "ess_mean": self.ess_sum / max(self.prompts, 1),
            "ess_min": self.ess_min if self.prompts else 0.0, "max_weight_mean": self.max_weight_sum / max(self.prompts, 1),
            "max_weight_max": self.max_weight_max,
        }


class ShardWeighter:
    """Turns score shards into weight shards, one shard in memory at a time."""

    def __init__(self, beta_over_lambda: float):
        if not beta_over_lambda > 0:
            raise WeightsInputError(f"weights.beta_over_lambda must be > 0, got {beta_over_lambda}")
        self.beta_over_lambda = beta_over_lambda
        self.stats = WeightStats()
        # hashes of every prompt_id so far, as sorted runs of sizes that at least halve down the
        # list (a binary counter): adding a shard merges O(log n) runs, a lookup searches each
        self._seen_runs: list[np.ndarray] = []
        self._per_shard: list[tuple[str, np.ndarray]] = []

    def process(self, table: pa.Table, shard: str) -> tuple[pa.Table, pa.Table]:
        """(weights table = input + log_ratio + weight, per-prompt diagnostics table)."""
        for column in ("prompt_id", "logp_weak", "logp_weak_ref"):
            if column not in table.column_names:
                raise WeightsInputError(f"{shard}: missing column {column!r}")
        encoded = pc.dictionary_encode(table.column("prompt_id")).combine_chunks()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        names = encoded.dictionary.to_pylist()
        weak = table.column("logp_weak").to_numpy().astype(np.float64)
        ref = table.column("logp_weak_ref").to_numpy().astype(np.float64)
        bad = ~(np.isfinite(weak) & np.isfinite(ref))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise WeightsInputError(f"{shard}: prompt_id {names[codes[row]]!r} row {row} has a non-finite log-prob "
                                    f"(logp_weak={weak[row]}, logp_weak_ref={ref[row]}); {int(bad.sum())} such rows")
        self._check_not_split(names, shard)
        f, weights, sizes, order = eve_weights(weak, ref, self.beta_over_lambda, codes)
        if (sizes < 2).any():
            group_codes = np.unique(codes[order])
            small = names[int(group_codes[np.flatnonzero(sizes < 2)[0]])]
            raise WeightsInputError(f"{shard}: prompt_id {small!r} has fewer than 2 samples (weights normalise over K ≥ 2)")
        diagnostics = self._diagnose(weights, codes, sizes, names)
        out = table.append_column("log_ratio", pa.array(f, pa.float64())).append_column("weight", pa.array(weights, pa.float64()))
        return out, diagnostics

    def _check_not_split(self, names: list[str], shard: str) -> None:
        hashes = np.sort(np.fromiter((hash(n) for n in names), dtype=np.int64, count=len(names)))
        for seen in self._seen_runs:
            at = np.minimum(np.searchsorted(seen, hashes), len(seen) - 1)
            clash = seen[at] == hashes
            if clash.any():
                wanted = hashes[np.flatnonzero(clash)[0]]
                name = next(n for n in names if hash(n) == wanted)
                owner = next(name for name, held in self._per_shard if held[min(np.searchsorted(held, wanted), len(held) - 1)] == wanted)
                raise WeightsInputError(f"{shard}: rows of prompt_id {name!r} are split across shards (also in {owner})")
        runs = self._seen_runs
        runs.append(hashes)
        while len(runs) > 1 and len(runs[-1]) * 2 > len(runs[-2]):
            # two sorted runs: the stable sort (timsort) merges them in linear time; each hash
            # takes part in O(log n) merges, so the whole check is O(n log n), not O(n · shards)
            top = runs.pop()
            runs[-1] = np.sort(np.concatenate([runs[-1], top]), kind="stable")
        self._per_shard.append((shard, hashes))  # only to name the other shard in an error

    def _diagnose(self, weights: np.ndarray, codes: np.ndarray, sizes: np.ndarray, names: list[str]) -> pa.Table:
        n_groups = len(names)
        ess = group_ess(weights, codes, n_groups)
        peak = np.full(n_groups, -np.inf)
        np.maximum.at(peak, codes, weights)
        self.stats.prompts += n_groups
        self.stats.rows += len(weights)
        self.stats.ess_sum += float(ess.sum())
        self.stats.ess_min = min(self.stats.ess_min, float(ess.min()))
        self.stats.max_weight_sum += float(peak.sum())
        self.stats.max_weight_max = max(self.stats.max_weight_max, float(peak.max()))
        self.stats.histogram += np.histogram(np.clip(weights, 0, HIST_EDGES[-1]), HIST_EDGES)[0]
        k = np.bincount(codes, minlength=n_groups)
        return pa.table({"prompt_id": names, "k": k.astype(np.int32), "ess": ess, "max_weight": peak})


def iter_shards(paths: list[Path]) -> Iterator[tuple[Path, pa.Table]]:
    for path in paths:
        yield path, pq.read_table(path)


def plot_histogram(stats: WeightStats, path: Path, beta_over_lambda: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    centers = np.sqrt(np.maximum(HIST_EDGES[:-1], 1e-5) * HIST_EDGES[1:])
    ax.bar(centers, stats.histogram, width=np.diff(HIST_EDGES), align="center", edgecolor="black", linewidth=0.3)
    ax.set_xscale("log")
    ax.axvline(1.0, color="red", linewidth=1, label="uniform (F = 1)")
    ax.set_xlabel("weight F (log scale)")
    ax.set_ylabel("samples")
    m = stats.metrics()
    ax.set_title(f"EVE weights, β/λ = {beta_over_lambda:g}: ESS mean {m['ess_mean']:.2f}, max F mean {m['max_weight_mean']:.2f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
