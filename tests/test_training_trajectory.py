"""Trajectory parity: the trainer learns, step by step, what an independent loop learns on the same
rows in the same order (tests/trajectory_reference.py), for sft, weighted_mle and dpo, in fp32 and
in bf16 — not one step, ten.

The regime is the one where bf16 used to fail: a fine-tuning lr (1e-5) far below the bf16 step of
the weights (≈ 1.2e-4 for |w| ≈ 0.02, 2⁻⁷ for a norm's 1.0). DeepSpeed's bf16 module started its
fp32 masters on the bf16 grid, so updates under half a step rounded back to the same forward weights
and DPO's margin reached half the reference's (docs/results/bf16-dynamics.md); this test failed on
that code with the reference's margin 0.0104 against 0.0060 at step 9.

Tolerances, derived rather than tuned:
- Both sides are compared on what training changed (the DPO margin; a step's loss minus its batch's
  loss under the initial weights), not on the loss itself, whose bf16 offset is the same for both.
- fp32: the two sides compute the same sums in another order (micro-batches, left vs right padding,
  the LM head on completion positions only): float32 rounding, ≤ 0.1 % of what was learned.
- bf16: two correct bf16 implementations differ by rounding in the same format, which is of the
  size of the format's own error. The test measures that error in the same run — the reference in
  bf16 against the reference in fp32, max over steps (`format_error`) — and allows twice it. A
  trainer that loses updates (the old bf16) falls behind by far more than the format's own error.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.trajectory_reference import Schedule, train_reference
from w2s.config import DPOConfig, StudentConfig, TrainConfig, TrainingEngineConfig
from w2s.training import train

pytestmark = pytest.mark.slow

STEPS, BATCH, LR, WARMUP = 10, 8, 1e-5, 2
WORDS = ["abc", "hello", "cat", "blue", "seven", "moon", "tree", "fish", "red", "sun", "dog", "rain", "star", "leaf", "ship", "road"]


def _rows(objective: str) -> dict:
    words = WORDS * 2  # 32 rows: 4 steps per epoch, so ten steps cross epochs (a reshuffle each)
    prompts = [f"Q{i}: say {w}." for i, w in enumerate(words)]
    if objective == "dpo":
        return {"prompt": prompts, "chosen": [f" {w} {w}" for w in words], "rejected": [f" {w[::-1]} no" for w in words]}
    rows = {"prompt": prompts, "completion": [f" {w} {w}" for w in words]}
    if objective == "weighted_mle":
        rows["weight"] = [(0.0, 0.5, 1.0, 2.5)[i % 4] for i in range(len(words))]
    return rows


def _config(objective: str):
    common = dict(learning_rate=LR, warmup_steps=WARMUP, lr_scheduler="cosine", batch_size=BATCH, micro_batch_size=4,
                  max_steps=STEPS, checkpoint_fractions=[1.0], max_warmup_fraction=1.0)
    if objective == "dpo":
        return DPOConfig(beta=0.1, **common)
    return (StudentConfig if objective == "weighted_mle" else TrainConfig)(normalisation="token_mean", **common)


@pytest.mark.parametrize("objective", ["sft", "weighted_mle", "dpo"])
def test_the_trainer_follows_an_independent_loop_for_ten_steps_in_fp32_and_bf16(tmp_path, tiny_char_model_dir, objective):
    rows = _rows(objective)
    data = tmp_path / "data.parquet"
    pq.write_table(pa.table(rows), data)
    keys = ["loss", "reward_margin"] if objective == "dpo" else ["loss"]
    ours, reference = {}, {}
    for precision in ("fp32", "bf16"):
        result = train(_config(objective), TrainingEngineConfig(precision=precision), objective, tiny_char_model_dir,
                       [data], tmp_path / precision, progress=False)
        ours[precision] = result.history
        reference[precision] = train_reference(tiny_char_model_dir, objective, rows, steps=STEPS, batch=BATCH,
                                               schedule=Schedule(LR, WARMUP, STEPS), bf16=precision == "bf16")
    for key in keys:
        ref32, ref16 = _learned(reference["fp32"], key), _learned(reference["bf16"], key)
        # ours is measured against the reference's start in its own format (the same initial weights)
        ours32 = _learned(ours["fp32"], key, start=reference["fp32"])
        ours16 = _learned(ours["bf16"], key, start=reference["bf16"])
        learned = max(abs(v) for v in ref32)
        assert ours32 == pytest.approx(ref32, abs=1e-3 * learned), (key, ours32, ref32)
        format_error = max(abs(a - b) for a, b in zip(ref16, ref32))
        assert learned > 4 * format_error, (key, "the regime must learn more than bf16's own error", ref32, ref16)
        gap = max(abs(a - b) for a, b in zip(ours16, ref16))
        assert gap <= 2 * format_error, (key, f"gap {gap:.2e} > 2 × format error {format_error:.2e}", ours16, ref16)


def _learned(history, key, start=None):
    """What training changed, per step: the margin (0 at the start), or the loss of the step's batch
    minus that batch's loss under the initial weights (the reference measured it)."""
    if key == "reward_margin":
        return [h[key] for h in history]
    start = start or history
    return [h["loss"] - s["loss_at_start"] for h, s in zip(history, start)]


def test_bf16_training_of_a_bf16_checkpoint_learns_what_fp32_learns(tmp_path, tiny_char_model_dir):
    """A checkpoint stored in bf16 (the paper's Llama, GPT-2) puts every weight on the bf16 grid:
    under plain autocast (the reference loop, TRL's bf16) no update shows in the forward until the
    updates of a weight sum past half a step, and DPO's margin falls behind fp32's. The trainer
    dithers such weights inside their rounding interval (engine.dither_off_the_bf16_grid), so the
    first forward is unchanged and small updates show in proportion. Asserted: it recovers at least
    half of what the grid costs plain autocast (measured: gap to fp32 8.7e-4 against 3.7e-3)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model = shutil.copytree(tiny_char_model_dir, tmp_path / "bf16-checkpoint")
    weights = load_file(str(model / "model.safetensors"))
    save_file({k: v.bfloat16().float().contiguous() for k, v in weights.items()}, str(model / "model.safetensors"),
              metadata={"format": "pt"})
    rows = _rows("dpo")
    data = tmp_path / "data.parquet"
    pq.write_table(pa.table(rows), data)
    ours = train(_config("dpo"), TrainingEngineConfig(precision="bf16"), "dpo", model, [data], tmp_path / "ours", progress=False)
    schedule = Schedule(LR, WARMUP, STEPS)
    fp32, plain = (train_reference(model, "dpo", rows, steps=STEPS, batch=BATCH, schedule=schedule, bf16=bf16) for bf16 in (False, True))
    margin = {name: _learned(history, "reward_margin") for name, history in (("ours", ours.history), ("fp32", fp32), ("plain", plain))}
    lost_plain = max(abs(a - b) for a, b in zip(margin["plain"], margin["fp32"]))
    lost_ours = max(abs(a - b) for a, b in zip(margin["ours"], margin["fp32"]))
    assert lost_plain > 0.2 * max(margin["fp32"]), "the grid must cost plain autocast something here, or this shows nothing"
    assert lost_ours <= 0.5 * lost_plain, (margin, lost_ours, lost_plain)
    exported = load_file(str(tmp_path / "ours" / "model" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in exported.values())
