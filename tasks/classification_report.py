"""Stage `cls_report`: the classification flow's summary (JSON + Markdown) and plots, logged to MLflow.

    w2s classification --config configs/classification.yaml
"""

from __future__ import annotations

from tasks.classification import finite, read_json
from w2s.artifacts import ArtifactRef
from w2s.config.classification import ClsEvalConfig
from w2s.classification.report import markdown, plot_epochs, plot_pgr, plot_probes, summarise
from w2s.stage import Body, StageOutput, stage
from w2s.tracking import RunContext

PLOTS = {"pgr.png": plot_pgr, "epochs.png": plot_epochs, "probes.png": plot_probes}


@stage(version=2, reads=lambda c: c.evaluation, shows="report.md")
def cls_report(ctx: RunContext, cfg: ClsEvalConfig, teacher: ArtifactRef, ceiling: ArtifactRef, w2s: ArtifactRef,
               bootstrap: ArtifactRef, probes: ArtifactRef, epochs: ArtifactRef) -> Body:
    def body(writer, run) -> StageOutput:
        s = summarise(*(read_json(ctx, ref) for ref in (teacher, ceiling, w2s, bootstrap, probes, epochs)))
        writer.write_json("summary.json", s)
        writer.write_bytes("report.md", markdown(s).encode())
        run.log_artifact(writer.path("report.md"))
        for name, plot in PLOTS.items():
            plot(s, writer.path(name))
            run.log_artifact(writer.path(name))
        metrics = {"acc_weak": s["weak"]["acc"], "acc_ceiling": s["ceiling"]["acc"], "pgr_ce": s["w2s_ce"]["pgr"],
                   "pgr_aux": s["w2s_aux"]["pgr"], "pgr_bootstrap": s["bootstrap_final"]["pgr"]}
        return StageOutput(finite(metrics))

    return body
