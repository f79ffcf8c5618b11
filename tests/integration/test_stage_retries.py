"""Stage retries from config (orchestration.retry) on the real Prefect engine, and what a failed
attempt leaves behind: whole files, no manifest, so nothing half-written is ever reused."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect import flow

from w2s import faults
from w2s.artifacts import MANIFEST, ArtifactStore
from w2s.config import DataConfig, OrchestrationConfig, PipelineConfig, RetryConfig
from w2s.orchestration import orchestration_of, retry_delays, run_as_task
from w2s.stage import Stage, StageOutput
from w2s.writer import StageWriter

SEEN: list[dict] = []


def flaky(ctx, cfg: DataConfig):
    def body(writer, run):
        # What this attempt finds from the one before it: whole files and no manifest.
        SEEN.append({"manifest": (writer.dir / MANIFEST).exists(),
                     "files": sorted(p.name for p in writer.dir.iterdir() if not p.name.startswith("."))})
        writer.write_parquet("part-0.parquet", pa.table({"x": list(range(cfg.n_student))}))
        faults.checkpoint(writer.stage, 1)  # W2S_FAIL_ONCE=weights:1 raises here, after part-0 is written
        writer.write_parquet("part-1.parquet", pa.table({"x": list(range(cfg.n_student, 2 * cfg.n_student))}))
        return StageOutput({"rows": 2 * cfg.n_student})

    return body


# A stand-in under a real stage name (stage_retry only names real stages), not registered.
STAGE = Stage("weights", 901, fn=flaky, reads=lambda config: config.data)


@flow(name="flaky-flow")
def flaky_flow(ctx, config: PipelineConfig):
    return run_as_task(STAGE, ctx, config, {})


def _config(retries: int) -> PipelineConfig:
    return PipelineConfig(data=DataConfig(n_student=16),
                          orchestration=OrchestrationConfig(retry=RetryConfig(retries=0),
                                                            stage_retry={"weights": RetryConfig(retries=retries, delay_s=0.2)}))


def test_retry_delays_and_slices():
    assert retry_delays(RetryConfig(retries=3, delay_s=2, backoff=3)) == [2, 6, 18]
    assert retry_delays(RetryConfig(retries=0)) == []
    config = _config(2)
    assert orchestration_of(config).retry_for("weights").retries == 2
    assert orchestration_of(config).retry_for("data").retries == 0
    assert orchestration_of(config.data) == OrchestrationConfig()  # a bare slice: no retries
    # how a stage is run never changes what it computes: orchestration is in no stage's slice
    assert STAGE.key(config.data, {}) == STAGE.key(PipelineConfig(data=DataConfig(n_student=16)).data, {})


@pytest.fixture
def fail_once(monkeypatch, tmp_path):
    monkeypatch.setenv(faults.ENV_FAIL_ONCE, "weights:1")
    monkeypatch.setenv(faults.ENV_FAULT_DIR, str(tmp_path / "faults"))
    SEEN.clear()


def test_failing_attempt_is_retried_and_commits_whole_artifact(ctx, fail_once):
    ref = flaky_flow(ctx, _config(retries=1))
    assert SEEN == [{"manifest": False, "files": []}, {"manifest": False, "files": ["part-0.parquet"]}]
    store = ArtifactStore(ctx.artifact_root)
    manifest = store.read_manifest("weights", ref.key)
    assert [f.path for f in manifest.files] == ["part-0.parquet", "part-1.parquet"]
    assert store.problems(manifest) == [] and ref.rows == 32
    values = pq.read_table(ref.local_dir() / "part-1.parquet").column("x").to_pylist()
    assert values == list(range(16, 32))
    assert not [p for p in ref.local_dir().rglob("*") if p.name.startswith(".tmp-")]


def test_without_retries_the_failure_leaves_no_manifest(ctx, fail_once):
    with pytest.raises(faults.InjectedFailure):
        flaky_flow(ctx, _config(retries=0))
    store = ArtifactStore(ctx.artifact_root)
    key = STAGE.key(DataConfig(n_student=16), {})
    folder = store.local_root / "weights" / key
    assert sorted(p.name for p in folder.iterdir()) == [".partial", "part-0.parquet"]  # a whole, sealed file, no manifest
    assert StageWriter(ArtifactStore(ctx.artifact_root), "weights", key, 901, {}, {}).reuse("part-0.parquet")
    assert pq.read_table(folder / "part-0.parquet").num_rows == 16
    assert store.lookup("weights", key) is None
    # the fault fired once; the rerun completes and the stage is done exactly once
    ref = flaky_flow(ctx, _config(retries=0))
    assert ref.key == key and store.lookup("weights", key) == ref
    assert json.loads((folder / MANIFEST).read_text())["metrics"]["rows"] == 32


def test_fail_once_at_stage_start(ctx, monkeypatch, tmp_path):
    """Every stage task has fault point <stage>:0 at the start of each attempt."""
    monkeypatch.setenv(faults.ENV_FAIL_ONCE, "weights:0")
    monkeypatch.setenv(faults.ENV_FAULT_DIR, str(tmp_path / "faults"))
    SEEN.clear()
    flaky_flow(ctx, _config(retries=1))
    assert len(SEEN) == 1  # the first attempt failed before the body ran
    assert (tmp_path / "faults" / "fired-weights-0").exists()
