"""Prefect caching across processes (real embedded server) and the MLflow run tree (real sqlite)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def _run(root, marker, *overrides, env=None):
    out = subprocess.run(
        [sys.executable, "-m", "tests.two_stage_flow", str(root), str(marker), *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bodies(marker):
    return marker.read_text().split() if marker.exists() else []


def test_second_run_in_a_new_process_executes_no_stage_body(tmp_path):
    root, marker = tmp_path / "art", tmp_path / "marker"
    first = _run(root, marker)
    assert _bodies(marker) == ["rows", "scaled"]
    assert [r["cache"] for r in first["rows"]] == ["miss", "miss"]

    second = _run(root, marker)
    assert _bodies(marker) == ["rows", "scaled"], "no stage body may run on the second run"
    assert [r["cache"] for r in second["rows"]] == ["hit", "hit"]
    assert first["states"] == {"rows": "Completed", "scaled": "Completed"}
    assert second["states"] == {"rows": "Cached", "scaled": "Cached"}
    # Prefect's run graph: scaled's argument `rows` comes from the rows task, computed or Cached
    assert first["edges"] == second["edges"] == {"rows": {}, "scaled": {"rows": ["rows"]}}
    assert [r["uri"] for r in second["rows"]] == [r["uri"] for r in first["rows"]]

    # changing what only the second stage reads reruns only the second stage
    _run(root, marker, "--set", "weights.beta_over_lambda=2")
    assert _bodies(marker) == ["rows", "scaled", "scaled"]

    # a corrupted artifact behind a Prefect cache record is recomputed, not returned
    shard = next((root / "rows").glob("*/rows.parquet"))
    shard.write_bytes(shard.read_bytes()[:-5])
    _run(root, marker)
    assert _bodies(marker) == ["rows", "scaled", "scaled", "rows"]
    assert _run(root, marker)["rows"][0]["cache"] == "hit"


def test_cache_records_planted_on_the_root_are_never_read(tmp_path):
    """Prefect's result records name their own serializer, so reading one runs whatever its writer
    chose: Prefect keeps none on the root and reads none; the cache is the store's JSON manifests."""
    import os

    from tests.payloads import prefect_records

    root, marker, pwned = tmp_path / "art", tmp_path / "marker", tmp_path / "pwned"
    first = _run(root, marker)
    assert not (root / "_prefect").exists()
    records = root / "_prefect" / "results"
    records.mkdir(parents=True)
    # where the earlier design kept them, under the names its cache policy gave them
    for row, record in zip(first["rows"], prefect_records(pwned, tmp_path / "modules")):
        (records / f"w2s-{row['stage']}-{row['uri'].rstrip('/').rsplit('/', 1)[1]}").write_bytes(record)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "modules"), os.environ.get("PYTHONPATH", "")])}
    again = _run(root, marker, env=env)
    assert not pwned.exists(), "a planted cache record was read"
    assert again["states"] == {"rows": "Cached", "scaled": "Cached"} and _bodies(marker) == ["rows", "scaled"]


def test_a_copied_or_moved_root_reads_its_own_files(tmp_path):
    """Prefect records hold the reference of the root they were written on; the reference a stage
    returns comes from the store on the current root, so a copy never reads the original's files
    and a moved root keeps working."""
    import shutil

    original, marker = tmp_path / "original", tmp_path / "marker"
    _run(original, marker)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    shard = next((original / "rows").glob("*/rows.parquet"))
    shard.write_bytes(shard.read_bytes()[:-5])  # the original is damaged after the copy
    copied = _run(copy, marker)
    assert [r["cache"] for r in copied["rows"]] == ["hit", "hit"]
    assert all(r["uri"].startswith(str(copy)) for r in copied["rows"]), copied["rows"]
    # MLflow writes into the copy too, and the copy's earlier runs read their artifacts there
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{copy}/mlflow.db")
    assert client.get_run(copied["parent"]).info.artifact_uri.startswith((copy / "mlflow-artifacts").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("two-stage").experiment_id])
    assert len(runs) > 1 and all(r.info.artifact_uri.startswith((copy / "mlflow-artifacts").as_uri()) for r in runs)
    assert not list((original / "mlflow-artifacts").rglob(f"{copied['parent']}"))
    moved = tmp_path / "moved"
    shutil.move(copy, moved)
    after_move = _run(moved, marker)
    assert [r["cache"] for r in after_move["rows"]] == ["hit", "hit"]
    assert all(r["uri"].startswith(str(moved)) for r in after_move["rows"])
    assert not copy.exists(), "MLflow recreated the moved root's old path"
    assert _bodies(marker) == ["rows", "scaled"], "only the first run may have computed"


