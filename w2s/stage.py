"""A stage is a declared node; running one against the artifact store needs no Prefect.

    @stage(version=2, reads=lambda config: config.scoring)
    def scoring(ctx, cfg: ScoringConfig, samples: ArtifactRef, weak: ArtifactRef, weak_ref: ArtifactRef) -> Body:
        def body(writer, run) -> StageOutput: ...
        return body

The declaration states everything once: the name (the function's), the version, the config slice it
reads and its artifact inputs (the parameters after `cfg`). It goes into one registry (`REGISTRY`,
filled by importing `tasks`), from which stage lists, `--until`, offload and retry names derive.

`execute` is the whole cache contract in one place: compute the key from (stage name, stage version,
config slice, input digests); reuse a verified artifact under that key; otherwise run the body in a
nested MLflow run, write its files, and write the manifest last. A body that raises leaves no
manifest, so nothing failed or partial is ever reused.

Calling a stage in a flow goes through the active *runner*: plain `execute` by default; the Prefect
adapter (w2s/orchestration/) installs its own for a flow run, so the core never imports Prefect.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from w2s.artifacts import ArtifactRef, cache_key, store_for
from w2s.content import content_digests
from w2s.writer import StageWriter
from w2s.registry import register_policy
from w2s.tracking import RunContext, StageRun, existing_run, log_artifact_summary, stage_run, system_metrics


@dataclass(frozen=True)
class Stage:
    name: str
    version: int  # bump when the stage's code changes what it writes: old artifacts stop matching
    # (ctx, cfg, **inputs) -> Body; None for a stage run only through `execute` (tests' stand-ins)
    fn: Callable[..., Body] | None = field(default=None, compare=False, repr=False)
    reads: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)  # whole config → slice
    inputs: tuple[str, ...] = ()  # artifact parameters (annotated ArtifactRef), in declaration order
    optional: frozenset[str] = frozenset()  # inputs with a default (None: not given)
    options: tuple[str, ...] = ()  # other keyword parameters, never keyed (tests pass an open engine)
    evaluated_as: str | None = None  # the policy label of its `evaluate_<label>` stage, if it is a policy
    shows: str | None = None  # a Markdown file of its artifact the Prefect UI shows (the report)

    def key(self, cfg: BaseModel, inputs: Mapping[str, ArtifactRef]) -> str:
        """sha256 of name, version, config slice, input artifact digests and the content digests
        of the local files/folders the slice names (w2s/content.py)."""
        return cache_key(self.name, self.version, config_slice(cfg), input_digests(inputs) | content_digests(cfg))

    def slice_of(self, config: Any) -> Any:
        return self.reads(config) if self.reads is not None else config

    def check_inputs(self, given: Mapping[str, Any]) -> None:
        unknown = sorted(set(given) - set(self.inputs) - set(self.options))
        missing = [name for name in self.inputs if name not in given and name not in self.optional]
        if unknown or missing:
            raise TypeError(f"stage {self.name}: inputs are ({', '.join(self.inputs)}); "
                            + (f"unknown {', '.join(unknown)}" if unknown else f"missing {', '.join(missing)}"))

    def run(self, ctx: RunContext, cfg: Any, *args: Any, **inputs: Any) -> ArtifactRef:
        """This stage on its own config slice, through `execute` (no Prefect); inputs by name or
        in declaration order."""
        if args:
            inputs = dict(list(inspect.signature(self.fn).bind(ctx, cfg, *args, **inputs).arguments.items())[2:])
        self.check_inputs(inputs)
        return execute(ctx, self, cfg, artifact_inputs(inputs), self.fn(ctx, cfg, **inputs))

    def __call__(self, ctx: RunContext, config: Any, **inputs: Any) -> ArtifactRef:
        """What a flow calls, with the whole config: the active runner runs it on its slice."""
        self.check_inputs(inputs)
        return _runner.get()(self, ctx, config, inputs)


# Every declared stage, by name. `import tasks` fills it with every stage of every flow.
REGISTRY: dict[str, Stage] = {}


def register(declared: Stage) -> Stage:
    known = REGISTRY.get(declared.name)
    if known is not None and known.fn is not None and declared.fn is not None and (
            (known.fn.__module__, known.fn.__qualname__) != (declared.fn.__module__, declared.fn.__qualname__)):
        raise ValueError(f"stage {declared.name!r} is declared twice: {known.fn.__module__} and {declared.fn.__module__}")
    REGISTRY[declared.name] = declared
    return declared


def stage(version: int, reads: Callable[[Any], Any] | None = None, evaluated_as: str | None = None, name: str | None = None,
          shows: str | None = None):
    """Declares the decorated `fn(ctx, cfg, **inputs) -> Body` as a registered stage (see the module doc).
    `name` is only for stages made in a loop (one evaluation per policy); otherwise it is fn's name."""

    def declare(fn: Callable[..., Body]) -> Stage:
        params = list(inspect.signature(fn).parameters.values())[2:]  # after (ctx, cfg)
        artifacts = [p for p in params if "ArtifactRef" in str(p.annotation)]
        return register(Stage(name or fn.__name__, version, fn, reads, tuple(p.name for p in artifacts),
                              frozenset(p.name for p in artifacts if p.default is not inspect.Parameter.empty),
                              tuple(p.name for p in params if p not in artifacts), evaluated_as, shows))

    return declare


