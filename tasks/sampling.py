"""Stage `sampling` (EVE stage 3, paper §4.3/§9.6): the untrained strong model, prompted with two
weak-teacher demonstrations, samples K completions per student prompt. The demonstrations are drawn
from the held-out exemplar pool, per student prompt (`sampling.exemplars: per_prompt`, seeded by the
prompt id) or once for the run (`shared`).

    w2s run --config pipeline_config.yaml --until sampling

Inputs: the exemplar artifact (Parquet `prompt_id, prompt, response`: `exemplars.parquet`, or its
only Parquet file; the pool the demonstrations are drawn from), the data artifact's `student.parquet`, and
the `strong_base` model artifact. Output: `shards/part-NNNNN.parquet` with the samples columns of
DESIGN.md (`prompt_id, sample_idx, prompt, fewshot_prompt, completion, n_tokens, finish_reason,
seed`), `prompt` being the plain task prompt x that scoring conditions on. Each shard is written
atomically; after a kill the rerun keeps the finished shards and generates only the rest. Prompt
p's samples use seeds derive_seed(run.seed, p) + i, so a resumed run writes what an uninterrupted
one would have (w2s/generation/vllm_backend.py says where that can fail in the last bits).
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import nullcontext
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from w2s import faults
from w2s.artifacts import ArtifactRef, ArtifactStore, store_for
from w2s.config import GenerationEngineConfig, PipelineConfig, SamplingConfig
from w2s.generation import Engine, Request, derive_seed, fewshot_prompt, open_engine, resolve_backend
from w2s.progress import bar as progress_bar
from w2s.stage import Body, StageOutput, stage
from w2s.tables import model_dir, shard_paths
from w2s.tracking import RunContext

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("sample_idx", pa.int32()), ("prompt", pa.string()), ("fewshot_prompt", pa.string()),
    ("completion", pa.string()), ("n_tokens", pa.int32()), ("finish_reason", pa.string()), ("seed", pa.int64()),
])
EXEMPLAR_COLUMNS = ("prompt_id", "prompt", "response")


class SamplingStageConfig(BaseModel):
    """What the stage reads, and so what its cache key covers (backend resolved: never 'auto')."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sampling: SamplingConfig = SamplingConfig()
    engine: GenerationEngineConfig = GenerationEngineConfig()
    seed: int = 0

    @classmethod
    def from_pipeline(cls, cfg: PipelineConfig) -> SamplingStageConfig:
        return cls(sampling=cfg.sampling, engine=cfg.engines.generation, seed=cfg.run.seed).resolved()

    def resolved(self) -> SamplingStageConfig:
        # vLLM and transformers sample differently: their artifacts must not share a key.
        backend = resolve_backend(self.engine)
        return self if backend == self.engine.backend else self.model_copy(update={"engine": self.engine.model_copy(update={"backend": backend})})


def read_exemplars(ref: ArtifactRef, store: ArtifactStore, num_shots: int) -> pa.Table:
    files = dict(shard_paths(ref, store, prefix=""))  # every Parquet file of the artifact
    named = [p for p in files if Path(p).name == "exemplars.parquet"]
    if len(named) != 1 and len(files) != 1:
        raise ValueError(f"{ref.stage} artifact {ref.uri}: expected exemplars.parquet or a single Parquet file, found {list(files)}")
    table = pq.read_table(files[(named or list(files))[0]])
    missing = [c for c in EXEMPLAR_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"exemplar artifact lacks columns {missing} (has {table.column_names})")
    # π_weak may answer a pool prompt with nothing; an empty answer demonstrates nothing, so the draw
    # is from the answered rows (how many were left out is in the stage's info)
    answered = pa.compute.greater(pa.compute.utf8_length(pa.compute.utf8_trim_whitespace(table["response"].fill_null(""))), 0)
    usable = table.filter(answered)
    if usable.num_rows < num_shots:
        raise ValueError(f"sampling.num_shots={num_shots} but the exemplar artifact has {usable.num_rows} rows with a "
                         f"non-empty response (of {table.num_rows})")
    return usable.select(list(EXEMPLAR_COLUMNS))


def draw_exemplars(cfg: SamplingStageConfig, pool_size: int, prompt_id: str) -> list[int]:
    """Row indices of the pool that demonstrate for this prompt: a uniform draw without replacement
    that depends only on the run seed and (per_prompt) the prompt's id, so a resumed run, a larger
    student split or another shard size gives a prompt the same demonstrations."""
    name = f"exemplars:{prompt_id}" if cfg.sampling.exemplars == "per_prompt" else "exemplars"
    return sorted(random.Random(derive_seed(cfg.seed, name)).sample(range(pool_size), cfg.sampling.num_shots))


def shard_table(records, plain: dict[str, str], fewshot: dict[str, str]) -> pa.Table:
    return pa.Table.from_pylist([
        {"prompt_id": r.request_id, "sample_idx": r.sample_idx, "prompt": plain[r.request_id],
         "fewshot_prompt": fewshot[r.request_id], "completion": r.completion, "n_tokens": r.n_tokens,
         "finish_reason": r.finish_reason, "seed": r.seed}
        for r in records
    ], schema=SCHEMA)


