"""Exact resume: a run SIGKILLed mid-way and restarted ends with the same weights, bit for bit,
as an uninterrupted run (CPU, deterministic), across epoch boundaries and for every objective's
state (optimiser moments, LR schedule, data order, DPO reference log-probs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_training_common import load_weights, write_completions, write_pairs
from w2s.config import DPOConfig, StudentConfig, TrainingEngineConfig
from w2s.training import train

REPO = Path(__file__).resolve().parents[1]
KILLED_RUN = """
import json, os, signal, sys
from w2s.config import DPOConfig, StudentConfig, TrainingEngineConfig
from w2s.training import train
spec = json.loads(sys.argv[1])
cfg = (DPOConfig if spec["objective"] == "dpo" else StudentConfig)(**spec["cfg"])
def die(step, metrics):
    if step == spec["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: like an OOM kill or preemption
train(cfg, TrainingEngineConfig(**spec["engine"]), spec["objective"], spec["model"], spec["data"], spec["out"],
      on_step=die, progress=False)
"""


def _config(objective):
    kwargs = dict(learning_rate=3e-3, warmup_steps=2, batch_size=4, micro_batch_size=2, max_steps=7,
                  checkpoint_fractions=[0.5, 1.0])
    return DPOConfig(**kwargs) if objective == "dpo" else StudentConfig(**kwargs)


@pytest.mark.parametrize("objective, zero", [("weighted_mle", 0), ("dpo", 2), ("weighted_mle", 3)])
def test_killed_and_resumed_run_ends_with_identical_weights(tmp_path, tiny_char_model_dir, objective, zero):
    data = write_pairs(tmp_path / "d.parquet") if objective == "dpo" else \
        write_completions(tmp_path / "d.parquet", weights=[1, 2, 0.5, 1, 1, 0, 1.5, 1])
    cfg, engine = _config(objective), TrainingEngineConfig(zero_stage=zero, resume_every_steps=2)
    straight = train(cfg, engine, objective, tiny_char_model_dir, [data], tmp_path / "straight", progress=False)

    out = tmp_path / "killed"
    spec = {"objective": objective, "cfg": cfg.model_dump(mode="json"), "engine": engine.model_dump(mode="json"),
            "model": str(tiny_char_model_dir), "data": [str(data)], "out": str(out), "kill_at": 5}
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, json.dumps(spec)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    pointer = json.loads((out / ".resume" / "resume.json").read_text())
    assert pointer["step"] == 4  # killed after step 5, before the next resume point
    assert not (out / "model").exists()

    resumed = train(cfg, engine, objective, tiny_char_model_dir, [data], out, progress=False)
    assert resumed.resumed_from_step == 4
    a, b = load_weights(tmp_path / "straight" / "model"), load_weights(out / "model")
    assert a.keys() == b.keys()
    mismatched = [n for n in a if not torch.equal(a[n], b[n])]
    assert not mismatched, f"weights differ after resume: {mismatched}"
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history[4:]]
    # the mid-run checkpoint (step 4 of 7 ≈ 0.5) was exported before the kill and is the same
    mid = load_weights(tmp_path / "straight" / "checkpoints" / "step-0000004")
    assert all(torch.equal(mid[n], load_weights(out / "checkpoints" / "step-0000004")[n]) for n in mid)


def test_resume_state_of_another_run_is_refused(tmp_path, tiny_char_model_dir):
    data = write_completions(tmp_path / "d.parquet")
    engine = TrainingEngineConfig(resume_every_steps=1)
    out = tmp_path / "out"

    def stop(step, metrics):
        if step == 1:
            raise KeyboardInterrupt  # an in-process interruption right after the first resume point

    with pytest.raises(KeyboardInterrupt):
        train(_config("weighted_mle"), engine, "weighted_mle", tiny_char_model_dir, [data], out, on_step=stop)
    other = _config("weighted_mle").model_copy(update={"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="holds the state of a different run"):
        train(other, engine, "weighted_mle", tiny_char_model_dir, [data], out)
