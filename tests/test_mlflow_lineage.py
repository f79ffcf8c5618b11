"""What MLflow shows of a stage (real sqlite backend): its input artifacts as dataset inputs whose
digests are the manifests', system metrics while it computes, tables it logs, and a policy stage's
model registered by reference to its artifact folder, one version per artifact, aliases moved by
every run that uses it."""

from __future__ import annotations

import json
import time

import pytest

from w2s.artifacts import store_for
from w2s.config import DataConfig
from w2s.registry import alias_of
from w2s.stage import Stage, StageOutput, collect_outcomes, execute
from w2s.tracking import _client


def _policy_body(writer, run):
    (writer.dir / "model").mkdir(parents=True, exist_ok=True)
    writer.write_json("model/config.json", {"model_type": "probe"})
    time.sleep(1.5)  # long enough for two system-metrics samples at 0.5 s
    return StageOutput({})


def _consumer_body(writer, run):
    run.log_table({"prompt": ["a", "b"], "response": [" x", " y"], "gold_reward": [1.0, -0.5]}, "evaluation_samples.json")
    writer.write_json("out.json", {"ok": True})
    return StageOutput({})


@pytest.fixture
def fast_system_metrics(monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")


def test_inputs_system_metrics_tables_and_registered_models(ctx, fast_system_metrics):
    policy = Stage("lineage_policy", 1, evaluated_as="probe")
    consumer = Stage("lineage_consumer", 1, inputs=("policy",))
    cfg = DataConfig()
    model = execute(ctx, policy, cfg, {}, _policy_body)
    used = execute(ctx, consumer, cfg, {"policy": model}, _consumer_body)
    client = _client(ctx.tracking_uri)
    runs = {r.data.tags["w2s.stage"]: r for r in client.search_runs([client.get_experiment_by_name("test").experiment_id])}

    # dataset inputs: source = the artifact URI, digest = the manifest's (MLflow keeps 36 characters)
    manifest = store_for(ctx.artifact_root).read_manifest(model.stage, model.key)
    (found,) = runs["lineage_consumer"].inputs.dataset_inputs
    assert found.dataset.name == "lineage_policy" and json.loads(found.dataset.source) == {"uri": model.uri}
    assert found.dataset.digest == manifest.digest[:36] and json.loads(found.dataset.profile)["digest"] == manifest.digest
    assert {t.key: t.value for t in found.tags}["mlflow.data.context"] == "policy"

    # system metrics of the computing run
    system = [k for k in runs["lineage_policy"].data.metrics if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system

    # the logged table, as an artifact of the run
    table = json.loads(open(client.download_artifacts(runs["lineage_consumer"].info.run_id, "evaluation_samples.json", str(ctx.artifact_root))).read())
    assert table["columns"] == ["prompt", "response", "gold_reward"] and [row[2] for row in table["data"]] == [1.0, -0.5]

    # the policy registered by reference: source is the artifact's model/ folder, no copy
    (version,) = client.search_model_versions("name='w2s-probe'")
    assert version.source == model.file("model") and version.tags["w2s.key"] == model.key
    for alias in ("newest", alias_of("test")):
        assert client.get_model_version_by_alias("w2s-probe", alias).version == version.version

    # a cached rerun (here under another experiment) adds no run and no version: each stage's row
    # names the run that computed it, and the policy's aliases move to this experiment
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    before = len(client.search_runs(experiment_ids))
    rerun = ctx.model_copy(update={"experiment": "test-rerun"})
    with collect_outcomes() as outcomes:
        execute(rerun, policy, cfg, {}, _policy_body)
        assert execute(rerun, consumer, cfg, {"policy": model}, _consumer_body) == used
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    assert len(client.search_runs(experiment_ids)) == before
    assert [(o.stage, o.cache, o.mlflow_run_id) for o in outcomes] == [
        ("lineage_policy", "hit", runs["lineage_policy"].info.run_id), ("lineage_consumer", "hit", runs["lineage_consumer"].info.run_id)]
    assert len(client.search_model_versions("name='w2s-probe'")) == 1
    assert client.get_model_version_by_alias("w2s-probe", alias_of("test-rerun")).version == version.version

    # a store that never saw the computing runs (the root tracked elsewhere) gets a 'reused' run per stage
    elsewhere = ctx.model_copy(update={"tracking_uri": f"sqlite:///{ctx.artifact_root}/elsewhere.db"})
    execute(elsewhere, policy, cfg, {}, _policy_body)
    execute(elsewhere, consumer, cfg, {"policy": model}, _consumer_body)
    other = _client(elsewhere.tracking_uri)
    hits = other.search_runs([other.get_experiment_by_name("test").experiment_id], "tags.`w2s.cache` = 'hit'")
    assert {r.data.tags["w2s.stage"] for r in hits} == {"lineage_policy", "lineage_consumer"}
    assert all(len(r.inputs.dataset_inputs) == (r.data.tags["w2s.stage"] == "lineage_consumer") for r in hits)


def test_aliases_are_valid_mlflow_aliases():
    from mlflow.utils.validation import _validate_model_alias_name

    for experiment in ("w2s-eve", "my exp/1", "v3", "ünïcode", "latest", "newest"):
        _validate_model_alias_name(alias_of(experiment))
        assert alias_of(experiment) != "newest"


def test_report_figures_are_served_by_an_mlflow_server_and_linked_otherwise():
    from urllib.parse import parse_qs, urlparse

    from w2s.artifacts import ArtifactRef
    from w2s.orchestration.ui import figure_links
    from w2s.tracking import RunContext

    ref = ArtifactRef(stage="report", key="k", uri="/root/report/k", digest="0" * 64)
    markdown = "# r\n![pgr_bars](figures/pgr_bars.png)\ntext ![fig 3](figures/pgr_over_training.png)"
    server = RunContext(artifact_root="/root", tracking_uri="http://127.0.0.1:5000", experiment="x")
    served = figure_links(markdown, ref, "report.md", server, "abc123")
    urls = [line.split("](")[1].rstrip(")") for line in served.splitlines() if "](" in line]
    assert [parse_qs(urlparse(u).query) for u in urls] == [{"path": ["pgr_bars.png"], "run_uuid": ["abc123"]},
                                                           {"path": ["pgr_over_training.png"], "run_uuid": ["abc123"]}]
    assert all(u.startswith("http://127.0.0.1:5000/get-artifact?") for u in urls) and served.count("![") == 2
    sqlite = server.model_copy(update={"tracking_uri": "sqlite:////root/mlflow.db"})
    for linked in (figure_links(markdown, ref, "report.md", sqlite, "abc123"), figure_links(markdown, ref, "report.md")):
        assert "![" not in linked and "[figure: pgr_bars](/root/report/k/figures/pgr_bars.png)" in linked
