"""What every config section shares: frozen, unknown keys rejected, JSON dumps that keep ±inf."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_serializer

# Every integer of every schema has an upper bound (tests/test_config_bounds.py enumerates them), so
# `--set data.n_test=99999999999999999999` is one line at load time, not gigabytes of data built before
# something else refuses it. The bounds sit far above the paper's setting (§9: 92k preference pairs,
# 40k student prompts, K = 4, 53-token summaries, 3B models on 8 GPUs) and below what overflows or
# cannot fit any one machine's memory.
MAX_ROWS = 10_000_000  # pairs, prompts, rows per shard: ~100x the paper's largest split
MAX_TOKENS = 1_048_576  # lengths and token budgets (2^20)
MAX_BATCH = 65_536  # sequences per optimiser step or forward pass
MAX_STEPS = 100_000_000  # optimiser steps, warm-up, checkpoint and log intervals
MAX_WIDTH = 1_048_576  # model dimensions
MAX_COUNT = 4_096  # layers, heads, devices, nodes, retries, shots, bins, seeds per sweep
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_SECONDS = 30 * 86_400


def bounded(low: int, high: int) -> type[int]:
    return Annotated[int, Field(ge=low, le=high)]  # type: ignore[return-value]


PositiveInt = bounded(1, MAX_COUNT)
Rows = bounded(1, MAX_ROWS)
Tokens = bounded(1, MAX_TOKENS)
Batch = bounded(1, MAX_BATCH)
Steps = bounded(1, MAX_STEPS)
Width = bounded(1, MAX_WIDTH)
Seed = bounded(0, MAX_SEED)
Fraction = Annotated[float, Field(gt=0, le=1)]


def json_finite(value):
    """±inf / nan anywhere in plain JSON data → "Infinity" / "-Infinity" / "NaN" (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: json_finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_finite(item) for item in value]
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @model_serializer(mode="wrap", when_used="json")
    def _json_safe_floats(self, handler):
        """JSON has no infinity, and β/λ = ∞ is a valid value: JSON dumps carry ±inf/nan as the
        strings "Infinity"/"-Infinity"/"NaN", which validate back to floats. Without this, Prefect
        (deployment parameter defaults, the UI's run form) turns them into null, which fails."""
        return json_finite(handler(self))
