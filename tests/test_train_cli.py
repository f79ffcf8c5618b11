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
    import shutil

    data = write_completions(tmp_path / "d.parquet")
    out = tmp_path / "out"
    no_weights, no_tokenizer = tmp_path / "no_weights", tmp_path / "no_tokenizer"
    for folder, drop in ((no_weights, ("*.safetensors", "*.bin")), (no_tokenizer, ("tokenizer*", "vocab*", "special_tokens*"))):
        shutil.copytree(tiny_char_model_dir, folder)
        for pattern in drop:
            for path in folder.glob(pattern):
                path.unlink()
    for argv in (["train", "sft", "--model", str(tmp_path), "--data", str(data), "--out", str(out)],
                 ["train", "sft", "--model", str(no_weights), "--data", str(data), "--out", str(out)],
                 ["train", "sft", "--model", str(no_tokenizer), "--data", str(data), "--out", str(out)],
                 ["train", "sft", "--model", str(tiny_char_model_dir), "--data", str(tmp_path / "none.parquet"), "--out", str(out)],
                 ["train", "sft", "--model", str(tiny_char_model_dir), "--data", str(data), "--out", str(out), "--set", "train.nope=1"]):
        assert main(argv) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("w2s: error:") and len(error.splitlines()) == 1, error
    assert not out.exists()


def _train(tmp_path, model, data, out, *extra):
    args = [f"--set=train.{k}={v}" for k, v in SETTINGS.items()] + ["--set=engine.precision=fp32", *extra]
    return main(["train", "sft", "--model", str(model), "--data", str(data), "--out", str(out), *args])


def _digests(folder):
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_another_run_into_the_same_out_is_refused_until_fresh(tmp_path, tiny_char_model_dir, capsys):
    """Run B (other data, other settings) into run A's finished --out: one line, exit 2, A's work
    untouched; with --fresh, B's result is what B computes in a folder of its own."""
    a = write_completions(tmp_path / "a.parquet")
    b = write_completions(tmp_path / "b.parquet", n=4)
    out = tmp_path / "out"
    assert _train(tmp_path, tiny_char_model_dir, a, out) == 0
    before = _digests(out / "model")
    capsys.readouterr()
    for extra in ((), ("--set=seed=1",)):
        assert _train(tmp_path, tiny_char_model_dir, b if not extra else a, out, *extra) == 2
        error = capsys.readouterr().err.strip()
        assert "another run's" in error and len(error.splitlines()) == 1, error
    assert _digests(out / "model") == before
    assert _train(tmp_path, tiny_char_model_dir, b, out, "--fresh") == 0
    assert _train(tmp_path, tiny_char_model_dir, b, tmp_path / "alone") == 0
    assert _digests(out / "model") == _digests(tmp_path / "alone" / "model") != before
    (out / ".w2s-train.json").unlink()  # work whose origin nobody recorded is not resumed either
    assert _train(tmp_path, tiny_char_model_dir, b, out) == 2


def test_a_killed_run_resumes_only_for_its_own_command(tmp_path, tiny_char_model_dir):
    import json
    import os
    import signal
    import subprocess
    import sys

    a = write_completions(tmp_path / "a.parquet")
    b = write_completions(tmp_path / "b.parquet", n=4)
    out = tmp_path / "out"
    args = [f"--set=train.{k}={v}" for k, v in SETTINGS.items()] + ["--set=engine.precision=fp32", "--set=engine.resume_every_steps=1"]

    def command(data):
        return [sys.executable, "-m", "w2s.cli", "train", "sft", "--model", str(tiny_char_model_dir), "--data", str(data),
                "--out", str(out), *args]

    killed = subprocess.run(command(a), env={**os.environ, "W2S_DIE_AT": "train:2"}, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    other = subprocess.run(command(b), capture_output=True, text=True, timeout=600)
    assert other.returncode == 2 and "another run's" in other.stderr, other.stderr[-2000:]
    again = subprocess.run(command(a), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "train_result.json").read_text())["resumed_from_step"] == 2


def test_w2s_train_names_unreadable_or_meaningless_data_in_one_line(tmp_path, tiny_char_model_dir, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty, text, truncated, same = (tmp_path / n for n in ("empty.parquet", "text.parquet", "cut.parquet", "same.parquet"))
    empty.write_bytes(b"")
    text.write_text("prompt,completion\nhi,there\n")
    truncated.write_bytes(write_completions(tmp_path / "whole.parquet").read_bytes()[:-20])
    pq.write_table(pa.table({"prompt": ["p"] * 4, "chosen": ["a", "b", "c", "d"], "rejected": ["x", "b", "y", "z"]}), same)
    for objective, data, expected in (("sft", empty, "not a readable Parquet file"), ("sft", text, "not a readable Parquet file"),
                                      ("sft", truncated, "not a readable Parquet file"), ("dpo", same, "row 1: chosen and rejected are the same")):
        code = main(["train", objective, "--model", str(tiny_char_model_dir), "--data", str(data), "--out", str(tmp_path / objective / data.stem)])
        error = capsys.readouterr().err.strip()
        assert code == 1 and expected in error and len(error.splitlines()) == 1, (data.name, error)
        assert not (tmp_path / objective / data.stem).exists()  # nothing written
