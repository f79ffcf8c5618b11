"""One budget rule for every policy trained from π_ref_strong on weak supervision (w2s/budget.py):
EVE's student's lr, schedule, batch size and number of optimiser steps. The list of policies comes
from the registry and the baselines flow, so a new baseline cannot escape the rule; the only ones
left out are named here with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

import tasks
from flows.stages import stages_of
from w2s.budget import SHARED, student_rows, student_steps
from w2s.config import TrainConfig
from w2s.config.loading import load_config
from w2s.training.trainer import total_steps

ROOT = Path(__file__).resolve().parents[1]
# trained on gold data to be as good as they can be (the ends of PGR), or untrained, or EVE itself
NOT_COMPARED = {"weak": "the weak teacher (gold data)", "strong_ceiling": "the strong ceiling (gold data)",
                "reference": "π_ref_strong, untrained", "eve": "the student the rule is taken from"}
EPOCHS_FIXED = {"dpo_weak_reward": "§5.2: DPO with the weak reward trains 1 epoch"}


def _train_config(node) -> TrainConfig | None:
    """The TrainConfig inside a stage's config slice, wherever the slice keeps it."""
    if isinstance(node, TrainConfig):
        return node
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            found = _train_config(getattr(node, name))
            if found is not None:
                return found
    return None


def _compared_policies():
    registry = tasks.all_stages()
    return [registry[s] for s in stages_of("baselines")
            if registry[s].evaluated_as and registry[s].evaluated_as not in NOT_COMPARED]


@pytest.mark.parametrize("config_file", ["pipeline_config.yaml", "configs/tldr_llama3b.yaml"])
def test_every_compared_policy_trains_with_eves_budget(config_file):
    config = load_config(ROOT / config_file)
    policies = _compared_policies()
    assert {p.evaluated_as for p in policies} >= {"naive_sft", "refinement", "dpo_weak_reward", "strong_evaluator"}
    student = config.student
    eve_steps = total_steps(student, student_rows(config))
    assert student_steps(config) == eve_steps
    for stage in policies:
        train = _train_config(stage.slice_of(config))
        assert train is not None, f"{stage.name} is evaluated as a policy but its config slice has no training section"
        for name in SHARED:
            assert getattr(train, name) == getattr(student, name), (stage.name, name)
        if stage.name in EPOCHS_FIXED:
            assert train.max_steps is None and train.epochs == 1.0, stage.name
        else:
            assert train.max_steps == eve_steps, (stage.name, train.max_steps, eve_steps)


def test_the_rule_follows_the_student_and_budget_own_keeps_each_section():
    config = load_config(ROOT / "pipeline_config.yaml", ["student.learning_rate=2e-5", "student.epochs=3"])
    for stage in _compared_policies():
        train = _train_config(stage.slice_of(config))
        assert train.learning_rate == 2e-5
        if stage.name not in EPOCHS_FIXED:
            assert train.max_steps == 36  # 192 rows / 16 × 3 epochs
    own = load_config(ROOT / "pipeline_config.yaml", ["baselines.budget=own", "baselines.dpo_weak_reward.learning_rate=3e-6"])
    dpo = next(s for s in _compared_policies() if s.name == "dpo_weak_reward")
    assert _train_config(dpo.slice_of(own)) == own.baselines.dpo_weak_reward


def test_a_micro_batch_that_does_not_divide_the_students_batch_is_a_clear_error():
    config = load_config(ROOT / "pipeline_config.yaml", ["student.batch_size=12", "student.micro_batch_size=4"])
    naive = tasks.all_stages()["naive_sft"]
    with pytest.raises(ValueError, match="student's batch_size 12 is not a multiple of this baseline's micro_batch_size 8"):
        naive.slice_of(config)
