"""The Prefect layer: stage tasks whose cache is the artifact store, and the pipeline run context.

Prefect's default cache key includes the flow-run id and hashes `Path`s by their string, so it never
hits across runs; and a Prefect cache record names its own serializer (pickle, or JSON that
imports classes), so a record read back is code that whoever can write the records' folder
chooses. Prefect therefore keeps no records here and reads none: `run_as_task` computes the
artifact key once per call (stage, version, config slice, input digests) and looks the artifact up
once, in the store, whose manifests and digests are plain JSON read by our own schema. A verified
artifact becomes a task run that ends `Cached` with the store's reference and runs no stage body
(so a second `w2s run`, on any machine that reads the root, shows every finished stage Cached);
anything else runs the stage, which recomputes what fails verification, never trusting it.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed
from prefect.utilities.engine import link_state_to_task_run_result
from pydantic_core import to_jsonable_python

from w2s import faults
from w2s.artifacts import ArtifactRef, local_path_of, store_for
from w2s.config import OffloadConfig, OrchestrationConfig, PipelineConfig, RetryConfig
from w2s.config.base import json_finite
from w2s.console import STAGES_LOGGER
from w2s.stage import Stage, artifact_inputs, check_stage_names, collect_outcomes, forced, log_cached, planned_key, use_runner
from w2s.orchestration.ui import progress_listener, project_logs_in_the_run, publish_report, publish_run
from w2s.progress import listening
from w2s.tracking import RunContext

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
    config: Any = None  # what the run computes: the form's config, or the preset it named


_pipeline: contextvars.ContextVar[PipelineState | None] = contextvars.ContextVar("w2s_pipeline", default=None)


def orchestration_of(config: Any) -> OrchestrationConfig:
    """The whole PipelineConfig carries the retry/offload settings; a bare slice gets the defaults."""
    return config.orchestration if isinstance(config, PipelineConfig) else OrchestrationConfig()


def retry_delays(retry: RetryConfig) -> list[float]:
    """Exponential backoff: delay, delay·backoff, delay·backoff², ... (one entry per retry)."""
    return [retry.delay_s * retry.backoff**attempt for attempt in range(retry.retries)]


_tasks: dict[tuple[str, int], Any] = {}
NO_RECORDS = {"cache_policy": NO_CACHE, "persist_result": False}  # the store is the cache (module docstring)


def _task_of(declared: Stage):
    """The Prefect task that computes a stage, made once: the stage's own signature, so the UI shows its inputs."""
    memo = (declared.name, id(declared.fn))
    if memo not in _tasks:
        @functools.wraps(declared.fn)
        def attempt(ctx: RunContext, cfg: Any, **inputs: Any) -> ArtifactRef:
            faults.checkpoint(declared.name, 0)  # fault point `<stage>:0` at the start of every attempt
            return declared.run(ctx, cfg, **inputs)

        _tasks[memo] = task(name=declared.name, **NO_RECORDS)(attempt)
    return _tasks[memo]


def _cached_task_of(declared: Stage, found: ArtifactRef):
    """A task run of the stage that ends `Cached` with `found`, the store's verified reference."""
    @functools.wraps(declared.fn)
    def cached(ctx: RunContext, cfg: Any, **inputs: Any):
        return Completed(name="Cached", data=found)

    return task(name=declared.name, **NO_RECORDS)(cached)


def run_as_task(declared: Stage, ctx: RunContext, config: Any, inputs: dict[str, Any]) -> ArtifactRef:
    """The runner a flow run installs: the stage as a Prefect task (Cached when its artifact
    verifies), retried per `config.orchestration`, offloaded when configured. A failed attempt
    writes no manifest, so a retry never sees a half-written artifact: it rewrites or resumes
    from whole, sealed files."""
    started = time.perf_counter()
    cfg = declared.slice_of(config)
    orchestration = orchestration_of(config)
    store = store_for(ctx.artifact_root)
    refs = artifact_inputs(inputs)
    key = declared.key(cfg, refs)  # once per call
    found = None if forced(declared, refs) else store.lookup(declared.name, key)
    offload = orchestration.offload
    if found is None and offload.enabled and declared.name in offload.stages:
        ref = offload_stage(offload, declared, key, ctx, config, inputs)
        _report(declared, StageRow(declared.name, "remote", time.perf_counter() - started, ref.uri, None))
        return ref
    retry = orchestration.retry_for(declared.name)
    if found is None:
        configured = _task_of(declared).with_options(retries=retry.retries, retry_delay_seconds=retry_delays(retry))
    else:
        configured = _cached_task_of(declared, found)
    with collect_outcomes() as outcomes, planned_key(declared.name, key), listening(progress_listener(declared.name)):
        state = configured(ctx, cfg, return_state=True, **inputs)
        state.result()  # raises the stage's error
    wall = time.perf_counter() - started
    if outcomes:  # the body ran: it computed, or found the artifact another run had just made
        last = outcomes[-1]
        ref = store.lookup(declared.name, key)
        row = StageRow(declared.name, last.cache, wall, last.uri, last.mlflow_run_id)
    else:  # Cached: the reference verified above, on this root
        ref = found
        row = StageRow(declared.name, "hit", wall, ref.uri, log_cached(ctx, declared, key, cfg, ref, refs))
    _report(declared, row)
    if ref is None:
        raise RuntimeError(f"{declared.name}: computed {key} but it fails verification in {ctx.artifact_root}")
    # Prefect draws an edge where a task's argument is an object it knows as another task's result;
    # this reference is the store's fresh lookup, not the object the task returned, so say it is
    link_state_to_task_run_result(state, ref)
    if declared.shows and ctx.flow_run_id:
        publish_report(declared.name, ref, declared.shows, ctx, row.mlflow_run_id)
    return ref