def unknown_stages(names) -> list[str]:
    return [name for name in names if name not in REGISTRY]


def check_stage_names(orchestration) -> None:
    """`orchestration.stage_retry` and `offload.stages` name registered stages (typos fail before compute)."""
    for key, names in (("orchestration.stage_retry", list(orchestration.stage_retry)), ("orchestration.offload.stages", orchestration.offload.stages)):
        unknown = unknown_stages(names)
        if unknown:
            raise ValueError(f"{key}: unknown stage {unknown[0]!r} (stages: {', '.join(REGISTRY)})")


def artifact_inputs(inputs: Mapping[str, Any]) -> dict[str, ArtifactRef]:
    """The artifact inputs of a stage call as the key sees them; a dict of refs (the report's
    evaluations) flattens to `name.label`; None (an optional input not given) is left out."""
    found: dict[str, ArtifactRef] = {}
    for name, value in inputs.items():
        if isinstance(value, ArtifactRef):
            found[name] = value
        elif isinstance(value, dict):
            found |= {f"{name}.{label}": ref for label, ref in sorted(value.items()) if isinstance(ref, ArtifactRef)}
    return found


@dataclass
class StageOutput:
    """What a body returns besides its files: summary metrics and free-form info for the manifest."""

    metrics: Mapping[str, float]
    info: Mapping[str, Any] | None = None


log = logging.getLogger(__name__)

Body = Callable[[StageWriter, StageRun], StageOutput]
Runner = Callable[[Stage, RunContext, Any, Mapping[str, Any]], ArtifactRef]


def run_directly(declared: Stage, ctx: RunContext, config: Any, inputs: Mapping[str, Any]) -> ArtifactRef:
    return declared.run(ctx, declared.slice_of(config), **inputs)


_runner: contextvars.ContextVar[Runner] = contextvars.ContextVar("w2s_stage_runner", default=run_directly)


def config_slice(cfg: BaseModel) -> dict[str, Any]:
    # python mode keeps inf as a float (json mode would turn it into null and collide with None)
    return cfg.model_dump(mode="python")


def input_digests(inputs: Mapping[str, ArtifactRef]) -> dict[str, str]:
    return {name: ref.digest for name, ref in sorted(inputs.items())}


@dataclass(frozen=True)
class Outcome:
    stage: str
    key: str
    cache: str  # "hit" | "miss"
    wall_s: float
    uri: str
    mlflow_run_id: str | None


# Where `execute` tells its caller (the Prefect adapter's stage table) whether it computed: a
# context-local list the caller sets, so concurrent flows and threads never see each other's.
outcome_sink: contextvars.ContextVar[list[Outcome] | None] = contextvars.ContextVar("w2s_outcomes", default=None)


@contextmanager
def _bound(var: contextvars.ContextVar, value) -> Iterator:
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)


def use_runner(runner: Runner):
    """Stage calls inside the block go through `runner` (the Prefect adapter; the flow tracer)."""
    return _bound(_runner, runner)


def collect_outcomes():
    """The outcomes of every `execute` inside the block (this context only), in order."""
    return _bound(outcome_sink, [])


# The key the caller (the Prefect adapter) already computed for a stage call, so it is computed once.
_planned: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("w2s_planned_key", default=None)


def planned_key(stage: str, key: str):
    return _bound(_planned, (stage, key))


@dataclass
class Forcing:
    """`w2s run --force STAGE`: recompute the named stages, and every stage fed by a recomputed one,
    even where a verified artifact exists (the new one replaces it under the same key)."""

    stages: frozenset[str]
    recomputed: set[str] = field(default_factory=set)  # artifact URIs written in this run

    def applies(self, stage: Stage, inputs: Mapping[str, ArtifactRef]) -> bool:
        return stage.name in self.stages or any(ref.uri in self.recomputed for ref in inputs.values())


