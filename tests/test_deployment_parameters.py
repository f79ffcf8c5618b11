"""What a deployment's run computes: its parameters validate against its flow's own signature (as the
Prefect server hands them to the flow), a scheduled GPU run computes the paper config, its pods hold
that config's ranks, and a preset with an edited form is refused (w2s/config/presets.py)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from w2s.config import PipelineConfig
from w2s.config.loading import ConfigError, load_config, pipeline_config_of, with_values
from w2s.config.presets import PRESETS, PipelinePreset
from w2s.devices import check_pod_gpus
from w2s.orchestration import embedded_default

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENTS = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]
PAPER = REPO / "configs" / "tldr_llama3b.yaml"


def _flow(deployment):
    return load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))


def _computed(deployment) -> PipelineConfig:
    """The config a run of `deployment` computes: its parameters, validated as the flow validates
    them, then the preset (if any) resolved against the form's default."""
    params = _flow(deployment).validate_parameters(deployment["parameters"])
    return pipeline_config_of(params.get("config", embedded_default()), params.get("preset"), embedded_default())


def test_the_preset_choices_are_exactly_the_shipped_eve_configs():
    loads = set()
    for path in PRESETS.glob("*.yaml"):
        try:
            load_config(path)
        except ConfigError:
            continue  # another schema (classification, theory)
        loads.add(path.stem)
    assert set(get_args(PipelinePreset)) == loads


@pytest.mark.parametrize("deployment", [d for d in DEPLOYMENTS if d["entrypoint"] != "flows/offload.py:eve_stage"], ids=lambda d: d["name"])
def test_every_deployment_validates_against_its_flow_and_fits_its_pod(deployment):
    config = _computed(deployment)
    gpus = deployment["work_pool"].get("job_variables", {}).get("gpu_count")
    if gpus is not None:
        assert check_pod_gpus(config, gpus) is None, deployment["name"]


def test_the_weekly_gpu_schedule_computes_the_paper_config_on_pods_of_its_size():
    scheduled = [d for d in DEPLOYMENTS if d.get("schedules")]
    assert [d["name"] for d in scheduled] == ["eve-gpu"]
    paper = load_config(PAPER)
    assert _computed(scheduled[0]) == paper
    pods = {d["name"]: d["work_pool"]["job_variables"]["gpu_count"] for d in DEPLOYMENTS if d["work_pool"]["name"] == "gpu"}
    # the offload target runs the same config's stages one at a time: the same pod size
    assert set(pods.values()) == {paper.engines.training.world_size}, pods


def test_a_preset_and_an_edited_form_are_refused_and_an_unknown_preset_is_named():
    default = embedded_default()
    assert pipeline_config_of(default, None, default) is default
    assert pipeline_config_of(default, "tiny", default) == load_config(REPO / "configs" / "tiny.yaml")
    edited = with_values(default, **{"run.seed": 7})
    with pytest.raises(ConfigError, match=r"preset 'tiny' and an edited config form \(run\) were both given"):
        pipeline_config_of(edited, "tiny", default)
    with pytest.raises(ConfigError, match="preset 'nope': one of pipeline_config, tiny"):
        pipeline_config_of(default, "nope", default)
    # the flow's signature types it: the UI offers the choices, the server refuses others
    eve = _flow({"entrypoint": "flows/eve.py:eve"})
    assert eve.parameters.properties["preset"]["anyOf"][0]["enum"] == list(get_args(PipelinePreset))
    with pytest.raises(Exception, match="preset"):
        eve.validate_parameters({"preset": "nope"})
