"""Running one stage against the artifact store, without Prefect.

`execute` is the whole cache contract in one place: compute the key from (stage name, stage version,
config slice, input digests); reuse a verified artifact under that key; otherwise run the body in a
nested MLflow run, write its files, and write the manifest last. A body that raises leaves no
manifest, so nothing failed or partial is ever reused.
"""

from __future__ import annotations

import contextvars
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from w2s.artifacts import ArtifactRef, cache_key, store_for
from w2s.content import content_digests
from w2s.writer import StageWriter
from w2s.tracking import RunContext, StageRun, log_artifact_summary, stage_run


@dataclass(frozen=True)
class Stage:
    name: str
    version: int  # bump when the stage's code changes what it writes: old artifacts stop matching

    def key(self, cfg: BaseModel, inputs: Mapping[str, ArtifactRef]) -> str:
        """sha256 of name, version, config slice, input artifact digests and the content digests
        of the local files/folders the slice names (w2s/content.py)."""
        return cache_key(self.name, self.version, config_slice(cfg), input_digests(inputs) | content_digests(cfg))


@dataclass
class StageOutput:
    """What a body returns besides its files: summary metrics and free-form info for the manifest."""

    metrics: Mapping[str, float]
    info: Mapping[str, Any] | None = None


log = logging.getLogger(__name__)

Body = Callable[[StageWriter, StageRun], StageOutput]


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


def collect_outcomes():
    """The outcomes of every `execute` inside the block (this context only), in order."""
    return _bound(outcome_sink, [])


# The key the caller (the Prefect adapter) already computed for a stage call, so it is computed once.
_planned: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("w2s_planned_key", default=None)


def planned_key(stage: str, key: str):
    return _bound(_planned, (stage, key))


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
    found = store.lookup(stage.name, key)  # verified; the store's memo makes a repeat a stat() only
    if found is None:
        waiting = lambda: log.info("%s: another run is computing %s; waiting to reuse it", stage.name, key)  # noqa: E731
        with store.lock(stage.name, key, on_wait=waiting):
            found = store.lookup(stage.name, key)
            if found is None:
                ref, run_id = _compute(ctx, store, stage, key, cfg, inputs, body, started)
                _report(Outcome(stage.name, key, "miss", time.perf_counter() - started, ref.uri, run_id))
                return ref
    run_id = log_cached(ctx, stage, key, cfg, found)
    _report(Outcome(stage.name, key, "hit", time.perf_counter() - started, found.uri, run_id))
    return found


def _compute(ctx, store, stage: Stage, key: str, cfg: BaseModel, inputs, body: Body, started: float) -> tuple[ArtifactRef, str]:
    digests = input_digests(inputs)
    params = {"stage_version": stage.version, **config_slice(cfg), **{f"input.{k}": v for k, v in digests.items()}}
    with stage_run(ctx, stage.name, key, params, cache="miss") as run:
        writer = StageWriter(store, stage.name, key, stage.version, config_slice(cfg), digests)
        output = body(writer, run)
        wall = time.perf_counter() - started
        computed_by = {"mlflow_run_id": run.run_id, "mlflow_parent_run_id": ctx.parent_run_id,
                       "prefect_flow_run_id": ctx.flow_run_id, "host": socket.gethostname(), "pid": os.getpid()}
        ref = writer.commit({**output.metrics, "wall_s": wall}, {**(output.info or {}), "computed_by": computed_by})
        log_artifact_summary(run, ref, writer.manifest_path(), {**output.metrics, "wall_s": wall})
    if writer.remote:
        shutil.rmtree(writer.dir, ignore_errors=True)  # the remote holds it all now
    return ref, run.run_id


def log_cached(ctx: RunContext, stage: Stage, key: str, cfg: BaseModel, ref: ArtifactRef) -> str:
    """A nested run that says 'reused', so every flow run shows all its stages in MLflow."""
    with stage_run(ctx, stage.name, key, {"stage_version": stage.version, **config_slice(cfg)}, cache="hit") as run:
        manifest = store_for(ctx.artifact_root).read_manifest(stage.name, key)
        log_artifact_summary(run, ref, None, manifest.metrics if manifest else {})
    return run.run_id
