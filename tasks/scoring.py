"""Stage `scoring` (EVE stage 4): log π_weak(y|x) and log π_weak_ref(y|x) of every sampled row.

Adds `logp_weak, logp_weak_ref, n_tokens_weak, truncated` to the sample shards (w2s/scoring.py has
the boundary, truncation and prompt-sharing rules). Resumes shard by shard after a kill.

    w2s run --config pipeline_config.yaml --until scoring
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.parquet as pq

from w2s import faults
from w2s.artifacts import ArtifactRef, store_for
from w2s.config import ScoringConfig
from w2s.devices import torch_device
from w2s.models.build import load_pretrained
from w2s.precision import torch_dtype
from w2s.scoring import score_groups, tokenise_group
from w2s.progress import bar as progress_bar
from w2s.stage import Body, StageOutput, stage
from w2s.tables import model_dir, shard_paths
from w2s.tracking import RunContext

log = logging.getLogger(__name__)


def score_table(table: pa.Table, models: list, tokenizer, cfg: ScoringConfig, max_length: int, progress=None,
                device: str = "cpu") -> pa.Table:
    prompt_ids = table.column("prompt_id").to_pylist()
    groups_rows: dict[str, list[int]] = {}
    for row, pid in enumerate(prompt_ids):
        groups_rows.setdefault(pid, []).append(row)
    prompts, completions = table.column("prompt").to_pylist(), table.column("completion").to_pylist()
    ended = [reason == "stop" for reason in table.column("finish_reason").to_pylist()]
    keys = list(groups_rows)
    groups = [tokenise_group(tokenizer, prompts[groups_rows[k][0]], [completions[r] for r in groups_rows[k]], max_length,
                             [ended[r] for r in groups_rows[k]]) for k in keys]
    n = table.num_rows
    logp = [[0.0] * n for _ in models]
    n_tokens, truncated = [0] * n, [False] * n
    scores = score_groups(models, groups, tokenizer.pad_token_id, cfg.batch_tokens, device, progress=progress)
    for gi, key in enumerate(keys):
        for j, row in enumerate(groups_rows[key]):
            for m in range(len(models)):
                logp[m][row] = scores[m][gi][j]
            n_tokens[row] = groups[gi].scored_tokens(j)
            truncated[row] = groups[gi].truncated[j]
    return (table.append_column("logp_weak", pa.array(logp[0], pa.float64()))
            .append_column("logp_weak_ref", pa.array(logp[1], pa.float64()))
            .append_column("n_tokens_weak", pa.array(n_tokens, pa.int32()))
            .append_column("truncated", pa.array(truncated, pa.bool_())))


# 2: EOS scored for completions that stopped; 3: each row summed from its own boundary (w2s/text.py)
@stage(version=3, reads=lambda config: config.scoring.resolved())
def scoring(ctx: RunContext, cfg: ScoringConfig, samples: ArtifactRef, weak: ArtifactRef, weak_ref: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        store = store_for(ctx.artifact_root)
        dtype, device = torch_dtype(cfg.precision), torch_device(ctx.device)
        weak_model, tokenizer = load_pretrained(model_dir(weak, store), dtype=dtype, device=device)
        ref_model, _ = load_pretrained(model_dir(weak_ref, store), dtype=dtype, device=device)
        models = [weak_model.eval(), ref_model.eval()]
        max_length = cfg.max_length or weak_model.config.max_position_embeddings
        shards = shard_paths(samples, store)
        total = sum(pq.ParquetFile(path).metadata.num_rows for _, path in shards)
        started, rows, n_trunc, written = time.perf_counter(), 0, 0, 0
        with progress_bar(total=total, desc="scoring", unit="row") as progress:
            for rel, path in shards:
                if writer.reuse(rel):  # finished before an interruption and its seal still matches
                    done = pq.read_table(writer.path(rel), columns=["truncated"])
                    progress.update(done.num_rows)
                    n_trunc += sum(done.column("truncated").to_pylist())
                    continue
                scored = score_table(pq.read_table(path), models, tokenizer, cfg, max_length, progress, device)
                writer.write_parquet(rel, scored)
                written += 1
                faults.checkpoint(writer.stage, written)
                rows += scored.num_rows
                n_trunc += sum(scored.column("truncated").to_pylist())
        if n_trunc:
            log.warning("scoring: %d of %d rows truncated to the weak model's context (%d tokens)", n_trunc, total, max_length)
        wall = time.perf_counter() - started
        return StageOutput({"rows": total, "rows_scored_now": rows, "truncated_rows": n_trunc, "rows_per_s": rows / max(wall, 1e-9)})

    return body
