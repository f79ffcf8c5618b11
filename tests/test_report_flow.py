"""`w2s sweep` on the smoke profile: every baseline trains and is evaluated, EVE is rerun at a second
β/λ reusing everything up to scoring, and `w2s report` (all cached) writes the PGR report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flows.stages import BASELINE_POLICIES
from tests.conftest import REPO


def _w2s(*args, cwd):
    return subprocess.run([sys.executable, "-m", "w2s.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=1500)


def _cache(stdout: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] in ("hit", "miss"):
            found.setdefault(parts[0], []).append(parts[1])
    return found


@pytest.mark.slow
def test_sweep_runs_every_baseline_and_reports(tmp_path):
    settings = ["--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"run.artifact_root={tmp_path / 'art'}"]
    sweep = _w2s("sweep", *settings, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-4000:]
    cache = _cache(sweep.stdout)
    for policy in BASELINE_POLICIES:
        assert cache.get(policy) == ["miss"] and cache.get(f"evaluate_{policy}") == ["miss"], (policy, sweep.stdout)
    # the β/λ = 1 point is the baseline run's own EVE (cached); β/λ = ∞ reruns weights → student → evaluation only
    assert cache["scoring"] == ["miss", "hit", "hit"] and cache["weights"] == ["miss", "hit", "miss"], sweep.stdout
    assert cache["student"] == ["miss", "hit", "miss"] and cache["evaluate_eve"] == ["miss", "hit", "miss"], sweep.stdout

    out = tmp_path / "reports"
    report = _w2s("report", *settings, "--flow", "sweep", "--out", str(out), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-4000:]
    assert set(_cache(report.stdout)) and all(v == ["hit"] * len(v) for v in _cache(report.stdout).values()), report.stdout
    assert "run first" not in report.stderr  # all cached: nothing to announce
    lines = report.stdout.rstrip().splitlines()  # the flow's summary ends with the PGR table, then where the copy went
    assert lines[-1].startswith("report: ") and lines[-2].startswith("| "), lines[-3:]
    written = json.loads((out / "pgr.json").read_text())
    rows = {row["policy"]: row for row in written["rows"]}
    # naive SFT is trained by the eve flow itself (the paper's main comparison), the rest by baselines
    assert set(rows) == {"weak", "reference", "strong_ceiling", "eve", "naive_sft", *BASELINE_POLICIES}
    assert {row["baseline"] for row in written["paired"]} == {"reference", "naive_sft", *BASELINE_POLICIES}
    assert set(written["per_seed"]) == set(rows) and list(written["per_seed"]["eve"]) == ["0"]
    markdown = (out / "report.md").read_text()
    assert "| β/λ | PGR(eve) |" in markdown and "| ∞ |" in markdown  # the sweep table: a PGR column per swept policy
    assert (out / "figures" / "pgr_bars.png").stat().st_size > 1000 and "data:image/png;base64," in (out / "report.html").read_text()
    # the weak-teacher signal of the first seed, over the run's β/λ and every swept one (w2s/teacher_signal.py)
    assert cache["teacher_signal"][0] == "miss" and "**Weak-teacher signal**" in markdown, markdown
    assert "| EVE, F-weighted, β/λ = 1 " in markdown and "| EVE, F-weighted, β/λ = ∞ " in markdown
    assert (out / "figures" / "teacher_signal.png").stat().st_size > 1000
