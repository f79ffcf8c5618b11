"""Stage names in pipeline order (importable without Prefect, for `w2s --help`)."""

STAGES = ("data", "strong_base", "weak_base", "weak_sft", "weak_dpo", "weak_demos", "sampling", "scoring", "weights", "student")
