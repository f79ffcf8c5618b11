"""Stage `sampling` on the transformers backend: schema, bad input, kill → resume from finished shards.

The helpers here also build the inputs of tests/test_sampling_vllm.py (same stage on vLLM).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.data import DataSlice, data as prepare_data
from tasks.sampling import SCHEMA, SamplingStageConfig, build_requests, sampling
from w2s.artifacts import MANIFEST, ArtifactRef, ArtifactStore
from w2s.config import DataConfig, GenerationEngineConfig, SamplingConfig
from w2s.generation import derive_seed, fewshot_prefix
from w2s.tracking import RunContext
from w2s.writer import StageWriter

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ helpers
def make_ctx(root: Path) -> RunContext:
    return RunContext(artifact_root=str(root), tracking_uri=f"sqlite:///{root}/mlflow.db", experiment="test")


def make_inputs(ctx: RunContext, model_dir: Path, n_student: int = 6, exemplar_rows: int = 2) -> dict[str, ArtifactRef]:
    """data (real stage), a fixture exemplar artifact (until weak demos land) and a model artifact."""
    data = prepare_data.run(ctx, DataSlice(data=DataConfig(n_preference=4, n_weak_demo=2, n_exemplar_pool=2, n_student=n_student, n_test=2)))
    store = ArtifactStore(ctx.artifact_root)
    pool = pq.read_table(data.local_dir() / "exemplar.parquet")
    chosen = pq.read_table(data.local_dir() / "preferences.parquet").column("chosen").to_pylist()
    demos = pa.table({
        "prompt_id": pool.column("prompt_id").to_pylist()[:exemplar_rows],
        "prompt": pool.column("prompt").to_pylist()[:exemplar_rows],
        "response": chosen[:exemplar_rows],
    })
    with StageWriter(store, "weak_demos_fixture", f"rows{exemplar_rows}", 1, {}, {}) as writer:
        writer.write_parquet("exemplars.parquet", demos)
        exemplars = writer.commit()
    with StageWriter(store, "strong_base", f"fixture-{Path(model_dir).name}", 1, {}, {}) as writer:
        with writer.folder("model") as folder:
            for file in Path(model_dir).iterdir():
                os.link(file, folder / file.name)  # same filesystem: no 540 MB copy
        strong = writer.commit()
    return {"exemplars": exemplars, "data": data, "strong": strong}


def stage_cfg(backend: str = "hf", k: int = 2, max_tokens: int = 8, shard_rows: int = 4, **sampling_kw) -> SamplingStageConfig:
    return SamplingStageConfig(
        sampling=SamplingConfig(k=k, max_tokens=max_tokens, shard_rows=shard_rows, temperature=1.0, **sampling_kw),
        engine=GenerationEngineConfig(backend=backend, hf_batch_size=8), seed=3,
    )


def read_samples(ref: ArtifactRef) -> pa.Table:
    files = sorted((ref.local_dir() / "shards").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def check_samples(table: pa.Table, refs: dict[str, ArtifactRef], cfg: SamplingStageConfig) -> None:
    """K rows per student prompt, the DESIGN.md columns, seeds from the run seed, stops honoured."""
    assert table.schema.equals(SCHEMA)
    student = pq.read_table(refs["data"].local_dir() / "student.parquet")
    plain = dict(zip(student.column("prompt_id").to_pylist(), student.column("prompt").to_pylist()))
    demos = pq.read_table(refs["exemplars"].local_dir() / "exemplars.parquet")
    prefix = fewshot_prefix("tldr", list(zip(demos.column("prompt").to_pylist(), demos.column("response").to_pylist())))
    k = cfg.sampling.k
    assert table.num_rows == len(plain) * k
    rows = table.to_pylist()
    assert [(r["prompt_id"], r["sample_idx"]) for r in rows] == [(p, i) for p in plain for i in range(k)]
    for r in rows:
        assert r["prompt"] == plain[r["prompt_id"]]
        assert r["fewshot_prompt"] == prefix + r["prompt"]
        assert r["seed"] == derive_seed(cfg.seed, r["prompt_id"]) + r["sample_idx"]
        assert r["finish_reason"] in ("stop", "length") and 1 <= r["n_tokens"] <= cfg.sampling.max_tokens
        assert not any(s in r["completion"] for s in cfg.sampling.stop)


_RUN = """
import json, os, signal, sys
from w2s.artifacts import ArtifactRef
from w2s.writer import StageWriter
from w2s.tracking import RunContext
from tasks.sampling import SamplingStageConfig, sampling
args = json.loads(sys.argv[1])
if args["kill_after"]:
    original, written = StageWriter.write_parquet, []
    def write_then_die(self, relpath, table):
        original(self, relpath, table)
        written.append(relpath)
        if len(written) >= args["kill_after"]:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handlers: a real kill
    StageWriter.write_parquet = write_then_die
