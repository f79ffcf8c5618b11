"""The Prefect layer: stage tasks with an artifact-keyed cache policy, and the pipeline run context.

Prefect's default cache key includes the flow-run id and hashes `Path`s by their string, so it never
hits across runs. `StageTask` computes the artifact key once per call (stage, version, config slice,
input digests) and looks the artifact up once; `ArtifactCachePolicy` is a pure function returning
that precomputed key, so a second `w2s run` in a new process gets Prefect "Cached" states and runs
no stage body. When the artifact is missing or fails verification the task runs with
`refresh_cache`, so a stale record is overwritten, never trusted. Records are JSON (no pickle)
under `<artifact_root>/_prefect/`, and are only a marker: the reference a stage returns is always
the store's own lookup on the *current* root, so a moved or copied root reads its own files.
"""

from __future__ import annotations

import contextvars
import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from pydantic_core import to_jsonable_python

from w2s import faults
from w2s.artifacts import ArtifactRef, local_path_of, store_for
from w2s.config import OffloadConfig, OrchestrationConfig, PipelineConfig, RetryConfig
from w2s.config_base import json_finite
from w2s.stage import Stage, collect_outcomes, log_cached, planned_key
from w2s.tracking import RunContext

RECORD_PREFIX = "w2s"


_record_blocks: dict[str, Any] = {}


def prefect_records_dir(artifact_root: str):
    """Where Prefect keeps its cache records: on the artifact root itself, so any machine that
    reads the root sees them (a local folder, or for s3://… a RemoteFileSystem block, saved once
    per process because Prefect only persists to saved blocks; credentials stay in the
    environment, as for every other access to the root)."""
    local = local_path_of(artifact_root)
    if local is not None:
        return local.absolute() / "_prefect" / "results"
    if artifact_root not in _record_blocks:
        import hashlib

        from prefect.filesystems import RemoteFileSystem

        block = RemoteFileSystem(basepath=f"{artifact_root.rstrip('/')}/_prefect/results")
        block.save(f"w2s-records-{hashlib.sha256(artifact_root.encode()).hexdigest()[:12]}", overwrite=True)
        _record_blocks[artifact_root] = block
    return _record_blocks[artifact_root]


def artifact_inputs(inputs: dict[str, Any]) -> dict[str, ArtifactRef]:
    """The artifact inputs of a stage call; a dict of refs (the report's evaluations) flattens to
    `name.label`, exactly as the stage passes it to `execute`, so both compute the same key."""
    found: dict[str, ArtifactRef] = {}
    for name, value in inputs.items():
        if isinstance(value, ArtifactRef):
            found[name] = value
        elif isinstance(value, dict):
            found |= {f"{name}.{label}": ref for label, ref in sorted(value.items()) if isinstance(ref, ArtifactRef)}
    return found


@dataclass
class ArtifactCachePolicy(CachePolicy):
    """Pure: the record name of a key the caller computed (no hashing, no I/O, no deletion)."""

    record: str = ""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        return self.record


def record_name(stage: Stage, key: str) -> str:
    return f"{RECORD_PREFIX}-{stage.name}-{key}"


def _with_faults(name: str, fn: Callable[..., ArtifactRef]) -> Callable[..., ArtifactRef]:
    """Fault point `<stage>:0` at the start of every attempt (tests: W2S_FAIL_ONCE=<stage>:0)."""

    @functools.wraps(fn)
    def attempt(*args: Any, **kwargs: Any) -> ArtifactRef:
        faults.checkpoint(name, 0)
        return fn(*args, **kwargs)

    return attempt


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


def orchestration_of(config: Any) -> OrchestrationConfig:
    """The whole PipelineConfig carries the retry/offload settings; a bare slice gets the defaults."""
    return config.orchestration if isinstance(config, PipelineConfig) else OrchestrationConfig()


def retry_delays(retry: RetryConfig) -> list[float]:
    """Exponential backoff: delay, delay·backoff, delay·backoff², ... (one entry per retry)."""
    return [retry.delay_s * retry.backoff**attempt for attempt in range(retry.retries)]


STAGE_TASKS: dict[str, StageTask] = {}


