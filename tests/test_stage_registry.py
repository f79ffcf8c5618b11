"""One list of stage names (w2s/stage_names.py) matches the stage tasks every flow registers, so
`--until`, offload and retry settings can be validated against it; typos fail at load time."""

from __future__ import annotations

import pytest

from w2s.config_io import ConfigError, load_config
from w2s.stage_names import ALL_STAGES


def test_every_registered_stage_task_is_named_and_every_name_has_a_task():
    from w2s.orchestration import all_stage_tasks

    registry = all_stage_tasks()
    assert sorted(registry) == sorted(ALL_STAGES)
    assert all(task.stage.name == name for name, task in registry.items())


@pytest.mark.parametrize("override", ["orchestration.offload.stages=[sampling, scorin]",
                                      "orchestration.stage_retry={studnet: {retries: 2}}"])
def test_a_misspelt_stage_in_orchestration_is_rejected(override):
    with pytest.raises(ConfigError, match="unknown stage 'scorin'|unknown stage 'studnet'"):
        load_config(None, [override])


def test_any_stage_can_be_offloaded_by_name():
    cfg = load_config(None, ["orchestration.offload.stages=[evaluate_naive_sft, cls_w2s, strong_evaluator]"])
    assert cfg.orchestration.offload.stages == ["evaluate_naive_sft", "cls_w2s", "strong_evaluator"]
