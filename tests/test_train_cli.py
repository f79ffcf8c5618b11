"""`w2s train`: the trainer as a standalone front-end. Its result equals calling the trainer
directly with the same settings (so `--set train.*` / `engine.*` reach it), and bad arguments stop
with exit 2 before any compute."""

from __future__ import annotations

import torch
from tests.test_training_common import load_weights, write_completions

from w2s.cli import main
from w2s.config import StudentConfig, TrainingEngineConfig
from w2s.training import train

SETTINGS = dict(learning_rate=3e-3, warmup_steps=0, lr_scheduler="constant", batch_size=4, micro_batch_size=2, max_steps=3,
                checkpoint_fractions=[1.0])


def test_w2s_train_weighted_mle_equals_the_trainer_called_directly(tmp_path, tiny_char_model_dir):
    data = write_completions(tmp_path / "d.parquet", weights=[1, 2, 0.5, 1, 1, 0, 1.5, 1])
    args = [f"--set=train.{k}={v}" for k, v in SETTINGS.items()] + ["--set=engine.precision=fp32", "--set=seed=3"]
    code = main(["train", "weighted_mle", "--model", str(tiny_char_model_dir), "--data", str(data), "--out", str(tmp_path / "cli"), *args])
    assert code == 0
    train(StudentConfig(**SETTINGS), TrainingEngineConfig(precision="fp32"), "weighted_mle", tiny_char_model_dir, [data],
          tmp_path / "direct", seed=3)
    via_cli, direct = load_weights(tmp_path / "cli" / "model"), load_weights(tmp_path / "direct" / "model")
    base = load_weights(tiny_char_model_dir)
    assert all(torch.equal(via_cli[n], direct[n]) for n in direct)
    assert not all(torch.equal(via_cli[n], base[n]) for n in base)  # it trained


def test_w2s_train_rejects_bad_arguments_before_compute(tmp_path, tiny_char_model_dir, capsys):
    data = write_completions(tmp_path / "d.parquet")
    out = tmp_path / "out"
    for argv in (["train", "sft", "--model", str(tmp_path), "--data", str(data), "--out", str(out)],
                 ["train", "sft", "--model", str(tiny_char_model_dir), "--data", str(tmp_path / "none.parquet"), "--out", str(out)],
                 ["train", "sft", "--model", str(tiny_char_model_dir), "--data", str(data), "--out", str(out), "--set", "train.nope=1"]):
        assert main(argv) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("w2s: error:") and len(error.splitlines()) == 1, error
    assert not out.exists()