def all_stage_tasks() -> dict[str, StageTask]:
    """Every stage task of every flow, by name (importing the flows registers them; the
    evaluation stages exist per policy and are made here)."""
    import flows.baselines  # noqa: F401
    import flows.eve  # noqa: F401
    import flows.w2s_classification  # noqa: F401
    import flows.w2s_theory  # noqa: F401
    from tasks.evaluate import evaluate_task
    from w2s.stage_names import ALL_STAGES

    for name in ALL_STAGES:
        if name.startswith("evaluate_"):
            evaluate_task(name.removeprefix("evaluate_"))
    return dict(STAGE_TASKS)


class StageTask:
    """A stage's pure function as a Prefect task, called from a flow like the function itself."""

    def __init__(self, stage: Stage, fn: Callable[..., ArtifactRef], select: Callable[[Any], Any] | None = None):
        """`select` picks the stage's config slice from the whole PipelineConfig, so flows pass the
        whole config and each stage (and its cache key, and its Prefect inputs) sees only its slice.
        Retries come from `config.orchestration` at call time (a failed attempt writes no manifest,
        so a retry never sees a half-written artifact: it rewrites or resumes from whole files)."""
        self.stage, self.fn, self.select = stage, fn, select
        self.task = task(name=stage.name, persist_result=True, result_serializer="json")(_with_faults(stage.name, fn))
        STAGE_TASKS[stage.name] = self

    def __call__(self, ctx: RunContext, config, **inputs: ArtifactRef) -> ArtifactRef:
        started = time.perf_counter()
        cfg = self.select(config) if self.select is not None else config
        orchestration = orchestration_of(config)
        store = store_for(ctx.artifact_root)
        key = self.stage.key(cfg, artifact_inputs(inputs))  # once per call
        found = store.lookup(self.stage.name, key)
        offload = orchestration.offload
        if found is None and offload.enabled and self.stage.name in offload.stages:
            ref = offload_stage(offload, self.stage, key, ctx, config, inputs)
            self._report(StageRow(self.stage.name, "remote", time.perf_counter() - started, ref.uri, None))
            return ref
        retry = orchestration.retry_for(self.stage.name)
        configured = self.task.with_options(
            cache_policy=ArtifactCachePolicy(record=record_name(self.stage, key)),
            refresh_cache=found is None,
            result_storage=prefect_records_dir(ctx.artifact_root),
            retries=retry.retries,
            retry_delay_seconds=retry_delays(retry),
        )
        with collect_outcomes() as outcomes, planned_key(self.stage.name, key):
            state = configured(ctx, cfg, return_state=True, **inputs)
            state.result()  # raises the stage's error
        wall = time.perf_counter() - started
        if outcomes:  # the body ran: it computed, or found the artifact another run had just made
            last = outcomes[-1]
            ref = store.lookup(self.stage.name, key)
            self._report(StageRow(self.stage.name, last.cache, wall, last.uri, last.mlflow_run_id))
        else:  # Prefect "Cached": the reference is the one verified above, on this root
            ref = found
            if ref is None:
                raise RuntimeError(f"{self.stage.name}: Prefect reported Cached but {key} is not in {ctx.artifact_root}")
            self._report(StageRow(self.stage.name, "hit", wall, ref.uri, log_cached(ctx, self.stage, key, cfg, ref)))
        if ref is None:
            raise RuntimeError(f"{self.stage.name}: computed {key} but it fails verification in {ctx.artifact_root}")
        return ref

    def _report(self, row: StageRow) -> None:
        pipeline = _pipeline.get()
        if pipeline is not None:
            pipeline.rows.append(row)
            if pipeline.until == self.stage.name:
                raise UntilReached(self.stage.name)


@contextmanager
def pipeline_run(ctx: RunContext, flow_name: str, params: dict[str, Any], until: str | None) -> Iterator[PipelineState]:
    """Parent MLflow run + summary rows for one flow run; ends quietly after the `until` stage."""
    from w2s.tracking import end_flow_run, start_flow_run

    flow_run_id, flow_run_url = _prefect_flow_run()
    ctx = ctx.model_copy(update={"flow_run_id": flow_run_id, "flow_run_url": flow_run_url, **infrastructure_overrides()})
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