_forcing: contextvars.ContextVar[Forcing | None] = contextvars.ContextVar("w2s_forcing", default=None)


def forcing(stages) -> Any:
    """Stages run inside the block recompute as `Forcing` says."""
    return _bound(_forcing, Forcing(frozenset(stages)))


def forced(stage: Stage, inputs: Mapping[str, ArtifactRef]) -> bool:
    active = _forcing.get()
    return active is not None and active.applies(stage, inputs)


def _key(stage: Stage, cfg: BaseModel, inputs: Mapping[str, ArtifactRef]) -> str:
    planned = _planned.get()
    return planned[1] if planned is not None and planned[0] == stage.name else stage.key(cfg, inputs)


def _report(outcome: Outcome) -> None:
    sink = outcome_sink.get()
    if sink is not None:
        sink.append(outcome)


def execute(ctx: RunContext, stage: Stage, cfg: BaseModel, inputs: Mapping[str, ArtifactRef], body: Body) -> ArtifactRef:
    """The verified artifact of (stage, key), computed by `body` unless it exists. Two runs that
    need the same artifact at once: one computes under the store's lock, the other waits, then
    reuses it."""
    started = time.perf_counter()
    store = store_for(ctx.artifact_root)
    key = _key(stage, cfg, inputs)
    force = forced(stage, inputs)
    found = None if force else store.lookup(stage.name, key)  # verified; the store's memo makes a repeat a stat() only
    if found is None:
        waiting = lambda: log.info("%s: another run is computing %s; waiting to reuse it", stage.name, key)  # noqa: E731
        with store.lock(stage.name, key, on_wait=waiting):
            found = None if force else store.lookup(stage.name, key)
            if found is None:
                ref, run_id = _compute(ctx, store, stage, key, cfg, inputs, body, started, fresh=force)
                if force:
                    _forcing.get().recomputed.add(ref.uri)
                _report(Outcome(stage.name, key, "miss", time.perf_counter() - started, ref.uri, run_id))
                return ref
    run_id = log_cached(ctx, stage, key, cfg, found, inputs)
    _report(Outcome(stage.name, key, "hit", time.perf_counter() - started, found.uri, run_id))
    return found


def _compute(ctx, store, stage: Stage, key: str, cfg: BaseModel, inputs, body: Body, started: float,
             fresh: bool = False) -> tuple[ArtifactRef, str]:
    digests = input_digests(inputs)
    params = {"stage_version": stage.version, **config_slice(cfg), **{f"input.{k}": v for k, v in digests.items()}}
    with stage_run(ctx, stage.name, key, params, cache="miss", inputs=inputs) as run:
        writer = StageWriter(store, stage.name, key, stage.version, config_slice(cfg), digests, fresh=fresh)
        with system_metrics(ctx, run.run_id):
            output = body(writer, run)
        wall = time.perf_counter() - started
        computed_by = {"mlflow_run_id": run.run_id, "mlflow_parent_run_id": ctx.parent_run_id,
                       "prefect_flow_run_id": ctx.flow_run_id, "host": socket.gethostname(), "pid": os.getpid()}
        ref = writer.commit({**output.metrics, "wall_s": wall}, {**(output.info or {}), "computed_by": computed_by})
        log_artifact_summary(run, ref, writer.manifest_path(), {**output.metrics, "wall_s": wall})
        register_policy(ctx, stage, ref, run)
    if writer.remote:
        shutil.rmtree(writer.dir, ignore_errors=True)  # the remote holds it all now
    return ref, run.run_id


def log_cached(ctx: RunContext, stage: Stage, key: str, cfg: BaseModel, ref: ArtifactRef, inputs: Mapping[str, ArtifactRef]) -> str:
    """The MLflow run of a reused artifact: the run that computed it (its manifest names it), where
    this tracking store has it. A rerun adds no run per cached stage; the parent's stage table
    links each stage to that run, and a policy's aliases move to the version it registered. A root
    whose computing runs live in another store (copied, or tracked elsewhere) gets a nested run
    that says 'reused', so the flow still shows every stage."""
    manifest = store_for(ctx.artifact_root).read_manifest(stage.name, key)
    computed = existing_run(ctx, (manifest.info.get("computed_by") or {}).get("mlflow_run_id") if manifest else None)
    if computed is not None:
        register_policy(ctx, stage, ref, computed)
        return computed.run_id
    with stage_run(ctx, stage.name, key, {"stage_version": stage.version, **config_slice(cfg)}, cache="hit", inputs=inputs) as run:
        log_artifact_summary(run, ref, None, manifest.metrics if manifest else {})
        register_policy(ctx, stage, ref, run)
    return run.run_id
