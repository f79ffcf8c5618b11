"""A two-stage flow on the real orchestration layer, run by tests in fresh processes.

    python -m tests.two_stage_flow ROOT MARKER [--set data.seed=1]

Each stage body appends its name to MARKER, so the test sees exactly which bodies executed.
Prints one JSON line: the stage rows and the MLflow parent run id.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import pyarrow as pa
from prefect import flow

from w2s.artifacts import ArtifactRef
from w2s.config import DataConfig, WeightsConfig
from w2s.orchestration import pipeline_run
from w2s.stage import StageOutput, stage
from w2s.tracking import RunContext

MARKER = None

def _mark(name: str) -> None:
    with open(MARKER, "a") as handle:
        handle.write(name + "\n")

@stage(version=1)
def rows(ctx: RunContext, cfg: DataConfig):
    def body(writer, run):
        _mark("rows")
        writer.write_parquet("rows.parquet", pa.table({"x": list(range(cfg.n_student))}))
        return StageOutput({"rows": cfg.n_student})

    return body

@stage(version=1)
def scaled(ctx: RunContext, cfg: WeightsConfig, rows: ArtifactRef):
    def body(writer, run):
        import pyarrow.parquet as pq

        _mark("scaled")
        table = pq.read_table(rows.local_dir() / "rows.parquet")
        scaled = [v * cfg.beta_over_lambda for v in table.column("x").to_pylist()]
        writer.write_parquet("scaled.parquet", pa.table({"y": scaled}))
        run.log_metrics({"sum": sum(scaled)})
        return StageOutput({"sum": sum(scaled)})

    return body

@flow(name="two-stage")
def two_stage(root: str, data: DataConfig = DataConfig(), weights: WeightsConfig = WeightsConfig()):
    ctx = RunContext(artifact_root=root, tracking_uri=f"sqlite:///{root}/mlflow.db", experiment="two-stage")
    with pipeline_run(data, "two-stage", ctx=ctx) as run:
        scaled(run.ctx, weights, rows=rows(run.ctx, data))
    return run

def task_edges(flow_run_id: str) -> dict[str, dict[str, list[str]]]:
    """What Prefect's run graph draws: each task run's arguments → the task runs they came from."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
    names = {r.id: r.name.rsplit("-", 1)[0] for r in runs}
    return {names[r.id]: {arg: sorted(names[i.id] for i in found if getattr(i, "input_type", None) == "task_run")
                          for arg, found in r.task_inputs.items() if any(getattr(i, "input_type", None) == "task_run" for i in found)}
            for r in runs}

def task_states(flow_run_id: str) -> dict[str, str]:
    """The final state name of each task run, as the Prefect UI shows it."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}

if __name__ == "__main__":
    from w2s.config.loading import load_config

    root, MARKER = sys.argv[1], sys.argv[2]
    cfg = load_config(None, [a for a in sys.argv[3:] if a != "--set"])
    state = two_stage(root, cfg.data, cfg.weights)
    print(json.dumps({"rows": [asdict(r) for r in state.rows], "parent": state.ctx.parent_run_id, "flow_run": state.ctx.flow_run_id,
                      "edges": task_edges(state.ctx.flow_run_id), "states": task_states(state.ctx.flow_run_id)}))
