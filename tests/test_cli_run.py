"""`w2s run` end to end (every EVE stage) on the smoke profile, in fresh processes: a rerun reuses
every stage, `--until` stops early, nothing lands in ./mlruns."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO


def _w2s(*args, cwd):
    return subprocess.run([sys.executable, "-m", "w2s.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_run_twice_second_is_fully_cached(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text((REPO / "configs" / "tiny.yaml").read_text().replace("artifact_root: artifacts/tiny", f"artifact_root: {tmp_path}/art"))
    first = _w2s("run", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "data" in first.stdout and " miss " in first.stdout
    # a quiet console: a line per stage, the bars, the table; the libraries' output is in the log file
    science = ("|", "EVE: PGR")  # the headline and PGR table the console ends with are the point, not noise
    console = [line for line in (first.stdout + first.stderr).splitlines() if not line.startswith(science)]
    assert len(console) < 100, "\n".join(console)
    log = next(line.split(" ", 1)[1] for line in first.stdout.splitlines() if line.startswith("log: "))
    assert "Creating initial MLflow database tables" in open(log).read()  # MLflow's own chatter went there
    assert "mlflow.store" not in first.stderr and "Loading weights" not in first.stderr
    second = _w2s("run", "--config", str(config), cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    from flows.stages import STAGES

    table = [line for line in second.stdout.splitlines() if line.split()[:1] and line.split()[0] in STAGES]
    assert len(table) == len(STAGES) and all(line.split()[1] == "hit" for line in table), second.stdout
    # the console ends with the science; the flow's MLflow run carries the headline metrics, cached or not
    assert second.stdout.rstrip().splitlines()[-1].startswith("| ") and "EVE: PGR" in second.stdout
    from mlflow.tracking import MlflowClient

    run_id = next(line.rsplit(" ", 1)[1] for line in second.stdout.splitlines() if line.strip().startswith("experiment '"))
    parent = MlflowClient(f"sqlite:///{tmp_path}/art/mlflow.db").get_run(run_id).data.metrics
    assert {"pgr/eve", "pgr/naive_sft", "win_rate/eve", "kl/eve"} <= set(parent), parent
    # w2s plan computes nothing: all hits on the warm root; a changed β/λ misses exactly for the
    # weights and the stages they feed (flows/eve.py: the student, its evaluation, the report)
    after_weights = {"weights", "student", "evaluate_eve", "report"}
    plan = _w2s("plan", "--config", str(config), cwd=tmp_path)
    assert plan.returncode == 0 and _plan_rows(plan.stdout) == dict.fromkeys(STAGES, "hit"), plan.stdout
    changed = _w2s("plan", "--config", str(config), "--set", "weights.beta_over_lambda=2", cwd=tmp_path)
    planned = _plan_rows(changed.stdout)
    assert {s for s, v in planned.items() if v == "miss"} == after_weights and set(planned) == set(STAGES), changed.stdout
    assert "config beta_over_lambda: 1.0 → 2.0" in changed.stdout
    # --force recomputes the stage and what it feeds, though all of it is cached
    forced = _w2s("run", "--config", str(config), "--force", "weights", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert {line.split()[0] for line in forced.stdout.splitlines()
            if line.split()[:1] and line.split()[0] in STAGES and line.split()[1] == "miss"} == after_weights, forced.stdout
    until = _w2s("run", "--config", str(config), "--until", "data", cwd=tmp_path)
    assert until.returncode == 0 and "strong_base" not in until.stdout.split("total")[0]
    # KL at the final model only: the evaluations rerun, nothing they read; its intermediate rows carry no k3
    final_kl = _w2s("run", "--config", str(config), "--set", "evaluation.kl_checkpoints=final", "--until", "evaluate_naive_sft", cwd=tmp_path)
    assert final_kl.returncode == 0, final_kl.stderr[-3000:]
    missed = {s for s, v in _plan_rows(final_kl.stdout).items() if v == "miss"}
    assert "evaluate_naive_sft" in missed and all(s.startswith("evaluate_") for s in missed), final_kl.stdout
    with_kl = set()
    for samples in (tmp_path / "art" / "evaluate_naive_sft").rglob("samples.parquet"):
        table = pq.read_table(samples).to_pandas()
        with_kl.add(frozenset(table.dropna(subset=["k3"]).fraction))
        assert table.fraction.nunique() == 2  # PGR over training is evaluated either way
    assert with_kl == {frozenset({0.5, 1.0}), frozenset({1.0})}
    assert not (tmp_path / "mlruns").exists()


def _plan_rows(stdout: str) -> dict[str, str]:
    from flows.stages import STAGES

    return {line.split()[0]: line.split()[1] for line in stdout.splitlines() if line.split()[:1] and line.split()[0] in STAGES}
