"""Evaluation metrics of the paper: P(π), PGR (§9.5), win-rate, the k3 KL estimator (§9.3), and
mean ± 95 % CI over seeds.

All inputs are per-sample arrays; sequence log-probs are sums over completion tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Two-sided 97.5 % quantiles of Student's t for df = 1..30; beyond that the normal 1.96 is within 2 %.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def performance(gold_rewards: Sequence[float]) -> float:
    """P(π) = mean gold reward of π's answers to the test prompts (§9.5)."""
    values = np.asarray(gold_rewards, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no gold rewards to average")
    if not np.all(np.isfinite(values)):
        raise ValueError("gold rewards contain NaN or inf")
    return float(values.mean())


def pgr(p_policy: float, p_weak: float, p_strong: float) -> float:
    """(P(π) − P(π_weak)) / (P(π_strong) − P(π_weak)); NaN when the gap is zero (undefined), and the
    caller flags a negative gap (strong ceiling below the weak teacher), where PGR's sign inverts."""
    gap = p_strong - p_weak
    if gap == 0:
        return math.nan
    return (p_policy - p_weak) / gap


def win_rate(rewards: Sequence[float], reference_rewards: Sequence[float]) -> float:
    """Share of prompts where the policy's answer beats the reference's (paired; a tie counts ½)."""
    a, b = np.asarray(rewards, dtype=np.float64), np.asarray(reference_rewards, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"win-rate needs paired, non-empty rewards (got {a.shape} vs {b.shape})")
    return float(np.mean((a > b) + 0.5 * (a == b)))


def k3_terms(logp_policy: Sequence[float], logp_ref: Sequence[float]) -> np.ndarray:
    """Per-sample k3 = (r − 1) − log r with r = π_ref(y|x)/π_θ(y|x), y ~ π_θ (Schulman 2020, §9.3).

    Each term is ≥ 0 and its mean is unbiased for KL(π_θ‖π_ref) when y is drawn from π_θ itself
    (temperature 1). expm1 keeps small |log r| exact; log r > ~709 overflows to inf, which is
    reported as inf rather than clipped: the estimator genuinely has no finite value there."""
    log_r = np.asarray(logp_ref, dtype=np.float64) - np.asarray(logp_policy, dtype=np.float64)
    if not np.all(np.isfinite(log_r)):
        raise ValueError("log-probs for the KL estimate contain NaN or inf")
    with np.errstate(over="ignore"):
        return np.expm1(log_r) - log_r


def k3_kl(logp_policy: Sequence[float], logp_ref: Sequence[float]) -> float:
    return float(np.mean(k3_terms(logp_policy, logp_ref)))


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float  # NaN with one value: no interval
    n: int

    def __str__(self) -> str:
        if math.isnan(self.mean):
            return "–"
        if self.n < 2 or math.isnan(self.half_width):
            return f"{self.mean:.3f}"
        return f"{self.mean:.3f} ± {self.half_width:.3f}"


def mean_ci95(values: Sequence[float]) -> Interval:
    """Mean and the half-width of its two-sided 95 % Student-t interval (sample std, ddof=1)."""
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if data.size == 0:
        return Interval(math.nan, math.nan, 0)
    if data.size == 1:
        return Interval(float(data[0]), math.nan, 1)
    df = data.size - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96
    return Interval(float(data.mean()), float(t * data.std(ddof=1) / math.sqrt(data.size)), int(data.size))