# ------------------------------------------------------------------------------ deployments, pools
ENV_ARTIFACT_ROOT = "W2S_ARTIFACT_ROOT"
ENV_TRACKING_URI = "W2S_TRACKING_URI"
EMBEDDED_DEFAULT = Path(__file__).resolve().parents[1] / "pipeline_config.yaml"


def embedded_default() -> PipelineConfig:
    """The flow's parameter default: pipeline_config.yaml where the repository is (a checkout, the
    images), so the Prefect UI's run form starts from it; the schema defaults elsewhere."""
    from w2s.config_io import ConfigError, load_config

    if not EMBEDDED_DEFAULT.exists():
        return PipelineConfig()
    try:
        return load_config(EMBEDDED_DEFAULT)
    except ConfigError as exc:  # a broken repo default must not break `w2s run --config other.yaml`
        import logging

        logging.getLogger(__name__).warning("the flow's default form falls back to the schema defaults: %s", exc)
        return PipelineConfig()


def infrastructure_overrides() -> dict[str, str]:
    """A work pool's job variables may say where artifacts and MLflow live on that infrastructure
    (deployments/prefect.yaml: env W2S_ARTIFACT_ROOT, W2S_TRACKING_URI); they win over the form,
    whose defaults describe a laptop. Neither is part of any cache key."""
    found: dict[str, str] = {}
    root = os.environ.get(ENV_ARTIFACT_ROOT)
    if root:
        local = local_path_of(root)
        found["artifact_root"] = str(local.expanduser().absolute()) if local is not None else root
        if not os.environ.get(ENV_TRACKING_URI) and local is not None:
            found["tracking_uri"] = f"sqlite:///{local.expanduser().absolute() / 'mlflow.db'}"
    if os.environ.get(ENV_TRACKING_URI):
        found["tracking_uri"] = os.environ[ENV_TRACKING_URI]
    return found


def json_parameters(value: Any) -> Any:
    """Flow-run parameters as strict JSON: ±inf / nan become the strings "Infinity", "-Infinity",
    "NaN", which pydantic reads back as floats (plain JSON has no such numbers, and Prefect's
    serialiser would turn them into null, which then fails validation, e.g. sweep.beta_over_lambda)."""
    return json_finite(to_jsonable_python(value))


def offload_stage(offload: OffloadConfig, stage: Stage, key: str, ctx: RunContext, config: PipelineConfig, inputs: dict[str, ArtifactRef]) -> ArtifactRef:
    """Runs one stage as a flow run of `offload.deployment` (deployments/prefect.yaml: eve-stage-gpu)
    and waits for it. The artifact store is the hand-over: both sides compute the same key, so the
    result is read back from the shared artifact root, verified, not passed through Prefect."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(
        name=offload.deployment,
        parameters=json_parameters({"stage": stage.name, "config": config, "ctx": ctx, "inputs": inputs}),
        timeout=offload.timeout_s,
        as_subflow=True,
    )
    if flow_run.state is None or not flow_run.state.is_completed():
        state = flow_run.state.name if flow_run.state else "unknown"
        raise RuntimeError(f"offloaded stage {stage.name}: flow run {flow_run.id} ended {state}")
    ref = store_for(ctx.artifact_root).lookup(stage.name, key)
    if ref is None:
        raise RuntimeError(f"offloaded stage {stage.name} completed but its artifact is not under {ctx.artifact_root} "
                           "(offload needs an artifact root both sides share, e.g. s3://)")
    return ref


@flow(name="eve-stage", log_prints=True)
def eve_stage(stage: str, config: PipelineConfig, ctx: RunContext, inputs: dict[str, ArtifactRef]) -> ArtifactRef:
    """One stage of any flow on its own (the target of offload): same task, retries and cache."""
    # A deployment loads this file by path, as a module of its own: the registry the stage tasks
    # filled is the one of the importable w2s.orchestration.
    from w2s.orchestration import all_stage_tasks

    registry = all_stage_tasks()
    if stage not in registry:
        raise ValueError(f"eve-stage: unknown stage {stage!r}; one of {', '.join(registry)}")
    local = config.model_copy(update={"orchestration": config.orchestration.model_copy(update={"offload": OffloadConfig()})})
    return registry[stage](ctx.model_copy(update=infrastructure_overrides()), local, **inputs)
