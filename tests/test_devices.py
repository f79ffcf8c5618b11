"""run.device and the GPU preflight (w2s/devices.py): a machine or pod with fewer GPUs than the
config's ranks fails before compute in one line naming the key; CPU runs any rank count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from w2s.config.loading import load_config
from w2s.devices import check_gpus, check_pod_gpus, gpus_needed, torch_device

REPO = Path(__file__).resolve().parents[1]
TLDR = REPO / "configs" / "tldr_llama3b.yaml"


def _cfg(path=REPO / "pipeline_config.yaml", **sets):
    return load_config(path, [f"{k}={v}" for k, v in sets.items()])


def test_too_few_visible_gpus_is_one_line_naming_the_key():
    cfg = _cfg(TLDR)
    assert gpus_needed(cfg)["engines.training.world_size"] == 8
    problem = check_gpus(cfg, visible=1)
    assert problem.startswith("engines.training.world_size=8 needs 8 GPUs; this machine has 1 visible") and "\n" not in problem
    assert check_gpus(cfg, visible=8) is None
    tp = _cfg(TLDR, **{"engines.generation.tensor_parallel_size": 16, "engines.generation.data_parallel_size": 1})
    assert check_gpus(tp, visible=8).startswith("engines.generation.tensor_parallel_size=16 needs 16 GPUs")


def test_cpu_runs_any_rank_count_and_cuda_needs_a_gpu():
    ranks = _cfg(**{"engines.training.world_size": 4})
    assert check_gpus(ranks, visible=0) is None  # CPU ranks over gloo
    assert check_gpus(_cfg(**{"engines.training.world_size": 4, "run.device": "cpu"}), visible=1) is None
    assert check_gpus(_cfg(**{"run.device": "cuda"}), visible=0).startswith("run.device=cuda but no CUDA GPU is visible")


def test_pod_gpu_count_against_the_config():
    cfg = _cfg(TLDR)
    assert check_pod_gpus(cfg, 1) == "engines.training.world_size=8 needs 8 GPUs; a pod with gpu_count=1 has 1"
    assert check_pod_gpus(cfg, 8) is None


def test_device_reaches_the_run_context_and_resolves():
    assert _cfg(**{"run.device": "cpu"}).run_context().device == "cpu"
    assert torch_device("cpu") == "cpu"
    assert torch_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="run.device=cuda but no CUDA GPU"):
            torch_device("cuda")


def test_cli_fails_in_one_line_before_compute(tmp_path):
    local = [f"--set=run.artifact_root={tmp_path / 'root'}", f"--set=run.tracking_uri=sqlite:///{tmp_path / 'root' / 'mlflow.db'}",
             "--set=engines.training.world_size=8"]
    w2s = [sys.executable, "-m", "w2s.cli"]
    default = str(REPO / "pipeline_config.yaml")
    pod = subprocess.run([*w2s, "config", "validate", default, *local, "--pod-gpus", "1"], capture_output=True, text=True, timeout=300)
    assert pod.returncode == 2 and pod.stderr.strip().splitlines() == [
        "w2s: error: engines.training.world_size=8 needs 8 GPUs; a pod with gpu_count=1 has 1"]
    if not torch.cuda.is_available():
        run = subprocess.run([*w2s, "run", "--config", default, *local, "--set=run.device=cuda", "--until", "data"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
        assert "run.device=cuda but no CUDA GPU is visible" in run.stderr
        assert not (tmp_path / "root").exists()  # nothing written


def test_data_parallel_replicas_count_against_the_visible_gpus():
    dp = _cfg(TLDR, **{"engines.generation.data_parallel_size": 4, "engines.generation.tensor_parallel_size": 2,
                       "engines.training.world_size": 1})
    assert gpus_needed(dp)["engines.generation.data_parallel_size×tensor_parallel_size"] == 8
    assert check_gpus(dp, visible=8) is None
    assert check_gpus(dp, visible=4).startswith("engines.generation.data_parallel_size×tensor_parallel_size=8 needs 8 GPUs")
    assert check_pod_gpus(dp, 4) == "engines.generation.data_parallel_size×tensor_parallel_size=8 needs 8 GPUs; a pod with gpu_count=4 has 4"


def test_training_across_nodes_does_not_need_the_ranks_gpus_in_this_pod():
    nodes = _cfg(TLDR, **{"engines.training.nodes": 2, "engines.training.staging_claim": "w2s-staging",
                          "engines.generation.data_parallel_size": 1})
    assert "engines.training.world_size" not in gpus_needed(nodes) and check_pod_gpus(nodes, 1) is None
