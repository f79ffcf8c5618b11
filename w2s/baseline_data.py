"""Training data of three baselines (issue 8), importable without Prefect or torch:

* refinement (§9.6): the rewrite of a weak answer that becomes an SFT completion, and the fallback
  when there is none;
* DPO with the weak reward (§5.2, §11.2): one (chosen, rejected) pair per prompt from the strong
  model's K samples, ranked by the weak teacher's log-ratio;
* strong-as-evaluator (§11.1): weights N·softmax(r_strong/λ) over D_weak.

The stage files in tasks/ (refinement.py, dpo_weak_reward.py, strong_evaluator.py) call these.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

D_WEAK_FILE = "weak_demos.parquet"
D_WEAK_COLUMNS = ("prompt_id", "prompt", "response", "finish_reason", "meta")
SCORE_COLUMNS = ("prompt_id", "sample_idx", "prompt", "completion", "finish_reason", "logp_weak", "logp_weak_ref")


# ------------------------------------------------------------------------------------------ D_weak
def read_weak_demos(folder: Path, where: str) -> pa.Table:
    """D_weak from a weak_demos artifact folder, checked: columns, rows, unique prompt ids, text.
    A matched_demos artifact answers each prompt K times: its rows are unique by (prompt_id, sample_idx)."""
    path = folder / D_WEAK_FILE
    if not path.exists():
        raise ValueError(f"{where}: no {D_WEAK_FILE} (is this a weak_demos artifact?)")
    table = pq.read_table(path)
    missing = [c for c in D_WEAK_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{where}/{D_WEAK_FILE}: missing column(s) {missing}; has {table.column_names}")
    if table.num_rows == 0:
        raise ValueError(f"{where}/{D_WEAK_FILE} has no rows")
    ids = table.column("prompt_id").to_pylist()
    by_sample = "sample_idx" in table.column_names
    keys = list(zip(ids, table.column("sample_idx").to_pylist())) if by_sample else ids
    dupes = sorted(str(key) for key, count in Counter(keys).items() if count > 1)
    if dupes:
        raise ValueError(f"{where}/{D_WEAK_FILE}: duplicate {'(prompt_id, sample_idx)' if by_sample else 'prompt_ids'} {dupes[:5]}")
    for column in ("prompt", "response"):
        bad = [ids[i] for i, v in enumerate(table.column(column).to_pylist()) if not isinstance(v, str)]
        if bad:
            raise ValueError(f"{where}/{D_WEAK_FILE}: null {column} for prompt_ids {bad[:5]}")
    empty_prompt = [ids[i] for i, v in enumerate(table.column("prompt").to_pylist()) if not v.strip()]
    if empty_prompt:
        raise ValueError(f"{where}/{D_WEAK_FILE}: empty prompt for prompt_ids {empty_prompt[:5]}")
    return table


# -------------------------------------------------------------------------------------- refinement
def refined_completion(rewrite: str | None, weak_response: str) -> tuple[str, str]:
    """(SFT completion, source). A rewrite is normalised to the TL;DR completion shape (one leading
    space, no surrounding whitespace). No usable rewrite (None: the prompt was skipped as overlong;
    blank text) falls back to the weak answer itself, unchanged, so every D_weak row stays in the
    SFT data and the refinement baseline never trains on less data than naive SFT."""
    if rewrite is None:
        return weak_response, "fallback_skipped"
    if not rewrite.strip():
        return weak_response, "fallback_empty"
    return " " + rewrite.strip(), "rewrite"


# ------------------------------------------------------------------------------ DPO, weak reward
def read_scores(paths: Sequence[tuple[str, Path]], where: str) -> pa.Table:
    """Every scored row of a scoring artifact, checked for the columns and finite log-probs."""
    if not paths:
        raise ValueError(f"{where}: no shards/ Parquet files (is this a scoring artifact?)")
    tables = []
    for rel, path in paths:
        names = pq.read_schema(path).names
        missing = [c for c in SCORE_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"{where}/{rel}: missing column(s) {missing}; has {names}")
        table = pq.read_table(path, columns=list(SCORE_COLUMNS))
        for column in ("logp_weak", "logp_weak_ref"):
            values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad):
                pid = table.column("prompt_id")[int(bad[0])].as_py()
                raise ValueError(f"{where}/{rel}: row {int(bad[0])} (prompt_id {pid}): {column} is {values[bad[0]]}")
        tables.append(table)
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise ValueError(f"{where}: the shards hold no rows")
    return table


def select_pairs(scores: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """Every within-prompt pair of samples the weak teacher orders: chosen = the one with the higher
    weak log-ratio log π_weak − log π_weak_ref. K samples give up to K(K−1)/2 pairs per prompt: the
    same comparisons EVE's F-weights express over the same samples (w2s/budget.py says why all of
    them: the paper fixes DPO at one epoch, and one best-vs-worst pair per prompt left it 3 steps).

    Empty completions are not candidates (DPO data needs text on both sides; a sample that stopped
    at once carries no content to prefer). Skipped and counted: prompts with fewer than 2 candidates
    (`skipped_too_few`), pairs with equal ratios (`skipped_tie`: the weak teacher expresses no
    preference) or equal texts (`skipped_equal_text`). Pairs are ordered by prompt, then sample_idx.
    """
    rows = scores.to_pydict()
    by_prompt: dict[str, list[int]] = {}
    for i, pid in enumerate(rows["prompt_id"]):
        by_prompt.setdefault(pid, []).append(i)
    counts = {"prompts": len(by_prompt), "skipped_too_few": 0, "skipped_tie": 0, "skipped_equal_text": 0,
              "empty_completions": sum(c == "" for c in rows["completion"])}
    out: dict[str, list] = {k: [] for k in (
        "prompt_id", "prompt", "chosen", "rejected", "chosen_sample_idx", "rejected_sample_idx",
        "chosen_log_ratio", "rejected_log_ratio", "chosen_finish_reason", "rejected_finish_reason")}
    for pid, members in by_prompt.items():
        prompts = {rows["prompt"][i] for i in members}
        if len(prompts) != 1:
            raise ValueError(f"prompt_id {pid}: its samples carry {len(prompts)} different prompts")
        candidates = sorted((i for i in members if rows["completion"][i] != ""), key=lambda i: rows["sample_idx"][i])
        if len(candidates) < 2:
            counts["skipped_too_few"] += 1
            continue
        ratio = {i: rows["logp_weak"][i] - rows["logp_weak_ref"][i] for i in candidates}
        for a, first in enumerate(candidates):
            for second in candidates[a + 1 :]:
                if ratio[first] == ratio[second]:
                    counts["skipped_tie"] += 1
                    continue
                if rows["completion"][first] == rows["completion"][second]:
                    counts["skipped_equal_text"] += 1
                    continue
                best, worst = (first, second) if ratio[first] > ratio[second] else (second, first)
                out["prompt_id"].append(pid)
                out["prompt"].append(rows["prompt"][best])
                for side, i in (("chosen", best), ("rejected", worst)):
                    out[side].append(rows["completion"][i])
                    out[f"{side}_sample_idx"].append(rows["sample_idx"][i])
                    out[f"{side}_log_ratio"].append(ratio[i])
                    out[f"{side}_finish_reason"].append(rows["finish_reason"][i])
    counts["pairs"] = len(out["prompt_id"])
    return pa.table(out), counts


# ------------------------------------------------------------------------- strong as evaluator
def evaluator_weights(r_strong: np.ndarray, inverse_lambda: float) -> np.ndarray:
    """w_i = N·exp(r_i/λ) / Σ_j exp(r_j/λ) over all N rows of D_weak (mean 1), computed shifted by
    the max so |r/λ| in the thousands neither overflows nor underflows to 0/0."""
    r = np.asarray(r_strong, dtype=np.float64)
    if r.size == 0 or not np.all(np.isfinite(r)) or not math.isfinite(inverse_lambda):
        raise ValueError("strong-evaluator weights need finite scores and a finite 1/λ")
    f = inverse_lambda * r
    shifted = f - f.max()
    return len(f) * np.exp(shifted - np.log(np.exp(shifted).sum()))


def inverse_lambda_for_ess(r_strong: np.ndarray, target_frac: float) -> float:
    """The 1/λ ≥ 0 at which evaluator_weights(r, 1/λ) has ESS = target_frac · N.

    ESS/N = 1/(N Σ p_i²) with p = softmax(r/λ) falls monotonically in 1/λ (d log Σp²/d(1/λ) =
    2(E_{2/λ}[r] − E_{1/λ}[r]) ≥ 0), from 1 at 1/λ = 0 to (rows tied at max r)/N as 1/λ → ∞, so
    bisection in log 1/λ finds it. All-equal r (every 1/λ gives uniform weights) returns 0; a target
    below the one-hot floor returns the largest 1/λ searched (weights at their limit)."""
    r = np.asarray(r_strong, dtype=np.float64)
    if not 0 < target_frac < 1:
        raise ValueError(f"target ESS fraction must be in (0, 1), got {target_frac}")
    spread = float(r.max() - r.min()) if r.size else 0.0
    if spread == 0.0:
        return 0.0

    def frac(inverse_lambda: float) -> float:
        return effective_sample_size(evaluator_weights(r, inverse_lambda)) / r.size

    lo, hi = 1e-6 / spread, 1e6 / spread  # (1/λ)·spread from 1e-6 (uniform to 1e-6) to 1e6 (at the one-hot limit)
    if frac(hi) >= target_frac:
        return hi
    if frac(lo) <= target_frac:
        return lo
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if frac(mid) > target_frac else (lo, mid)
    return math.sqrt(lo * hi)


def effective_sample_size(weights: np.ndarray) -> float:
    w = np.asarray(weights, dtype=np.float64)
    return float(w.sum() ** 2 / (w**2).sum())
