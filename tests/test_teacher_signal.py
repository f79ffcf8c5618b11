"""The weak-teacher signal diagnostics against hand computations (w2s/teacher_signal.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from w2s.teacher_signal import signal_markdown, teacher_signal

# two prompts, K = 3, rows deliberately interleaved; a third prompt with a log-ratio tie
IDS = ["a", "b", "a", "b", "a", "b", "c", "c"]
DELTA = {"a": [1.0, 0.0, -1.0], "b": [0.0, 2.0, 1.0], "c": [0.0, 0.0]}
GOLD = {"a": [0.9, 0.5, 0.1], "b": [0.2, 0.3, 0.8], "c": [1.0, 0.0]}


def _rows():
    seen = {k: 0 for k in DELTA}
    delta, gold = [], []
    for pid in IDS:
        delta.append(DELTA[pid][seen[pid]])
        gold.append(GOLD[pid][seen[pid]])
        seen[pid] += 1
    logp_ref = np.linspace(-30.0, -10.0, len(IDS))  # the log-ratio is all that may matter
    return logp_ref + np.array(delta), logp_ref, np.array(gold)


def _weighted_gold_by_hand(beta: float) -> float:
    means = []
    for pid in DELTA:
        d, g = DELTA[pid], GOLD[pid]
        if math.isinf(beta):
            top = max(d)
            w = [len(d) * (x == top) / d.count(top) for x in d]
        else:
            z = sum(math.exp(beta * x) for x in d)
            w = [len(d) * math.exp(beta * x) / z for x in d]
        means.append(sum(wi * gi for wi, gi in zip(w, g)) / len(d))
    return sum(means) / len(means)


def test_signal_matches_hand_computation():
    logp_weak, logp_ref, gold = _rows()
    signal = teacher_signal(IDS, logp_weak, logp_ref, gold, np.array([0.1, 0.3]), [0.5, 1.0, math.inf])
    assert [p.beta_over_lambda for p in signal.points] == [0.0, 0.5, 1.0, math.inf]
    for point in signal.points:
        assert point.gold_weighted == pytest.approx(_weighted_gold_by_hand(point.beta_over_lambda) if point.beta_over_lambda
                                                    else np.mean([np.mean(g) for g in GOLD.values()]), abs=1e-12)
    assert signal.points[-1].gold_weighted == pytest.approx((0.9 + 0.3 + 0.5) / 3)  # top picks; c's tie splits evenly
    assert signal.points[0].ess_mean == pytest.approx(np.mean([3, 3, 2]))
    assert signal.gold_uniform == pytest.approx((0.5 + 13 / 30 + 0.5) / 3)
    assert signal.gold_best_of_k == pytest.approx((0.9 + 0.8 + 1.0) / 3)
    assert signal.gold_naive_sft == pytest.approx(0.2)
    # a: 3 of 3 pairs agree; b: 2 of 3; c: one tied pair counts ½
    assert signal.pairs == 7 and signal.pairwise_accuracy == pytest.approx((3 + 2 + 0.5) / 7)
    # a: top pick is gold-best; b: it is not; c: two picks, one gold-best
    assert signal.top1_agreement == pytest.approx((1 + 0 + 0.5) / 3)
    assert signal.top1_chance == pytest.approx((1 / 3 + 1 / 3 + 1 / 2) / 3)


def test_signal_markdown_lists_every_point_and_rejects_bad_input():
    logp_weak, logp_ref, gold = _rows()
    signal = teacher_signal(IDS, logp_weak, logp_ref, gold, np.array([0.1]), [1.0, math.inf])
    text = "\n".join(signal_markdown(signal.as_json()))
    assert "β/λ = 1 " in text and "β/λ = ∞" in text and "naive SFT's data: D_weak (π_weak's answers to other prompts) | 0.100" in text
    matched = "\n".join(signal_markdown(signal.as_json() | {"naive_sft_data": "matched"}))
    assert "naive SFT's data: π_weak's K answers to EVE's prompts | 0.100" in matched and "D_weak" not in matched
    legacy = {k.replace("gold_naive_sft", "gold_d_weak"): v for k, v in signal.as_json().items()}  # a cached v1 signal.json
    assert "D_weak (π_weak's answers to other prompts) | 0.100" in "\n".join(signal_markdown(legacy))
    with pytest.raises(ValueError, match="row-aligned"):
        teacher_signal(IDS[:-1], logp_weak, logp_ref, gold, np.array([0.1]), [1.0])
    with pytest.raises(ValueError, match="not finite"):
        teacher_signal(IDS, logp_weak, logp_ref, np.r_[gold[:-1], np.nan], np.array([0.1]), [1.0])


def test_naive_sft_data_is_read_as_d_weak_or_as_k_answers_per_prompt(tmp_path):
    """The gate compares EVE's data with naive SFT's: D_weak (one answer per prompt) or matched_demos
    (K per prompt, told apart by sample_idx); a repeated row is still an error either way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from w2s.baseline_data import read_weak_demos

    def write(name: str, ids: list[str], sample_idx: list[int] | None) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        columns = {"prompt_id": ids, "prompt": ["x"] * len(ids), "response": [" y"] * len(ids), "finish_reason": ["stop"] * len(ids),
                   "meta": ["{}"] * len(ids), "gold_reward": [0.5] * len(ids)}
        if sample_idx is not None:
            columns["sample_idx"] = pa.array(sample_idx, pa.int32())
        pq.write_table(pa.table(columns), folder / "weak_demos.parquet")
        return folder

    assert read_weak_demos(write("matched", ["a", "a", "b", "b"], [0, 1, 0, 1]), "matched").num_rows == 4
    with pytest.raises(ValueError, match=r"duplicate \(prompt_id, sample_idx\).*'a', 1"):
        read_weak_demos(write("matched_repeat", ["a", "a", "b"], [1, 1, 0]), "matched")
    with pytest.raises(ValueError, match=r"duplicate prompt_ids \['a'\]"):
        read_weak_demos(write("d_weak_repeat", ["a", "a", "b"], None), "d_weak")
