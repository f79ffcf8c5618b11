"""Resume is just rerunning: the EVE flow on the smoke profile is SIGKILLed during scoring, then
during student training; each rerun reuses every finished stage, continues the killed one from its
own progress, and ends with artifact digests identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from flows.stages import EVE_TRAINING as STAGES  # evaluation after the student is not what this tests
from tests.conftest import REPO

SETTINGS = ["--set", "sampling.shard_rows=4", "--set", "engines.training.resume_every_steps=1"]


def _run(root, die_at=None):
    """Runs the CLI in its own process group; files, not pipes, hold its output, because a SIGKILLed
    run leaves its Prefect server child alive (it would keep a pipe open); the group dies after."""
    env = {**os.environ, "W2S_DIE_AT": die_at} if die_at else {k: v for k, v in os.environ.items() if k != "W2S_DIE_AT"}
    root.mkdir(parents=True, exist_ok=True)
    out, err = root.parent / f"{root.name}.out", root.parent / f"{root.name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "w2s.cli", "run", "--config", str(REPO / "configs" / "tiny.yaml"),
             "--set", f"run.artifact_root={root}", "--until", "student", *SETTINGS],
            cwd=root.parent, env=env, stdout=stdout, stderr=stderr, start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=900)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return subprocess.CompletedProcess(proc.args, returncode, out.read_text(), err.read_text())


def _table(stdout):
    return {line.split()[0]: line.split()[1] for line in stdout.splitlines() if line.split()[:1] and line.split()[0] in STAGES}


def _digests(root):
    found = {}
    for stage in STAGES:
        manifests = list((root / stage).glob("*/manifest.json"))
        assert len(manifests) == 1, (stage, manifests)
        found[stage] = json.loads(manifests[0].read_text())["digest"]
    return found


@pytest.mark.slow
def test_sigkill_during_scoring_then_student_resumes_to_identical_digests(tmp_path):
    clean = _run(tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]

    root = tmp_path / "killed"
    killed = _run(root, die_at="scoring:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    first_shard = next(root.glob("scoring/*/shards/part-00000.parquet"))
    before = os.stat(first_shard)
    assert not list(root.glob("scoring/*/manifest.json")) and not list(root.glob("weights/*"))

    killed_again = _run(root, die_at="student:2")
    assert killed_again.returncode == -signal.SIGKILL, killed_again.stderr[-2000:]
    after = os.stat(first_shard)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns), "finished shard was rewritten"
    assert list(root.glob("student/*/.resume")) and not list(root.glob("student/*/manifest.json"))

    final = _run(root)
    assert final.returncode == 0, final.stderr[-3000:]
    cache = _table(final.stdout)
    assert cache == {**{s: "hit" for s in STAGES}, "student": "miss"}, final.stdout
    manifest = json.loads(next(root.glob("student/*/manifest.json")).read_text())
    assert manifest["info"]["resumed_from_step"] == 2
    assert _digests(root) == _digests(tmp_path / "clean")
