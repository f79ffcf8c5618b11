"""Resume is just rerunning: the EVE flow on the smoke profile is SIGKILLed during scoring, then
during student training; each rerun reuses every finished stage, continues the killed one from its
own progress, and ends with artifact digests identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.cli_runs import STAGES, run_tiny, stage_table


def _digests(root):
    found = {}
    for stage in STAGES:
        manifests = list((root / stage).glob("*/manifest.json"))
        assert len(manifests) == 1, (stage, manifests)
        found[stage] = json.loads(manifests[0].read_text())["digest"]
    return found


@pytest.mark.slow
def test_sigkill_during_scoring_then_student_resumes_to_identical_digests(tmp_path):
    clean = run_tiny(tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]

    root = tmp_path / "killed"
    killed = run_tiny(root, die_at="scoring:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    first_shard = next(root.glob("scoring/*/shards/part-00000.parquet"))
    before = os.stat(first_shard)
    assert not list(root.glob("scoring/*/manifest.json")) and not list(root.glob("weights/*"))

    killed_again = run_tiny(root, die_at="student:2")
    assert killed_again.returncode == -signal.SIGKILL, killed_again.stderr[-2000:]
    after = os.stat(first_shard)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns), "finished shard was rewritten"
    assert list(root.glob("student/*/.resume")) and not list(root.glob("student/*/manifest.json"))

    final = run_tiny(root)
    assert final.returncode == 0, final.stderr[-3000:]
    cache = stage_table(final.stdout)
    assert cache == {**{s: "hit" for s in STAGES}, "student": "miss"}, final.stdout
    manifest = json.loads(next(root.glob("student/*/manifest.json")).read_text())
    assert manifest["info"]["resumed_from_step"] == 2
    assert _digests(root) == _digests(tmp_path / "clean")
