"""Running one stage against the artifact store, without Prefect.

`execute` is the whole cache contract in one place: compute the key from (stage name, stage version,
config slice, input digests); reuse a verified artifact under that key; otherwise run the body in a
nested MLflow run, write its files, and write the manifest last. A body that raises leaves no
manifest, so nothing failed or partial is ever reused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from w2s.artifacts import MANIFEST, ArtifactRef, ArtifactStore, StageWriter, cache_key
from w2s.tracking import RunContext, StageRun, log_artifact_summary, stage_run


@dataclass(frozen=True)
class Stage:
    name: str
    version: int  # bump when the stage's code changes what it writes: old artifacts stop matching

    def key(self, cfg: BaseModel, inputs: Mapping[str, ArtifactRef]) -> str:
        return cache_key(self.name, self.version, config_slice(cfg), input_digests(inputs))


@dataclass
class StageOutput:
    """What a body returns besides its files: summary metrics and free-form info for the manifest."""

    metrics: Mapping[str, float]
    info: Mapping[str, Any] | None = None


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


_outcomes: dict[tuple[str, str], Outcome] = {}
_outcomes_lock = threading.Lock()


def last_outcome(stage: str, key: str) -> Outcome | None:
    with _outcomes_lock:
        return _outcomes.get((stage, key))


def _record(outcome: Outcome) -> None:
    with _outcomes_lock:
        _outcomes[(outcome.stage, outcome.key)] = outcome


def execute(ctx: RunContext, stage: Stage, cfg: BaseModel, inputs: Mapping[str, ArtifactRef], body: Body) -> ArtifactRef:
    started = time.perf_counter()
    store = ArtifactStore(ctx.artifact_root)
    key = stage.key(cfg, inputs)
    found = store.lookup(stage.name, key)
    if found is not None:
        run_id = log_cached(ctx, stage, key, cfg, found)
        _record(Outcome(stage.name, key, "hit", time.perf_counter() - started, found.uri, run_id))
        return found
    params = {"stage_version": stage.version, **config_slice(cfg), **{f"input.{k}": v for k, v in input_digests(inputs).items()}}
    with stage_run(ctx, stage.name, key, params, cache="miss") as run:
        with store.writer(stage.name, key, stage.version, config_slice(cfg), input_digests(inputs)) as writer:
            output = body(writer, run)
            wall = time.perf_counter() - started
            ref = writer.commit({**output.metrics, "wall_s": wall}, output.info)
        log_artifact_summary(run, ref, writer.dir / MANIFEST, {**output.metrics, "wall_s": wall})
    _record(Outcome(stage.name, key, "miss", time.perf_counter() - started, ref.uri, run.run_id))
    return ref


def log_cached(ctx: RunContext, stage: Stage, key: str, cfg: BaseModel, ref: ArtifactRef) -> str:
    """A nested run that says 'reused', so every flow run shows all its stages in MLflow."""
    with stage_run(ctx, stage.name, key, {"stage_version": stage.version, **config_slice(cfg)}, cache="hit") as run:
        manifest = ArtifactStore(ctx.artifact_root).read_manifest(stage.name, key)
        log_artifact_summary(run, ref, None, manifest.metrics if manifest else {})
    return run.run_id
