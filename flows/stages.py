"""Stage names of each flow in run order (importable without Prefect, for `w2s --help`)."""

EVE_TRAINING = ("data", "strong_base", "weak_base", "weak_sft", "weak_dpo", "weak_demos", "sampling", "scoring", "weights", "student")
ANCHORS = ("strong_sft", "strong_dpo", "evaluate_weak", "evaluate_reference", "evaluate_strong_ceiling")
BASELINE_POLICIES = ("naive_sft", "refinement", "dpo_weak_reward", "strong_evaluator")

STAGES = EVE_TRAINING + ANCHORS + ("evaluate_eve", "teacher_signal", "report")  # the `eve` flow
BASELINE_STAGES = (EVE_TRAINING + BASELINE_POLICIES + ANCHORS + ("evaluate_eve",)
                   + tuple(f"evaluate_{name}" for name in BASELINE_POLICIES) + ("teacher_signal", "report"))
