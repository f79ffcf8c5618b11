"""The DeepSpeed trainer end to end on a tiny model: every objective learns, ZeRO 0-3, LoRA,
sft == weighted_mle(F = 1), checkpoints, MLflow metrics."""

from __future__ import annotations

import pytest
import torch
from tests.test_training_common import load_weights, write_completions, write_pairs

from w2s.config import DPOConfig, StudentConfig, TrainConfig, TrainingEngineConfig
from w2s.training import DataError, train

FAST = dict(learning_rate=3e-3, warmup_steps=0, lr_scheduler="constant", batch_size=8, micro_batch_size=4,
            checkpoint_fractions=[1.0])


def _initial(model_dir):
    return load_weights(model_dir)


def _assert_all_changed(before, after, names=None):
    names = names or before.keys()
    unchanged = [n for n in names if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"


@pytest.mark.parametrize(
    "objective, cfg_cls, zero",
    [("sft", TrainConfig, 0), ("weighted_mle", StudentConfig, 2), ("dpo", DPOConfig, 3)],
)
def test_every_objective_learns_and_moves_every_parameter(tmp_path, tiny_char_model_dir, objective, cfg_cls, zero):
    data = write_pairs(tmp_path / "d.parquet") if objective == "dpo" else \
        write_completions(tmp_path / "d.parquet", weights=[1, 2, 0.5, 1, 1, 0, 1.5, 1])
    cfg = cfg_cls(max_steps=8, **FAST)
    result = train(cfg, TrainingEngineConfig(zero_stage=zero), objective, tiny_char_model_dir, [data], tmp_path / "out")
    losses = [h["loss"] for h in result.history]
    # batch = the whole set, so every step sees the same rows: the loss must fall
    assert losses[-1] < 0.8 * losses[0], losses
    _assert_all_changed(_initial(tiny_char_model_dir), load_weights(tmp_path / "out" / "model"))
    assert all(h["grad_norm"] > 0 for h in result.history)
    if objective == "dpo":
        assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 0
        assert result.history[-1]["reward_accuracy"] == 1.0 and result.history[-1]["reward_margin"] > 0
        assert (tmp_path / "out" / "ref_logps.parquet").exists()


def test_sft_equals_weighted_mle_with_unit_weights(tmp_path, tiny_char_model_dir):
    unweighted = write_completions(tmp_path / "a.parquet")
    ones = write_completions(tmp_path / "b.parquet", weights=[1.0] * 8)
    for normalisation in ("sequence_mean", "token_mean"):
        cfg = StudentConfig(max_steps=3, normalisation=normalisation, **{**FAST, "micro_batch_size": 2})
        sft = train(cfg, TrainingEngineConfig(), "sft", tiny_char_model_dir, [unweighted], tmp_path / f"sft-{normalisation}")
        mle = train(cfg, TrainingEngineConfig(), "weighted_mle", tiny_char_model_dir, [ones], tmp_path / f"mle-{normalisation}")
        a, b = load_weights(tmp_path / f"sft-{normalisation}" / "model"), load_weights(tmp_path / f"mle-{normalisation}" / "model")
        assert all(torch.equal(a[n], b[n]) for n in a)
        assert [h["loss"] for h in sft.history] == [h["loss"] for h in mle.history]
    # weights are not a no-op (so the equality above could have failed)
    other = write_completions(tmp_path / "c.parquet", weights=[1.0] * 7 + [3.0])
    train(cfg, TrainingEngineConfig(), "weighted_mle", tiny_char_model_dir, [other], tmp_path / "other")
    assert not torch.equal(a["model.norm.weight"], load_weights(tmp_path / "other" / "model")["model.norm.weight"])


def test_gradient_accumulation_and_zero_stages_agree(tmp_path, tiny_char_model_dir):
    """One micro-batch on ZeRO-0 (no gradient reduction at all) vs 4 accumulated ones on ZeRO-2
    (fp32: the property is the arithmetic of accumulation, which bf16 rounding would blur)."""
    data = write_completions(tmp_path / "d.parquet", weights=[1, 2, 0.5, 1, 1, 0, 1.5, 1])
    for micro, zero in ((8, 0), (2, 2)):
        cfg = StudentConfig(max_steps=2, **{**FAST, "micro_batch_size": micro})
        train(cfg, TrainingEngineConfig(zero_stage=zero, precision="fp32"), "weighted_mle", tiny_char_model_dir, [data], tmp_path / f"m{micro}")
    a, b = load_weights(tmp_path / "m8" / "model"), load_weights(tmp_path / "m2" / "model")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_lora_trains_adapters_and_exports_a_merged_model(tmp_path, tiny_char_model_dir):
    data = write_completions(tmp_path / "d.parquet")
    cfg = TrainConfig(max_steps=3, lora={"enabled": True, "r": 4, "alpha": 8}, gradient_checkpointing=True, **FAST)
    result = train(cfg, TrainingEngineConfig(), "sft", tiny_char_model_dir, [data], tmp_path / "out")
    before, after = _initial(tiny_char_model_dir), load_weights(tmp_path / "out" / "model")
    assert set(after) == set(before)  # a plain HF model, adapters merged
    _assert_all_changed(before, after, [n for n in before if any(t in n for t in ("q_proj", "k_proj", "v_proj", "o_proj"))])
    assert torch.equal(before["model.norm.weight"], after["model.norm.weight"])  # frozen
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_checkpoints_at_fractions_and_metrics_to_mlflow(tmp_path, tiny_char_model_dir, ctx):
    from mlflow.tracking import MlflowClient

    from w2s.tracking import stage_run

    data = write_completions(tmp_path / "d.parquet")
    cfg = StudentConfig(max_steps=4, **{**FAST, "batch_size": 4, "checkpoint_fractions": [0.25, 0.5, 1.0]},
                        checkpoint_every_steps=3)
    with stage_run(ctx, "student", "k", {}, cache="miss") as run:
        result = train(cfg, TrainingEngineConfig(), "weighted_mle", tiny_char_model_dir, [data], tmp_path / "out", run=run)
    assert [(c.step, c.fraction) for c in result.checkpoints] == [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0)]
    for c in result.checkpoints:
        assert (tmp_path / "out" / c.path / "model.safetensors").exists()
    steps = [load_weights(tmp_path / "out" / c.path)["model.norm.weight"] for c in result.checkpoints]
    assert all(not torch.equal(x, y) for x, y in zip(steps, steps[1:]))
    assert not (tmp_path / "out" / ".resume").exists()  # crash-recovery state is gone after success
    history = MlflowClient(ctx.tracking_uri).get_metric_history(run.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    logged = MlflowClient(ctx.tracking_uri).get_run(run.run_id).data.metrics
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(logged)


def test_bad_data_fails_before_deepspeed_starts(tmp_path, tiny_char_model_dir):
    data = write_completions(tmp_path / "d.parquet", weights=[1, 1, float("nan"), 1, 1, 1, 1, 1])
    with pytest.raises(DataError, match=r"d\.parquet: row 2: weight is nan"):
        train(StudentConfig(**FAST), TrainingEngineConfig(), "weighted_mle", tiny_char_model_dir, [data], tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("zero", [0, 2])
def test_bf16_training_exports_the_fp32_master_weights_and_tracks_fp32(tmp_path, tiny_char_model_dir, zero):
    """At a fine-tuning lr, updates are far below bf16's resolution: the exported model must be the
    fp32 master (every parameter moved, stored as fp32), and the run must follow the fp32 one."""
    data = write_completions(tmp_path / "d.parquet", weights=[1, 2, 0.5, 1, 1, 0, 1.5, 1])
    cfg = StudentConfig(max_steps=3, **{**FAST, "learning_rate": 1e-5})
    runs = {p: train(cfg, TrainingEngineConfig(zero_stage=zero, precision=p), "weighted_mle", tiny_char_model_dir, [data], tmp_path / p)
            for p in ("fp32", "bf16")}
    before = _initial(tiny_char_model_dir)
    exported = load_weights(tmp_path / "bf16" / "model")
    assert all(t.dtype == torch.float32 for t in exported.values())
    _assert_all_changed(before, exported)
    reference = load_weights(tmp_path / "fp32" / "model")
    for name in before:  # bf16 moves each weight about as far as fp32 does (Adam: ~lr per step)
        moved_fp32 = (reference[name] - before[name]).abs().mean()
        moved_bf16 = (exported[name] - before[name]).abs().mean()
        assert 0.5 * moved_fp32 < moved_bf16 < 2 * moved_fp32, (name, moved_fp32, moved_bf16)
    losses = [[h["loss"] for h in runs[p].history] for p in ("fp32", "bf16")]
    assert losses[1] == pytest.approx(losses[0], rel=0.02)


def test_a_finished_training_leaves_no_engine_behind(tmp_path, tiny_char_model_dir):
    """Stages train one after another in the flow's process: an engine left in a reference cycle kept
    its model and optimiser state (≈ 1.5 GB for SmolLM2-135M) until Python's next full collection."""
    import gc

    from deepspeed.runtime.engine import DeepSpeedEngine

    cfg = TrainConfig(learning_rate=1e-3, warmup_steps=0, batch_size=4, micro_batch_size=2, max_steps=2, checkpoint_fractions=[1.0])
    data = write_completions(tmp_path / "d.parquet")
    gc.collect()
    earlier = {id(o) for o in gc.get_objects() if isinstance(o, DeepSpeedEngine)}  # another test's, held by its own references
    gc.disable()  # only what train itself frees counts
    try:
        train(cfg, TrainingEngineConfig(precision="fp32"), "sft", tiny_char_model_dir, [data], tmp_path / "out", progress=False)
        alive = [o for o in gc.get_objects() if isinstance(o, DeepSpeedEngine) and id(o) not in earlier]
    finally:
        gc.enable()
    assert alive == []