def build_requests(cfg: SamplingStageConfig, demos: pa.Table, student: pa.Table) -> tuple[list[Request], dict[str, str], dict[str, str]]:
    pairs = list(zip(demos.column("prompt").to_pylist(), demos.column("response").to_pylist()))
    ids, prompts = student.column("prompt_id").to_pylist(), student.column("prompt").to_pylist()
    if not ids:
        raise ValueError("the data artifact's student.parquet has no prompts")
    if len(set(ids)) != len(ids):
        raise ValueError("student.parquet has duplicate prompt_ids")
    leaked = set(demos.column("prompt_id").to_pylist()) & set(ids)
    if leaked:
        raise ValueError(f"exemplars {sorted(leaked)[:5]} are also student prompts: exemplars must be held out")
    fewshot = {
        pid: fewshot_prompt(cfg.sampling.template, [pairs[i] for i in draw_exemplars(cfg, len(pairs), pid)], p)
        for pid, p in zip(ids, prompts)
    }
    requests = [Request(pid, fewshot[pid], n=cfg.sampling.k, seed=derive_seed(cfg.seed, pid)) for pid in ids]
    return requests, dict(zip(ids, prompts)), fewshot


@stage(version=2, reads=SamplingStageConfig.from_pipeline)
def sampling(
    ctx: RunContext, cfg: SamplingStageConfig, exemplars: ArtifactRef, data: ArtifactRef, strong: ArtifactRef,
    engine: Engine | None = None,
) -> Body:
    """`engine`: an already open engine on the same model (tests and benches share one vLLM init)."""
    cfg = cfg.resolved()
    params = cfg.sampling

    def body(writer, run) -> StageOutput:
        store = store_for(ctx.artifact_root)
        demos = read_exemplars(exemplars, store, params.num_shots)
        student = pq.read_table(store.materialise(data) / "student.parquet", columns=["prompt_id", "prompt"])
        requests, plain, fewshot = build_requests(cfg, demos, student)
        folder = model_dir(strong, store)
        if engine is not None and (Path(engine.model_dir).resolve() != folder.resolve() or engine.backend != cfg.engine.backend):
            raise ValueError(f"the engine passed in runs {engine.backend} on {engine.model_dir}, the stage needs {cfg.engine.backend} on {folder}")
        # the engine closes on leaving (vLLM's processes exit: the next stage gets the memory) unless a
        # flow run keeps it warm for the next stage that needs one (w2s/generation/engine.py)
        with nullcontext(engine) if engine is not None else open_engine(cfg.engine, folder, cfg.seed) as eng:
            output = _sample_shards(writer, run, eng, requests, params, plain, fewshot, demos)
            closing = time.perf_counter()
        return StageOutput({**output.metrics, "engine_close_s": time.perf_counter() - closing}, output.info)

    return body


def _sample_shards(writer, run, eng: Engine, requests, params: SamplingConfig, plain, fewshot, demos) -> StageOutput:
    checked = eng.check(requests, params)  # the whole prompt set, before any engine starts
    kept = checked.requests
    per_shard = max(1, params.shard_rows // params.k)
    shards = [kept[i : i + per_shard] for i in range(0, len(kept), per_shard)]
    totals = {"generated_tokens": 0, "prefill_requested": 0, "prefill_computed": 0, "finish_length": 0, "rows_now": 0, "prompts_now": 0}
    computed_known, reused, gen_s, init_s = True, 0, 0.0, 0.0
    with progress_bar(total=len(kept), desc="sampling", unit="prompt") as bar:
        for index, chunk in enumerate(shards):
            rel = f"shards/part-{index:05d}.parquet"
            if writer.reuse(rel):  # finished before an interruption and its seal still matches
                reused += 1
                bar.update(len(chunk))
                continue
            init_s += eng.start()
            result = eng.generate(chunk, params)
            table = shard_table(result.records, plain, fewshot)
            if table.num_rows != len(chunk) * params.k:
                raise RuntimeError(f"shard {index}: {table.num_rows} rows, expected {len(chunk) * params.k}")
            writer.write_parquet(rel, table)
            faults.checkpoint("sampling", index + 1)  # tests: W2S_DIE_AT=sampling:1 dies after shard 0
            gen_s += result.wall_s
            totals["generated_tokens"] += result.generated_tokens
            totals["prefill_requested"] += result.prefill_requested
            totals["rows_now"] += table.num_rows
            totals["prompts_now"] += len(chunk)
            totals["finish_length"] += sum(r.finish_reason == "length" for r in result.records)
            if result.prefill_computed is None:
                computed_known = False
            else:
                totals["prefill_computed"] += result.prefill_computed
            bar.update(len(chunk))
            bar.set_postfix(prompts_s=f"{len(chunk) / result.wall_s:.2f}", tok_s=f"{result.generated_tokens / result.wall_s:.1f}")
            run.log_metrics({"shard_tokens_per_s": result.generated_tokens / result.wall_s}, step=index)
    if checked.skipped:
        log.warning("sampling: %d overlong prompts skipped (on_overlong_prompt=skip)", len(checked.skipped))
    if computed_known and totals["prefill_requested"]:
        log.info("sampling: prefill tokens computed %d of %d requested", totals["prefill_computed"], totals["prefill_requested"])
    metrics = {
        "prompts": len(kept), "rows": len(kept) * params.k, "skipped_prompts": len(checked.skipped), "shards": len(shards),
        "shards_reused": reused, "rows_sampled_now": totals["rows_now"], "generated_tokens": totals["generated_tokens"],
        "generate_s": gen_s, "engine_init_s": init_s, "prefill_requested": totals["prefill_requested"],
        "tokens_per_s": totals["generated_tokens"] / gen_s if gen_s else 0.0,
        "prompts_per_s": totals["prompts_now"] / gen_s if gen_s else 0.0,
        "finish_length_frac": totals["finish_length"] / max(totals["rows_now"], 1),
    }
    if computed_known and totals["rows_now"]:
        metrics["prefill_computed"] = totals["prefill_computed"]
    info = {"engine": eng.info, "exemplar_pool_ids": demos.column("prompt_id").to_pylist(), "skipped": checked.skipped,
            "template": params.template, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return StageOutput(metrics, info)