def test_mlflow_run_tree_reads_back(tmp_path):
    from mlflow.tracking import MlflowClient

    root, marker = tmp_path / "art", tmp_path / "marker"
    first = _run(root, marker)
    second = _run(root, marker)
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("two-stage")
    assert experiment.artifact_location == (root / "mlflow-artifacts").as_uri()
    computed_by = {}
    for flow_result, cache in ((first, "miss"), (second, "hit")):
        parent = client.get_run(flow_result["parent"])
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["prefect.flow_run_id"] == flow_result["flow_run"]
        children = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{flow_result['parent']}'"
        )
        # the parent's stage table: every stage, and the run that computed its artifact
        table = json.loads(open(client.download_artifacts(parent.info.run_id, "stages.json", str(tmp_path))).read())
        rows = [dict(zip(table["columns"], row)) for row in table["data"]]
        assert [(r["stage"], r["cache"]) for r in rows] == [("rows", cache), ("scaled", cache)]
        if cache == "hit":  # a cached rerun adds its parent run only; its rows link to the first run's stages
            assert children == [] and {r["stage"]: r["mlflow_run_id"] for r in rows} == computed_by
            continue
        by_stage = {run.data.tags["w2s.stage"]: run for run in children}
        assert set(by_stage) == {"rows", "scaled"}
        computed_by = {stage: run.info.run_id for stage, run in by_stage.items()}
        assert {r["stage"]: r["mlflow_run_id"] for r in rows} == computed_by
        for run in by_stage.values():
            assert run.data.tags["w2s.cache"] == cache and run.info.status == "FINISHED"
            assert run.data.tags["prefect.flow_run_id"] == flow_result["flow_run"]
        scaled = by_stage["scaled"]
        assert scaled.data.params["beta_over_lambda"] == "1.0" and scaled.data.params["stage_version"] == "1"
        assert scaled.data.metrics["sum"] == sum(range(128))
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's UI opens its training view
    miss_run = client.search_runs([experiment.experiment_id], filter_string="tags.`w2s.cache` = 'miss' and tags.`w2s.stage` = 'scaled'")[0]
    artifacts = [a.path for a in client.list_artifacts(miss_run.info.run_id)]
    assert "manifest.json" in artifacts


def test_a_stage_call_computes_its_key_once_and_a_warm_rerun_hashes_nothing(tmp_path, monkeypatch):
    import hashlib
    from collections import Counter

    import tests.two_stage_flow as two
    from w2s.stage import Stage

    keys, hashed = Counter(), Counter()
    original_key, original_digest = Stage.key, hashlib.file_digest

    def counting_key(self, cfg, inputs):
        keys[self.name] += 1
        return original_key(self, cfg, inputs)

    def counting_digest(handle, name):
        hashed[getattr(handle, "name", "?")] += 1
        return original_digest(handle, name)

    monkeypatch.setattr(Stage, "key", counting_key)
    monkeypatch.setattr(hashlib, "file_digest", counting_digest)
    monkeypatch.setattr(two, "MARKER", str(tmp_path / "marker"))
    root = str(tmp_path / "root")
    cold = two.two_stage(root)
    assert [r.cache for r in cold.rows] == ["miss", "miss"] and dict(keys) == {"rows": 1, "scaled": 1}
    assert all(count == 1 for count in hashed.values()), hashed  # sealed once; the manifest reuses the seal's digest
    keys.clear()
    hashed.clear()
    warm = two.two_stage(root)
    assert [r.cache for r in warm.rows] == ["hit", "hit"] and dict(keys) == {"rows": 1, "scaled": 1}
    assert not hashed, hashed  # verified in the cold run; the store's memo holds for unchanged files
