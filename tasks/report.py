"""Stage `report`: the PGR table and figures 3, 4, 5 and 9 from labelled evaluation artifacts
(w2s/report.py), written as `report.md` + a self-contained `report.html` with PNGs, and logged to
MLflow with the run. `w2s report` runs the baselines flow (everything upstream cached) and copies
the report out.

    w2s report --config pipeline_config.yaml --out reports/
"""

from __future__ import annotations

import json
import math
import shutil

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from w2s.artifacts import ArtifactRef, store_for
from w2s.config.base import json_finite
from w2s.evaluation import mean_ci95
from w2s.report import build_report, plot_report, render_html, render_markdown
from w2s.stage import Body, StageOutput, stage
from w2s.teacher_signal import signal_markdown
from w2s.tracking import RunContext


class ReportSlice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    title: str = "Weak-to-strong report"


# 2: the teacher-signal section; 3: EVE vs each baseline, paired by seed; 4: per-seed values in pgr.json;
# 6: EVE vs DPO at equal KL; win-rate and KL means as metrics (the flow's MLflow run shows them);
# 7: a provenance section (the code, each evaluation artifact and its seed), for a mailed copy
@stage(version=7, reads=lambda config: ReportSlice(), shows="report.md")
def report(ctx: RunContext, cfg: ReportSlice, evaluations: dict[str, ArtifactRef], weights: ArtifactRef | None = None,
           signal: ArtifactRef | None = None) -> Body:
    """`weights`: the EVE weights artifact whose F-weight histogram joins the figures; `signal`: the
    teacher_signal artifact, whose table and plot join the report."""
    if not evaluations:
        raise ValueError("the report needs at least one evaluation")

    def body(writer, run) -> StageOutput:
        store = store_for(ctx.artifact_root)
        tables = {label: pq.read_table(store.materialise(ref) / "samples.parquet") for label, ref in evaluations.items()}
        result = build_report(tables)
        with writer.folder("figures") as staging:
            names = [path.name for path in plot_report(result, staging)]
            for ref, name in ((weights, "weights_histogram.png"), (signal, "teacher_signal.png")):
                if ref is not None:
                    shutil.copy2(store.materialise(ref) / name, staging / name)
                    names.append(name)
        images = [writer.dir / "figures" / name for name in names]
        sections = () if signal is None else (signal_markdown(json.loads((store.materialise(signal) / "signal.json").read_text())),)
        sections += (provenance_lines(store, evaluations),)
        markdown = render_markdown(result, images, cfg.title, sections).replace("](", "](figures/")
        writer.write_bytes("report.md", markdown.encode())
        writer.write_bytes("report.html", render_html(markdown, images).encode())
        writer.write_bytes("pgr.json", json.dumps(json_finite({"rows": result.table_rows(), "paired": result.paired_rows(), "per_seed": result.per_seed(),
                                                            "warnings": result.warnings}), indent=1, allow_nan=False).encode())
        for path in [writer.path("report.md"), writer.path("report.html"), *images]:
            run.log_artifact(path)
        means = {f"{metric}/{name}": mean_ci95(values).mean for name, policy in result.policies.items()
                 for metric, values in (("pgr", policy.pgr), ("win_rate", policy.win), ("kl", policy.kl)) if values}
        metrics = {name: value for name, value in means.items() if not math.isnan(value)}
        print(markdown.split("![")[0])
        return StageOutput(metrics, {"warnings": result.warnings})

    return body


def provenance_lines(store, evaluations: dict[str, ArtifactRef]) -> list[str]:
    """Where the numbers come from, so a copy read far from the run can be traced back: the code,
    and each evaluation artifact (its key, content digest and seed). Deterministic on purpose (no
    date, host or run ids): an interrupted and resumed run writes the same bytes as a clean one."""
    rows = []
    for label, ref in sorted(evaluations.items()):
        manifest = store.read_manifest(ref.stage, ref.key)
        seed = manifest.config.get("seed", "–") if manifest else "–"
        rows.append(f"| {label} | `{ref.stage}/{ref.key}` | `{ref.digest[:16]}` | {seed} |")
    return ["**Provenance**", "", f"Computed by {code_identity()} from these evaluation artifacts:", "",
            "| evaluation | artifact | digest | seed |", "|---|---|---|---|", *rows]


def code_identity() -> str:
    """w2s's version and, in a git checkout, its commit (and whether tracked files differ from it)."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    try:
        identity = f"w2s {version('w2s')}"
    except PackageNotFoundError:
        identity = "w2s (not installed)"
    git = ["git", "-C", str(Path(__file__).resolve().parents[1])]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=30,
                                 check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return identity  # an installed wheel or an image without .git
    return f"{identity}, commit {commit}" + (" with uncommitted changes" if changed else "")

