"""One list of stage names (w2s/stage_names.py) matches the stage tasks every flow registers, so
`--until`, offload and retry settings can be validated against it; typos fail at load time."""

from __future__ import annotations

import pytest

from w2s.config_io import ConfigError, load_config
from w2s.stage_names import ALL_STAGES


REGISTRY = """
import json
from w2s.orchestration import all_stage_tasks
registry = all_stage_tasks()
print(json.dumps({name: task.stage.name for name, task in registry.items()}))
"""


def test_every_registered_stage_task_is_named_and_every_name_has_a_task():
    # a fresh process: tests register stand-in stage tasks of their own in this one
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "-c", REGISTRY], cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    registry = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(registry) == sorted(ALL_STAGES)
    assert all(stage == name for name, stage in registry.items())


@pytest.mark.parametrize("override", ["orchestration.offload.stages=[sampling, scorin]",
                                      "orchestration.stage_retry={studnet: {retries: 2}}"])
def test_a_misspelt_stage_in_orchestration_is_rejected(override):
    with pytest.raises(ConfigError, match="unknown stage 'scorin'|unknown stage 'studnet'"):
        load_config(None, [override])


def test_any_stage_can_be_offloaded_by_name():
    cfg = load_config(None, ["orchestration.offload.stages=[evaluate_naive_sft, cls_w2s, strong_evaluator]"])
    assert cfg.orchestration.offload.stages == ["evaluate_naive_sft", "cls_w2s", "strong_evaluator"]