def _report(declared: Stage, row: StageRow) -> None:
    pipeline = _pipeline.get()
    if pipeline is not None:
        pipeline.rows.append(row)
        logging.getLogger(STAGES_LOGGER).info("%-24s %-6s %7.1fs", row.stage, row.cache, row.wall_s)
        if pipeline.until == declared.name:
            raise UntilReached(declared.name)


# ------------------------------------------------------------------------------ tracing a flow
_tracing: contextvars.ContextVar[bool] = contextvars.ContextVar("w2s_tracing", default=False)


def flow_stages(flow_fn: Any, config: Any) -> tuple[str, ...]:
    """The stages a flow calls on `config`, in call order, without computing anything: its body
    runs with a runner that records each stage and hands back a placeholder artifact (flows hold
    no logic of their own, so the calls are the DAG). What `--until` and `w2s stages` read."""
    called: list[str] = []

    def record(declared: Stage, ctx: RunContext, config: Any, inputs: dict[str, Any]) -> ArtifactRef:
        called.append(declared.name)
        return ArtifactRef(stage=declared.name, key="traced", uri=f"traced://{declared.name}", digest="0" * 64)

    trace_flow(flow_fn, config, record)
    return tuple(dict.fromkeys(called))


def trace_flow(flow_fn: Any, config: Any, runner) -> None:
    """Runs a flow's body outside Prefect and MLflow, every stage call going to `runner`
    (the stage tracer above; w2s/plan.py's planner)."""
    token = _tracing.set(True)
    try:
        with use_runner(runner):
            getattr(flow_fn, "fn", flow_fn)(config=config)
    finally:
        _tracing.reset(token)


@contextmanager
def pipeline_run(config: Any, flow_name: str, until: str | None = None, ctx: RunContext | None = None,
                 preset: str | None = None) -> Iterator[PipelineState]:
    """One flow run: its stages run as Prefect tasks under a parent MLflow run (the flow's config
    as its params), with summary rows; ends quietly after the `until` stage. A `preset` replaces
    the form's config (w2s/config/loading.py pipeline_config_of); the flow body reads `state.config`. Misnamed stages
    in `config.orchestration` fail here, before any compute."""
    from w2s.config.loading import pipeline_config_of
    from w2s.generation import keep_engines_warm
    from w2s.tracking import end_flow_run, log_headline, log_stage_table, start_flow_run

    if preset is not None:  # the form's default (a YAML load) only when it is compared
        config = pipeline_config_of(config, preset, embedded_default())
    ctx = ctx or config.run_context()
    if _tracing.get():  # flow_stages: no tracking, the tracer's runner stays
        yield PipelineState(ctx=ctx, until=None, config=config)
        return
    if isinstance(config, PipelineConfig):
        from w2s.config.loading import check_machine

        check_stage_names(config.orchestration)
        check_machine(config)  # a pod with fewer GPUs than ranks fails here, in one line, before any stage
    params = config.model_dump(mode="json")
    flow_run_id, flow_run_url = _prefect_flow_run()
    ctx = ctx.model_copy(update={"flow_run_id": flow_run_id, "flow_run_url": flow_run_url, **infrastructure_overrides()})
    ctx = start_flow_run(ctx, flow_name, params)
    state = PipelineState(ctx=ctx, until=until, config=config)
    token = _pipeline.set(state)
    status = "FAILED"
    try:
        with use_runner(run_as_task), project_logs_in_the_run(), keep_engines_warm():  # stages hand on running vLLM engines
            yield state
        log_headline(ctx, report_metrics(state.rows, ctx))
        status = "FINISHED"
    except UntilReached:
        status = "FINISHED"
    finally:
        log_stage_table(ctx, [asdict(row) for row in state.rows])
        end_flow_run(ctx, status)
        _pipeline.reset(token)
        if flow_run_id:
            publish_run(state.rows, ctx)


def report_metrics(rows: list[StageRow], ctx: RunContext) -> dict[str, float]:
    """The metrics of the run's report stage (hit or computed), read from its manifest."""
    row = next((r for r in rows if r.stage == "report"), None)
    manifest = store_for(ctx.artifact_root).read_manifest("report", row.uri.rstrip("/").rsplit("/", 1)[1]) if row else None
    return dict(manifest.metrics) if manifest else {}


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


def embedded_default() -> PipelineConfig:
    """The flow's parameter default: pipeline_config.yaml (the checkout's, or the copy an installed
    w2s ships), so the Prefect UI's run form starts from it."""
    from w2s.config.loading import ConfigError, load_config
    from w2s.config.presets import EMBEDDED_DEFAULT

    if not EMBEDDED_DEFAULT.exists():
        return PipelineConfig()
    try:
        return load_config(EMBEDDED_DEFAULT)
    except ConfigError as exc:  # a broken repo default must not break `w2s run --config other.yaml`
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
