"""`w2s plan` (w2s/plan.py) and `--force` (w2s.stage.forcing) on a two-stage chain of real stages
against a real artifact store: the plan computes nothing and says why each miss misses; a forced
stage recomputes (no sealed piece of the old run reused), and so does every stage it feeds."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from w2s.config import PipelineConfig
from w2s.config.loading import with_values
from w2s.plan import Planner, render
from w2s.stage import Stage, StageOutput, forcing, use_runner

BODIES: list[str] = []


def _rows(ctx, cfg):
    def body(writer, run):
        BODIES.append("plan_rows")
        if writer.reuse("part.parquet"):  # a resumable piece: --force must not reuse it
            BODIES.append("plan_rows reused a piece")
        else:
            writer.write_parquet("part.parquet", pa.table({"x": list(range(cfg.n_student))}))
        return StageOutput({})

    return body


def _scaled(ctx, cfg, rows):
    def body(writer, run):
        BODIES.append("plan_scaled")
        x = pq.read_table(rows.local_dir() / "part.parquet").column("x").to_pylist()
        writer.write_parquet("scaled.parquet", pa.table({"y": [v * cfg.beta_over_lambda for v in x]}))
        return StageOutput({})

    return body


def _stages(scaled_version: int = 1) -> tuple[Stage, Stage]:
    rows = Stage("plan_rows", 1, _rows, reads=lambda c: c.data)
    scaled = Stage("plan_scaled", scaled_version, _scaled, reads=lambda c: c.weights, inputs=("rows",))
    return rows, scaled


def _flow(ctx, config, stages):
    rows, scaled = stages
    scaled(ctx, config, rows=rows(ctx, config))


def _plan(ctx, config, stages=None) -> dict[str, str]:
    planner = Planner(ctx.artifact_root)
    with use_runner(planner):
        _flow(ctx, config, stages or _stages())
    return {row.stage: row.why if row.cache == "miss" else "hit" for row in planner.rows}


def test_plan_says_hit_or_why_it_misses_and_computes_nothing(ctx):
    config = PipelineConfig()
    BODIES.clear()
    assert _plan(ctx, config) == {"plan_rows": "never computed under this root", "plan_scaled": "input rows is recomputed"}
    _flow(ctx, config, _stages())  # computes both (the default runner)
    assert BODIES == ["plan_rows", "plan_scaled"]
    assert _plan(ctx, config) == {"plan_rows": "hit", "plan_scaled": "hit"}
    assert _plan(ctx, with_values(config, **{"weights.beta_over_lambda": 2.0})) == {
        "plan_rows": "hit", "plan_scaled": "config beta_over_lambda: 1.0 → 2.0"}
    assert _plan(ctx, with_values(config, **{"data.n_student": 5})) == {
        "plan_rows": f"config n_student: {config.data.n_student} → 5", "plan_scaled": "input rows is recomputed"}
    assert _plan(ctx, config, _stages(scaled_version=2)) == {"plan_rows": "hit", "plan_scaled": "stage version 1 → 2"}
    assert BODIES == ["plan_rows", "plan_scaled"], "planning ran a stage body"
    text = render(Planner(ctx.artifact_root, []).rows)
    assert text.splitlines()[-1] == "0 of 0 stages cached; 0 would run"


def test_force_recomputes_the_stage_and_what_it_feeds_without_reusing_pieces(ctx):
    config = PipelineConfig()
    _flow(ctx, config, _stages())
    BODIES.clear()
    _flow(ctx, config, _stages())
    assert BODIES == []  # cached
    with forcing({"plan_rows"}):
        _flow(ctx, config, _stages())
    assert BODIES == ["plan_rows", "plan_scaled"]
    BODIES.clear()
    with forcing({"plan_scaled"}):
        _flow(ctx, config, _stages())
    assert BODIES == ["plan_scaled"]  # only what follows the forced stage
    assert _plan(ctx, config) == {"plan_rows": "hit", "plan_scaled": "hit"}  # the recomputed artifacts verify
