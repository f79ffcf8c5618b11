"""Every stage name of every flow, in run order: what `--until`, `orchestration.offload.stages` and
`orchestration.stage_retry` may name (validated against it), importable without Prefect.
tests/test_stage_registry.py checks it against the stage tasks the flows actually register."""

EVE_TRAINING = ("data", "strong_base", "weak_base", "weak_sft", "weak_dpo", "weak_demos", "sampling", "scoring", "weights", "student")
ANCHORS = ("strong_sft", "strong_dpo", "evaluate_weak", "evaluate_reference", "evaluate_strong_ceiling")
BASELINE_POLICIES = ("naive_sft", "refinement", "dpo_weak_reward", "strong_evaluator")

STAGES = EVE_TRAINING + ANCHORS + ("evaluate_eve", "teacher_signal", "report")  # the `eve` flow
BASELINE_STAGES = (EVE_TRAINING + BASELINE_POLICIES + ANCHORS + ("evaluate_eve",)
                   + tuple(f"evaluate_{name}" for name in BASELINE_POLICIES) + ("teacher_signal", "report"))
CLASSIFICATION_STAGES = ("cls_data", "cls_features", "cls_weak_teacher", "cls_w2s", "cls_ceiling", "cls_bootstrap",
                         "cls_epochs", "cls_probes", "cls_report")
THEORY_STAGES = ("theory_runs", "theory_plots")

ALL_STAGES = tuple(dict.fromkeys(BASELINE_STAGES + STAGES + CLASSIFICATION_STAGES + THEORY_STAGES))


def unknown_stages(names) -> list[str]:
    return [name for name in names if name not in ALL_STAGES]
