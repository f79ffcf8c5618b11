"""Attacks on a real artifact root (configs/tiny.yaml through the CLI: real Prefect, MLflow,
DeepSpeed): every kind of damaged file is recomputed to a clean run's digests, a pickle planted in
the resume state never runs, and two identical runs started together compute each stage once."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from tests.cli_runs import STAGES, child_env, finish, start, tiny_run_args
from tests.cli_runs import run_tiny as _run
from tests.cli_runs import stage_table as _table
from tests.test_flow_resume import _digests
from tests.payloads import pickle_payload
from tests.test_partial import flip_byte, truncate


def _damage_targets(root):
    """One file of every kind a rerun may meet: finished shards of the three table stages, a DPO
    reference table, a final model, a training checkpoint of the killed stage, its resume state and
    a manifest."""
    one = lambda pattern: sorted(root.glob(pattern))[0]  # noqa: E731
    return {
        "sampling shard": one("sampling/*/shards/part-00000.parquet"),
        "scoring shard": one("scoring/*/shards/part-00001.parquet"),
        "weights shard": one("weights/*/shards/part-00000.parquet"),
        "ref log-probs": one("weak_dpo/*/ref_logps.parquet"),
        "final model": one("weak_sft/*/model/model.safetensors"),
        "checkpoint": one("student/*/checkpoints/step-*/model.safetensors"),
        "resume state": one("student/*/.resume/step-*/mp_rank_00_model_states.pt"),
        "manifest": one("data/*/manifest.json"),
    }


@pytest.mark.slow
def test_every_kind_of_damaged_file_is_recomputed_to_a_clean_runs_digests(tmp_path):
    clean = _run(tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    killed = _run(tmp_path / "flip", die_at="student:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    shutil.copytree(tmp_path / "flip", tmp_path / "truncate")

    marker = tmp_path / "marker"
    for variant, hurt in (("flip", flip_byte), ("truncate", truncate)):
        root = tmp_path / variant
        targets = _damage_targets(root)
        for kind, path in targets.items():
            if kind == "resume state" and variant == "flip":
                path.write_bytes(pickle_payload(marker))  # a pickle that would run code when loaded
            else:
                hurt(path)
        rerun = _run(root)
        assert rerun.returncode == 0, (variant, rerun.stderr[-3000:])
        assert not marker.exists(), "a pickle planted in the artifact root was unpickled"
        assert _digests(root) == _digests(tmp_path / "clean"), variant
        cache = _table(rerun.stdout)
        for stage in ("data", "sampling", "scoring", "weights", "weak_sft", "weak_dpo", "student"):
            assert cache[stage] == "miss", (variant, stage, rerun.stdout)  # each damaged artifact was rebuilt
        assert cache["strong_base"] == "hit"  # undamaged


def _together(root, names):
    """Runs started at the same moment on one root; {name: (returncode, stdout, stderr, pid)}."""
    procs = {name: start(tiny_run_args(root), root.parent, child_env(), root.parent / name) for name in names}
    return {name: (*_outcome(finish(proc, root.parent / name)), proc.pid) for name, proc in procs.items()}


def _outcome(done):
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
def test_two_identical_runs_started_together_compute_each_stage_once(tmp_path):
    root = tmp_path / "shared"
    root.mkdir()
    cold = _together(root, ["a", "b"])
    for name, (code, _, err, _) in cold.items():
        assert code == 0, (name, err[-3000:])
    tables = {name: _table(stdout) for name, (_, stdout, _, _) in cold.items()}
    pids = {pid for (_, _, _, pid) in cold.values()}
    for stage in STAGES:
        assert sorted([tables["a"][stage], tables["b"][stage]]) == ["hit", "miss"], (stage, tables)
        manifest = json.loads(next((root / stage).glob("*/manifest.json")).read_text())
        assert manifest["info"]["computed_by"]["pid"] in pids
    digests = _digests(root)  # one artifact per stage, never two

    warm = _together(root, ["c", "d"])
    for name, (code, stdout, err, _) in warm.items():
        assert code == 0, (name, err[-3000:])
        assert set(_table(stdout).values()) == {"hit"}, stdout
    assert _digests(root) == digests
