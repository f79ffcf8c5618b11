"""The cluster rehearsal (configs/tldr_rehearsal.yaml): the paper config's experiment at toy sizes on
CPU. Fast: it differs from configs/tldr_llama3b.yaml only in sizes, sources, roots and device, over
the fully resolved configs (defaults included). Slow: `w2s baselines` on it, s3:// root on a local
S3-compatible server, 2 DeepSpeed ranks, vLLM; SIGKILLed after its training and rerun, every manifest equals an
uninterrupted run's."""

from __future__ import annotations

import fnmatch
import json
import signal
import subprocess
import sys

import pytest

from tests.cli_runs import child_env, finish, start
from tests.conftest import REPO
from w2s.config.loading import load_config
from w2s.tracking import flatten

PAPER = REPO / "configs" / "tldr_llama3b.yaml"
REHEARSAL = REPO / "configs" / "tldr_rehearsal.yaml"

# What a rehearsal may change: how big, where from, where to, on what device. Nothing that says what
# is computed (objectives, β, λ, temperatures, K, shots, stop strings, precision, ZeRO stage, engines).
ALLOWED = (
    "run.artifact_root", "run.tracking_uri", "run.device",
    "data.n_preference", "data.n_weak_demo", "data.n_exemplar_pool", "data.n_student", "data.n_test",
    "data.hf.path", "data.hf.prompts.path",
    "models.weak.*", "models.strong.*", "models.gold_reward.path",
    "*.batch_size", "*.micro_batch_size", "*.max_tokens", "*.checkpoint_fractions",
    "engines.training.world_size", "engines.generation.data_parallel_size",  # device counts
)


def _flat(path) -> dict[str, str]:
    return flatten(json.loads(load_config(path, []).model_dump_json()))


def test_rehearsal_differs_from_the_paper_config_only_in_sizes_and_sources():
    paper, rehearsal = _flat(PAPER), _flat(REHEARSAL)
    assert paper.keys() == rehearsal.keys()
    changed = sorted(k for k in paper if paper[k] != rehearsal[k])
    assert changed, "identical configs: the rehearsal rehearses nothing smaller"
    outside = [k for k in changed if not any(fnmatch.fnmatchcase(k, pattern) for pattern in ALLOWED)]
    assert outside == [], {k: (paper[k], rehearsal[k]) for k in outside}
    # the parts that make it a rehearsal of the cluster run
    assert rehearsal["run.artifact_root"].startswith("s3://") and rehearsal["engines.training.world_size"] == "2"
    assert rehearsal["engines.generation.backend"] == "vllm" and rehearsal["data.hf.gold_labels"] == "True"
    assert rehearsal["models.weak.tiny.architecture"] == "gpt2" and rehearsal["models.strong.tiny.architecture"] == "llama"
    assert rehearsal["models.weak.tiny.tokenizer"] != rehearsal["models.strong.tiny.tokenizer"]


# ----------------------------------------------------------------------------------- the run itself
def _assets(cwd):
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_rehearsal_assets.py"), "--out", str(cwd / "rehearsal")],
                   check=True, capture_output=True, timeout=300)


def _baselines(cwd, env, root, die_at=None):
    args = [sys.executable, "-m", "w2s.cli", "baselines", "--config", str(REHEARSAL), "--set", f"run.artifact_root={root}"]
    extra = {**env, "W2S_STAGING_DIR": str(cwd / "staging")}
    return finish(start(args, cwd, child_env(die_at, **extra), cwd / f"log-{die_at or 'full'}"), cwd / f"log-{die_at or 'full'}",
                  timeout=1800)


def _keys_and_digests(env, root) -> dict[str, tuple[str, str]]:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="testing", secret="testing")
    found = {}
    for path in fs.glob(f"{root.removeprefix('s3://')}/*/*/manifest.json"):
        manifest = json.loads(fs.cat_file(path))
        stage, key = path.split("/")[-3:-1]
        assert stage not in found, f"two artifacts of {stage}"
        found[stage] = (key, manifest["digest"])
    return found


@pytest.mark.slow
def test_rehearsal_baselines_on_s3_with_two_ranks_survive_sigkills(tmp_path, s3):
    clean_dir, killed_dir = tmp_path / "clean", tmp_path / "killed"
    for cwd in (clean_dir, killed_dir):
        cwd.mkdir()
        _assets(cwd)
    clean = _baselines(clean_dir, s3, "s3://w2s-rehearsal/clean")
    assert clean.returncode == 0, clean.stderr[-4000:]
    assert "report: s3://w2s-rehearsal/clean/report/" in clean.stdout

    # SIGKILL (the whole run, as a lost pod) as the first evaluation of a baseline starts, after every
    # 2-rank training stage; the rerun continues from what the bucket holds. One kill: a kill inside
    # sampling on an s3:// root is tests/test_remote_root.py's, and each run here costs minutes.
    root = "s3://w2s-rehearsal/killed"
    killed = _baselines(killed_dir, s3, root, "evaluate_naive_sft:0")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    rerun = _baselines(killed_dir, s3, root)
    assert rerun.returncode == 0, rerun.stderr[-4000:]

    expected, got = _keys_and_digests(s3, "s3://w2s-rehearsal/clean"), _keys_and_digests(s3, root)
    assert "report" in expected and "evaluate_strong_evaluator" in expected and len(expected) >= 20
    # a stage whose key (config + input digests) matches but whose bytes do not is where the runs part
    # ways; the stages after it differ only because their inputs do
    diverged = sorted(stage for stage in expected if stage in got and got[stage][0] == expected[stage][0]
                      and got[stage][1] != expected[stage][1])
    assert got == expected, f"recomputed from equal inputs to other bytes: {diverged}"
