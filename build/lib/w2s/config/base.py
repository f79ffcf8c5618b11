"""What every config section shares: frozen, unknown keys rejected, JSON dumps that keep ±inf."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_serializer

PositiveInt = Annotated[int, Field(ge=1)]
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