ref = sampling.run(RunContext(**args["ctx"]), SamplingStageConfig.model_validate(args["cfg"]), **{k: ArtifactRef(**v) for k, v in args["refs"].items()})
print(ref.model_dump_json())
"""


def run_stage_in_subprocess(ctx, cfg, refs, kill_after: int = 0) -> subprocess.CompletedProcess:
    args = {"ctx": ctx.model_dump(), "cfg": cfg.model_dump(), "refs": {k: v.model_dump() for k, v in refs.items()}, "kill_after": kill_after}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", _RUN, json.dumps(args)], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


# -------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_smollm_model_dir):
    """Inputs built once; each test writes its stage output under its own artifact root."""
    ctx = make_ctx(tmp_path_factory.mktemp("sampling-inputs"))
    return ctx, make_inputs(ctx, tiny_smollm_model_dir, n_student=6)


def at(ctx: RunContext, root: Path) -> RunContext:
    return ctx.model_copy(update={"artifact_root": str(root)})


def test_hf_stage_writes_k_rows_per_prompt_with_the_schema(tmp_path, world):
    ctx, refs = world
    ctx = at(ctx, tmp_path)
    cfg = stage_cfg(k=3, shard_rows=12)  # 4 prompts per shard: 2 shards, the last one short
    ref = sampling.run(ctx, cfg, **refs)
    table = read_samples(ref)
    check_samples(table, refs, cfg)
    manifest = json.loads((ref.local_dir() / MANIFEST).read_text())
    assert [f["path"] for f in manifest["files"]] == [f"shards/part-{i:05d}.parquet" for i in range(2)]
    assert manifest["metrics"]["rows"] == 18 and manifest["metrics"]["generated_tokens"] > 0
    assert manifest["config"]["engine"]["backend"] == "hf" and manifest["info"]["engine"]["backend"] == "hf"
    assert sampling.run(ctx, cfg, **refs) == ref  # finished: a cache hit, nothing regenerated


def test_auto_backend_is_resolved_into_the_cache_key():
    auto = SamplingStageConfig(engine=GenerationEngineConfig(backend="auto"))
    assert auto.resolved().engine.backend in ("vllm", "hf")
    hf = SamplingStageConfig(engine=GenerationEngineConfig(backend="hf"))
    assert sampling.key(hf, {}) != sampling.key(hf.model_copy(update={"engine": GenerationEngineConfig(backend="vllm")}), {})


def test_bad_stage_inputs_fail_before_generation(tmp_path, world, tiny_smollm_model_dir):
    ctx, refs = world
    ctx = at(ctx, tmp_path)
    one = make_inputs(ctx, tiny_smollm_model_dir, n_student=2, exemplar_rows=1)
    with pytest.raises(ValueError, match="num_shots=2 but the exemplar artifact has 1 rows"):
        sampling.run(ctx, stage_cfg(), **one)
    with pytest.raises(ValueError, match="longer than the context allows"):
        sampling.run(ctx, stage_cfg(max_tokens=1000), **refs)  # tiny model: 1024-token context
    store = ArtifactStore(ctx.artifact_root)
    key = sampling.key(stage_cfg(max_tokens=1000).resolved(), refs)
    assert store.lookup("sampling", key) is None
    assert not list((Path(ctx.artifact_root) / "sampling" / key).rglob("*.parquet"))
    skip = stage_cfg(max_tokens=1000, on_overlong_prompt="skip")
    with pytest.raises(ValueError, match="every prompt was overlong"):
        sampling.run(ctx, skip, **refs)


def test_exemplars_must_be_held_out(tmp_path, world):
    ctx, refs = world
    ctx, refs = at(ctx, tmp_path), dict(refs)
    student = pq.read_table(refs["data"].local_dir() / "student.parquet").slice(0, 2)
    leaked = pa.table({"prompt_id": student.column("prompt_id"), "prompt": student.column("prompt"), "response": [" a", " b"]})
    with StageWriter(ArtifactStore(ctx.artifact_root), "weak_demos_fixture", "leaky", 1, {}, {}) as writer:
        writer.write_parquet("exemplars.parquet", leaked)
        refs["exemplars"] = writer.commit()
    with pytest.raises(ValueError, match="must be held out"):
        sampling.run(ctx, stage_cfg(), **refs)


def _pool_and_students(n_pool: int, n_students: int) -> tuple[pa.Table, pa.Table]:
    pool = pa.table({"prompt_id": [f"pool-{i}" for i in range(n_pool)], "prompt": [f"post {i}" for i in range(n_pool)],
                     "response": [f" answer {i}" for i in range(n_pool)]})
    return pool, pa.table({"prompt_id": [f"s-{i}" for i in range(n_students)], "prompt": [f"query {i}" for i in range(n_students)]})


def _shots(fewshot: str) -> tuple[int, ...]:
    """Which pool rows a few-shot prompt demonstrates, read back from its text."""
    return tuple(int(part.split(" ")[1].split("\n")[0]) for part in fewshot.split("\n\n")[:-1])


def test_per_prompt_exemplars_are_a_uniform_draw_that_depends_only_on_the_prompt():
    """§9.6 'randomly sample 2 prompts on a held-out set', for each student prompt: every pool row
    demonstrates for num_shots / pool of the prompts (counted against the binomial), two distinct
    rows per prompt, and a prompt keeps its pair when the student split around it changes."""
    n_pool, n_students, shots = 8, 2000, 2
    pool, students = _pool_and_students(n_pool, n_students)
    cfg = stage_cfg(k=2)
    _, _, fewshot = build_requests(cfg, pool, students)
    drawn = {pid: _shots(text) for pid, text in fewshot.items()}
    assert all(len(set(pair)) == shots for pair in drawn.values())
    counts = [sum(i in pair for pair in drawn.values()) for i in range(n_pool)]
    p = shots / n_pool
    sd = (n_students * p * (1 - p)) ** 0.5
    assert all(abs(c - n_students * p) < 4 * sd for c in counts), counts
    assert len(set(drawn.values())) == n_pool * (n_pool - 1) // 2  # every pair occurs
    _, _, alone = build_requests(cfg, pool, students.slice(1234, 1))
    assert _shots(alone["s-1234"]) == drawn["s-1234"]
    other_seed = build_requests(cfg.model_copy(update={"seed": 4}), pool, students)[2]
    assert sum(_shots(other_seed[pid]) != pair for pid, pair in drawn.items()) > n_students // 2


def test_shared_exemplars_give_every_prompt_the_same_prefix():
    pool, students = _pool_and_students(8, 50)
    cfg = stage_cfg(k=2, exemplars="shared")
    _, _, fewshot = build_requests(cfg, pool, students)
    assert len({_shots(text) for text in fewshot.values()}) == 1
    pairs = {_shots(build_requests(cfg.model_copy(update={"seed": s}), pool, students)[2]["s-0"]) for s in range(20)}
    assert len(pairs) > 1  # the run seed draws the pair


def test_kill_during_sampling_then_rerun_reuses_the_finished_shards(tmp_path, world):
    ctx, refs = world
    ctx = at(ctx, tmp_path / "killed")
    cfg = stage_cfg(k=2, shard_rows=4, max_tokens=10, stop=["\n"]).resolved()  # 3 shards of 2 prompts
    killed = run_stage_in_subprocess(ctx, cfg, refs, kill_after=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    folder = Path(ctx.artifact_root) / "sampling" / sampling.key(cfg, refs)
    first = folder / "shards" / "part-00000.parquet"
    assert first.exists() and not (folder / MANIFEST).exists()
    assert not (folder / "shards" / "part-00001.parquet").exists()
    before = os.stat(first)

    ref = sampling.run(ctx, cfg, **refs)  # the rerun, in this (another) process

    after = os.stat(first)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["metrics"]["shards_reused"] == 1 and manifest["metrics"]["rows_sampled_now"] == 8
    resumed = read_samples(ref)
    check_samples(resumed, refs, cfg)

    # Per-prompt seeds: an uninterrupted run writes the same rows as the killed-and-resumed one.
    clean = sampling.run(at(ctx, tmp_path / "clean"), cfg, **refs)
    assert clean.uri != ref.uri and read_samples(clean).equals(resumed)
