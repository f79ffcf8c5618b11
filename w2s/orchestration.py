"""The Prefect layer: stage tasks with an artifact-keyed cache policy, and the pipeline run context.

Prefect's default cache key includes the flow-run id and hashes `Path`s by their string, so it never
hits across runs. `ArtifactCachePolicy` uses the artifact key instead (stage, version, config slice,
input digests), so a second `w2s run` in a new process gets Prefect "Cached" states and runs no stage
body. Records are JSON (no pickle) under `<artifact_root>/_prefect/`; when the artifact behind a
record fails verification (corrupted, truncated, deleted), the policy drops the record so the stage
recomputes instead of returning a reference to broken files.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from w2s.artifacts import ArtifactRef, ArtifactStore, local_path_of
from w2s.stage import Stage, last_outcome
from w2s.tracking import RunContext

RECORD_PREFIX = "w2s"


def prefect_records_dir(artifact_root: str) -> Path:
    local = local_path_of(artifact_root)
    if local is None:  # remote roots keep Prefect's records in its local storage path
        from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

        return Path(PREFECT_LOCAL_STORAGE_PATH.value()) / "w2s"
    return local.absolute() / "_prefect" / "results"


def artifact_inputs(inputs: dict[str, Any]) -> dict[str, ArtifactRef]:
    return {name: value for name, value in inputs.items() if isinstance(value, ArtifactRef)}


@dataclass
class ArtifactCachePolicy(CachePolicy):
    stage: Stage = field(default_factory=lambda: Stage("?", 0))
    artifact_root: str = ""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        key = self.stage.key(inputs["cfg"], artifact_inputs(inputs))
        record = f"{RECORD_PREFIX}-{self.stage.name}-{key}"
        if ArtifactStore(self.artifact_root).lookup(self.stage.name, key) is None:
            (prefect_records_dir(self.artifact_root) / record).unlink(missing_ok=True)
        return record


@dataclass
class StageRow:
    stage: str
    cache: str
    wall_s: float
    uri: str
    mlflow_run_id: str | None


class UntilReached(Exception):
    """Raised after the `--until` stage; `pipeline_run` turns it into a normal end of the flow."""


@dataclass
class PipelineState:
    ctx: RunContext
    until: str | None
    rows: list[StageRow] = field(default_factory=list)


_pipeline: contextvars.ContextVar[PipelineState | None] = contextvars.ContextVar("w2s_pipeline", default=None)


class StageTask:
    """A stage's pure function as a Prefect task, called from a flow like the function itself."""

    def __init__(self, stage: Stage, fn: Callable[..., ArtifactRef], select: Callable[[Any], Any] | None = None, retries: int = 0):
        """`select` picks the stage's config slice from the whole PipelineConfig, so flows pass the
        whole config and each stage (and its cache key, and its Prefect inputs) sees only its slice."""
        self.stage, self.fn, self.select = stage, fn, select
        self.task = task(name=stage.name, persist_result=True, result_serializer="json", retries=retries)(fn)

    def __call__(self, ctx: RunContext, config, **inputs: ArtifactRef) -> ArtifactRef:
        started = time.perf_counter()
        cfg = self.select(config) if self.select is not None else config
        configured = self.task.with_options(
            cache_policy=ArtifactCachePolicy(stage=self.stage, artifact_root=ctx.artifact_root),
            result_storage=prefect_records_dir(ctx.artifact_root),
        )
        state = configured(ctx, cfg, return_state=True, **inputs)
        ref: ArtifactRef = state.result()
        self._report(ctx, cfg, ref, state.is_completed() and state.name == "Cached", time.perf_counter() - started)
        return ref

    def _report(self, ctx: RunContext, cfg, ref: ArtifactRef, prefect_cached: bool, wall: float) -> None:
        pipeline = _pipeline.get()
        if prefect_cached:
            from w2s.stage import log_cached

            run_id = log_cached(ctx, self.stage, ref.key, cfg, ref)
            row = StageRow(self.stage.name, "hit", wall, ref.uri, run_id)
        else:
            outcome = last_outcome(self.stage.name, ref.key)
            row = StageRow(self.stage.name, outcome.cache if outcome else "remote", wall, ref.uri, outcome.mlflow_run_id if outcome else None)
        if pipeline is not None:
            pipeline.rows.append(row)
            if pipeline.until == self.stage.name:
                raise UntilReached(self.stage.name)


@contextmanager
def pipeline_run(ctx: RunContext, flow_name: str, params: dict[str, Any], until: str | None) -> Iterator[PipelineState]:
    """Parent MLflow run + summary rows for one flow run; ends quietly after the `until` stage."""
    from w2s.tracking import end_flow_run, start_flow_run

    flow_run_id, flow_run_url = _prefect_flow_run()
    ctx = ctx.model_copy(update={"flow_run_id": flow_run_id, "flow_run_url": flow_run_url})
    ctx = start_flow_run(ctx, flow_name, params)
    state = PipelineState(ctx=ctx, until=until)
    token = _pipeline.set(state)
    try:
        yield state
    except UntilReached:
        end_flow_run(ctx, "FINISHED")
    except BaseException:
        end_flow_run(ctx, "FAILED")
        raise
    else:
        end_flow_run(ctx, "FINISHED")
    finally:
        _pipeline.reset(token)


def _prefect_flow_run() -> tuple[str | None, str | None]:
    from prefect.context import FlowRunContext

    run_ctx = FlowRunContext.get()
    if run_ctx is None or run_ctx.flow_run is None:
        return None, None
    run_id = str(run_ctx.flow_run.id)
    ui = os.environ.get("PREFECT_UI_URL")
    return run_id, (f"{ui.rstrip('/')}/runs/flow-run/{run_id}" if ui else None)
