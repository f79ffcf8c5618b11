"""Stages of the synthetic misfit-vs-gain flow (seed paper 001 §5.3; w2s/theory documents the maths).

`theory_runs` fits the weak and weak-to-strong heads of every (setting, loss) and writes one row per
fine-tuning task (`tasks.parquet`: misfit and gain on the test sample, and `_fit` columns on the w2s
sample) with the fraction of tasks where gain ≥ misfit as metrics. `theory_plots` draws the
misfit-vs-gain scatter with the y = x line per (setting, loss) and logs each PNG to MLflow.

    w2s theory --config configs/theory.yaml
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from w2s.artifacts import ArtifactRef, store_for
from w2s.stage import Body, StageOutput, stage
from w2s.config.theory import TheoryConfig
from w2s.theory.experiment import fractions, run
from w2s.theory.plot import scatter
from w2s.tracking import RunContext


@stage(version=2, reads=lambda config: config.theory)
def theory_runs(ctx: RunContext, cfg: TheoryConfig) -> Body:
    def body(writer, run_) -> StageOutput:
        frame = run(cfg)
        writer.write_parquet("tasks.parquet", pa.Table.from_pandas(frame, preserve_index=False))
        metrics = fractions(frame, cfg.theorem_tol)
        return StageOutput(metrics, {"rows": len(frame)})

    return body


@stage(version=1, reads=lambda config: config.theory)
def theory_plots(ctx: RunContext, cfg: TheoryConfig, runs: ArtifactRef) -> Body:
    def body(writer, run_) -> StageOutput:
        frame = pd.read_parquet(store_for(ctx.artifact_root).materialise(runs) / "tasks.parquet")
        metrics = fractions(frame, cfg.theorem_tol)
        for (setting, loss), _ in frame.groupby(["setting", "loss"], sort=False):
            rel = f"misfit_gain_{setting}_{loss}.png"
            path = scatter(frame, setting, loss, writer.path(rel), metrics[f"frac_gain_ge_misfit/{setting}/{loss}"])
            writer.write_bytes(rel, path.read_bytes())  # through the writer, so remote roots get the file too
            run_.log_artifact(path, "plots")
        return StageOutput({"plots": float(frame.groupby(["setting", "loss"]).ngroups)})

    return body
