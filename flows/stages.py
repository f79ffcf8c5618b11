"""Stage names of each flow in run order (w2s/stage_names.py is where they are defined)."""

from w2s.stage_names import (  # noqa: F401
    ALL_STAGES,
    ANCHORS,
    BASELINE_POLICIES,
    BASELINE_STAGES,
    CLASSIFICATION_STAGES,
    EVE_TRAINING,
    STAGES,
    THEORY_STAGES,
)
