"""Generation engine without vLLM: prompt templates, input checks, seeds, the transformers backend."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch

from w2s.config import GenerationEngineConfig, GenerationParams, SamplingConfig
from w2s.generation import Engine, Request, derive_seed, fewshot_prefix, fewshot_prompt, generate, refinement_prompt
from w2s.generation.vllm_backend import shared_prefix, worker_env

HF = GenerationEngineConfig(backend="hf", hf_batch_size=4)
EXEMPLARS = [("SUBREDDIT: r/a\nPOST: one\nTL;DR:", " first answer"), ("SUBREDDIT: r/b\nPOST: two\nTL;DR:", "second answer\n")]


# ------------------------------------------------------------------------------------------ prompts
def test_tldr_template_puts_the_exemplars_first_and_ends_with_tldr():
    a = fewshot_prompt("tldr", EXEMPLARS, "SUBREDDIT: r/c\nPOST: three\nTL;DR:")
    b = fewshot_prompt("tldr", EXEMPLARS, "POST: four")  # a prompt without the TL;DR cue gets one
    prefix = fewshot_prefix("tldr", EXEMPLARS)
    assert prefix == "SUBREDDIT: r/a\nPOST: one\nTL;DR: first answer\n\nSUBREDDIT: r/b\nPOST: two\nTL;DR: second answer\n\n"
    assert a == prefix + "SUBREDDIT: r/c\nPOST: three\nTL;DR:"
    assert b == prefix + "POST: four\nTL;DR:"
    assert shared_prefix([a, b], 16) == prefix


def test_instruction_and_refinement_templates():
    p = fewshot_prompt("instruction", [("Say hi", "Hi!")], "Say bye")
    assert p == "User: Say hi\nAssistant: Hi!\n\nUser: Say bye\nAssistant:"
    r = refinement_prompt("Say bye", "bye")
    assert r.startswith("User: Say bye\nWeak Assistant: bye\n") and r.endswith("Strong Assistant:")
    with pytest.raises(ValueError, match="empty response"):
        fewshot_prompt("tldr", [("x", "  ")], "y")


def test_seeds_are_stable_and_distinct():
    assert derive_seed(0, "student-000001") == derive_seed(0, "student-000001")
    assert derive_seed(0, "student-000001") == 1084396036  # pinned: changing the derivation changes every sample
    seeds = {derive_seed(s, f"p{i}") for s in range(3) for i in range(100)}
    assert len(seeds) == 300 and max(seeds) + 1000 < 2**31


# --------------------------------------------------------------------------------------- bad input
def _engine(model_dir, **cfg) -> Engine:
    return Engine(HF.model_copy(update=cfg), str(model_dir), seed=0)


@pytest.mark.parametrize(
    "requests, params, message",
    [
        ([], GenerationParams(), "no prompts"),
        ([Request("a", "x", n=0)], GenerationParams(), "must be >= 1"),
        ([Request("a", "")], GenerationParams(), "empty prompts"),
        ([Request("a", "x"), Request("a", "y")], GenerationParams(), "unique"),
        ([Request("a", "x")], GenerationParams(max_tokens=1024), "no room for a prompt"),
        ([Request("a", "word " * 1100)], GenerationParams(max_tokens=16), "longer than the context"),
        ([Request("a", "x")], GenerationParams(stop=[""]), "non-empty"),
    ],
)
def test_bad_input_fails_before_the_engine_starts(tiny_smollm_model_dir, requests, params, message):
    engine = _engine(tiny_smollm_model_dir)  # tiny model: 1024-token context
    with pytest.raises(ValueError, match=message):
        engine.generate(requests, params)
    assert not engine.started


def test_k_below_two_is_a_config_error():
    with pytest.raises(ValueError):
        SamplingConfig(k=0)


def test_max_model_len_beyond_the_model_is_rejected(tiny_smollm_model_dir):
    with pytest.raises(ValueError, match="exceeds the model's context"):
        _engine(tiny_smollm_model_dir, max_model_len=4096)


def test_overlong_prompts_can_be_skipped_and_counted(tiny_smollm_model_dir):
    engine = _engine(tiny_smollm_model_dir, max_model_len=64)
    params = GenerationParams(max_tokens=8, on_overlong_prompt="skip", stop=[])
    with engine:
        result = engine.generate([Request("short", "hello there", n=2), Request("long", "word " * 80, n=2)], params)
    assert result.skipped == ["long"]
    assert [r.request_id for r in result.records] == ["short", "short"]
    with pytest.raises(ValueError, match="every prompt was overlong"):
        _engine(tiny_smollm_model_dir, max_model_len=64).generate([Request("long", "word " * 80)], params)


# ------------------------------------------------------------------------------ transformers backend
def _requests():
    return [Request(f"p{i}", f"SUBREDDIT: r/test\nPOST: post number {i}\nTL;DR:", n=3, seed=derive_seed(7, f"p{i}")) for i in range(3)]


def test_hf_backend_returns_n_records_per_request_with_the_schema(tiny_smollm_model_dir):
    params = GenerationParams(max_tokens=12, stop=[])
    records = generate(_requests(), params, HF, tiny_smollm_model_dir, seed=0)
    assert [(r.request_id, r.sample_idx) for r in records] == [(f"p{i}", j) for i in range(3) for j in range(3)]
    for r in records:
        assert r.seed == derive_seed(7, r.request_id) + r.sample_idx
        assert r.finish_reason in ("stop", "length") and 1 <= r.n_tokens <= 12
        assert r.finish_reason == "stop" or r.n_tokens == 12
    assert len({r.completion for r in records}) > 1  # sampled, not one greedy answer repeated


def test_hf_backend_honours_stop_strings(tiny_smollm_model_dir):
    # A random model emits 'e' and ' ' often: the stop must cut before them, never include them.
    params = GenerationParams(max_tokens=24, stop=["e", " a"])
    records = generate(_requests(), params, HF, tiny_smollm_model_dir, seed=0)
    assert all("e" not in r.completion and " a" not in r.completion for r in records)
    stopped = [r for r in records if r.finish_reason == "stop"]
    assert stopped, "no sample hit a stop string: the test proves nothing"
    assert all(r.n_tokens < 24 for r in stopped)


_FRESH = """
import json, sys
from w2s.config import GenerationEngineConfig, GenerationParams
from w2s.generation import Request, generate
reqs = [Request(**r) for r in json.loads(sys.argv[2])]
out = generate(reqs, GenerationParams(max_tokens=10, stop=["\\n"]), GenerationEngineConfig(backend="hf", hf_batch_size=4), sys.argv[1], seed=0)
print(json.dumps([r.to_dict() for r in out]))
"""


def test_hf_same_seed_same_completions_in_a_fresh_process(tiny_smollm_model_dir):
    reqs = json.dumps([{"request_id": r.request_id, "prompt": r.prompt, "n": r.n, "seed": r.seed} for r in _requests()])
    fresh = subprocess.run([sys.executable, "-c", _FRESH, str(tiny_smollm_model_dir), reqs], capture_output=True, text=True, check=True)
    runs = [json.loads(fresh.stdout)]
    here = generate(_requests(), GenerationParams(max_tokens=10, stop=["\n"]), HF, tiny_smollm_model_dir, seed=0)
    assert [r.to_dict() for r in here] == runs[0]
    other = [Request(r.request_id, r.prompt, r.n, r.seed + 1) for r in _requests()]
    changed = generate(other, GenerationParams(max_tokens=10, stop=["\n"]), HF, tiny_smollm_model_dir, seed=0)
    assert [r.completion for r in changed] != [r["completion"] for r in runs[0]]


def test_data_parallel_replicas_get_disjoint_devices_and_contiguous_balanced_work():
    from w2s.generation.data_parallel import replica_envs, split_requests

    gpus = [str(i) for i in range(8)]
    assert replica_envs(4, 2, True, gpus=gpus) == [{"CUDA_VISIBLE_DEVICES": f"{2 * i},{2 * i + 1}"} for i in range(4)]
    with pytest.raises(ValueError, match=r"data_parallel_size 3 × tensor_parallel_size 4 needs 12 GPUs; 8 visible"):
        replica_envs(3, 4, True, gpus=gpus)
    # CPU: one core list per tensor-parallel rank ('|'-separated, vLLM-cpu's format), disjoint
    assert replica_envs(2, 2, False, cores=list(range(9))) == [{"VLLM_CPU_OMP_THREADS_BIND": "0,1|2,3"},
                                                               {"VLLM_CPU_OMP_THREADS_BIND": "4,5|6,7"}]
    with pytest.raises(ValueError, match="needs 4 CPU cores; this process may use 2"):
        replica_envs(2, 2, False, cores=[0, 1])
    # one engine on CPU: every core this process may use, not vLLM's auto binding (which keeps one for
    # its scheduler); a binding the user set, vLLM's own "auto" included, still decides
    if not torch.cuda.is_available():
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
            patch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
            assert worker_env(GenerationEngineConfig())["VLLM_CPU_OMP_THREADS_BIND"] == "0,1,2"
            assert worker_env(GenerationEngineConfig(tensor_parallel_size=2))["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
            assert worker_env(GenerationEngineConfig(), {"VLLM_CPU_OMP_THREADS_BIND": "1"})["VLLM_CPU_OMP_THREADS_BIND"] == "1"
            patch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")
            assert worker_env(GenerationEngineConfig())["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
            # the engine core in the worker process (bench/engine_start.py), unless the environment says otherwise
            patch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
            assert worker_env(GenerationEngineConfig())["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
            patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
            assert worker_env(GenerationEngineConfig())["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    rng = random.Random(7)
    requests = [Request(f"r{i}", "x" * rng.randint(10, 400), n=rng.choice([1, 4]), seed=i) for i in range(101)]
    for parts in (1, 2, 3, 8):
        runs = split_requests(requests, parts, max_tokens=32)
        assert [i for run in runs for i in run] == list(range(101))  # every request once, in order, contiguous
        work = [sum(requests[i].n * (len(requests[i].prompt) + 128) for i in run) for run in runs]
        largest = max(r.n * (len(r.prompt) + 128) for r in requests)
        assert max(work) - min(work) <= 2 * largest, work  # balanced to within a request either side


def test_kept_engines_one_per_architecture_and_none_on_a_gpu(tiny_char_model_dir, tiny_smollm_model_dir, monkeypatch):
    """_WarmEngines.keep without starting vLLM: a stub backend that can swap weights stands in."""
    from w2s.generation import engine as engine_module

    class SwappingBackend:
        info: dict = {}

        def __init__(self):
            self.closed = False

        def swap_weights(self, model_dir):
            pass

        def close(self):
            self.closed = True

    def started(model_dir):
        engine = engine_module.Engine(GenerationEngineConfig(backend="hf"), str(model_dir))
        engine.backend, engine._impl = "vllm", SwappingBackend()
        return engine

    warm = engine_module._WarmEngines()
    monkeypatch.setattr(engine_module, "_cuda_visible", lambda: False)
    assert not warm.keep(started(tiny_char_model_dir))  # outside a flow run nothing is kept
    warm.depth = 1
    first, second, other = started(tiny_char_model_dir), started(tiny_char_model_dir), started(tiny_smollm_model_dir)
    first_backend = first._impl
    assert warm.keep(first) and warm.keep(other) and warm.keep(second)
    assert warm.idle == [other, second] and first_backend.closed  # one idle engine per architecture
    assert warm.take(GenerationEngineConfig(backend="hf"), str(tiny_char_model_dir), 0) is second
    assert warm.take(GenerationEngineConfig(backend="hf"), str(tiny_char_model_dir), 1) is None  # another seed
    monkeypatch.setattr(engine_module, "_cuda_visible", lambda: True)
    assert not warm.keep(started(tiny_char_model_dir))  # a GPU engine would hold memory a training stage needs
    warm.close_all()
    assert warm.idle == [] and not other.started


def test_vllm_warns_of_no_fp32_to_bf16_load_but_of_every_other_dtype_mismatch():
    """vLLM's loader warns per tensor whenever a stored dtype differs from the parameter's; w2s's
    bf16 exports store fp32 weights on purpose (w2s/generation/vllm_swap.py), so that one case is dropped."""
    import logging

    from w2s.generation.vllm_swap import NARROWING, quiet_intended_narrowing

    logger = logging.getLogger("vllm.model_executor.models.utils")
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger.addHandler(handler)
    filters = list(logger.filters)
    try:
        quiet_intended_narrowing()
        quiet_intended_narrowing()  # once per process, however often it is called
        assert len(logger.filters) == len(filters) + 1
        logger.warning(NARROWING, "model.layers.0.mlp.up_proj.weight", torch.float32, torch.bfloat16)
        logger.warning(NARROWING, "model.norm.weight", torch.float16, torch.bfloat16)
        logger.warning(NARROWING, "lm_head.weight", torch.float32, torch.float16)
        logger.warning("Attempted to load nested weight %s", "x")
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = filters
    assert seen == ["Attempted to load weight model.norm.weight with dtype torch.float16 into parameter with dtype torch.bfloat16",
                    "Attempted to load weight lm_head.weight with dtype torch.float32 into parameter with dtype torch.float16",
                    "Attempted to load nested weight x"]
