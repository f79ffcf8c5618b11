"""MLflow tracking: one parent run per flow run (the config as params, the report's headline as
metrics, the stage table as `stages.json`), one nested run per stage that computes; a stage whose
artifact is reused links to the run that computed it (w2s/stage.py log_cached).

Runs are created with an explicit MlflowClient (no global active-run stack), so stages in worker
threads or other processes attach to the right parent by id. The default backend is
`sqlite:///<artifact_root>/mlflow.db` with artifacts under `<artifact_root>/mlflow-artifacts`;
without that explicit location MLflow would write ./mlruns into the working directory.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from w2s.artifacts import ArtifactRef, local_path_of

TAG_STAGE = "w2s.stage"
TAG_CACHE = "w2s.cache"
TAG_KEY = "w2s.key"
TAG_FLOW_RUN = "prefect.flow_run_id"
TAG_FLOW_URL = "prefect.flow_run_url"
TAG_PARENT = "mlflow.parentRunId"
STAGE_TABLE = "stages.json"


class RunContext(BaseModel):
    """Where a flow run keeps things; passed to every stage (not part of any cache key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    artifact_root: str
    tracking_uri: str
    experiment: str
    parent_run_id: str | None = None
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"  # run.device: where forwards outside DeepSpeed/vLLM run (w2s/devices.py)


_initialised: set[str] = set()
# MLflow's UI opens an experiment in its GenAI (traces) view unless the experiment says otherwise
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_VIEW = "workflowType=machine_learning"


def is_server(tracking_uri: str) -> bool:
    """An MLflow tracking *server* (http), rather than a store this process opens itself."""
    return tracking_uri.startswith(("http://", "https://"))


def _client(tracking_uri: str):
    """An MlflowClient; a sqlite database is created/migrated by one process at a time (two runs
    starting together on a fresh root would otherwise both migrate it and leave it half-done)."""
    from mlflow.tracking import MlflowClient

    # MLflow prints "View run … at: <url>" for every run it ends on a server: one line per stage
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

    if tracking_uri.startswith("sqlite:///") and tracking_uri not in _initialised:
        from w2s.locks import exclusive

        db = Path(tracking_uri[len("sqlite:///"):])
        with exclusive(db.with_name(f".{db.name}.init.lock")):  # opened O_NOFOLLOW: a planted link is refused
            client = MlflowClient(tracking_uri=tracking_uri)  # builds the store: creates or migrates the schema
            client.search_experiments(max_results=1)
        _initialised.add(tracking_uri)
        return client
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(ctx: RunContext) -> str:
    client = _client(ctx.tracking_uri)
    location = artifact_location(ctx)
    found = client.get_experiment_by_name(ctx.experiment)
    if found is not None:
        for key, value in EXPERIMENT_KIND.items():
            if key not in found.tags:  # made before w2s tagged its experiments
                client.set_experiment_tag(found.experiment_id, key, value)
        _follow_a_moved_root(ctx, found.artifact_location, location)
        return found.experiment_id
    try:
        return client.create_experiment(ctx.experiment, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:  # created concurrently by another process
        return client.get_experiment_by_name(ctx.experiment).experiment_id


def _follow_a_moved_root(ctx: RunContext, stored: str, location: str | None) -> None:
    """A root moved or copied together with its mlflow.db still names the old root's
    mlflow-artifacts, so its new runs would write there (recreating a moved root's old path, or
    into the original of a copy). When the database is the current root's own, the experiment's
    and its runs' artifact paths are moved to this root (MLflow has no API to change them)."""
    root = local_path_of(ctx.artifact_root)
    if location is None or stored == location or root is None or not ctx.tracking_uri.startswith("sqlite:///"):
        return
    db = Path(ctx.tracking_uri[len("sqlite:///"):])
    if db.resolve().parent != root.resolve() or not (stored.startswith("file:") and stored.endswith("/mlflow-artifacts")):
        return  # a database shared by several roots keeps the location its experiment was made with
    import sqlite3

    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?", (location, stored))
        connection.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE substr(artifact_uri, 1, ?) = ?",
                           (location, len(stored) + 1, len(stored) + 1, stored + "/"))
    connection.close()
    logging.getLogger(__name__).info("MLflow: the root moved from %s; its experiments and runs now point at %s", stored, location)


# artifact-root schemes MLflow can store artifacts under itself
MLFLOW_SCHEMES = ("s3", "gs", "wasbs", "abfss", "hdfs", "sftp", "ftp")


def artifact_location(ctx: RunContext) -> str | None:
    """Where the experiment's MLflow artifacts go: beside the stage artifacts when MLflow can write
    there, else beside a local sqlite backend; never MLflow's default ./mlruns in the working dir.
    With a tracking *server* and a local root: the server's own store (None; `mlflow server`
    proxies artifact uploads by default), since a path on the client's disk is one that colleagues
    reading the server cannot open."""
    local = local_path_of(ctx.artifact_root)
    if local is not None and is_server(ctx.tracking_uri):
        return None
    if local is not None:
        return (local.absolute() / "mlflow-artifacts").as_uri()
    if ctx.artifact_root.split("://", 1)[0] in MLFLOW_SCHEMES:
        return f"{ctx.artifact_root.rstrip('/')}/mlflow-artifacts"
    if ctx.tracking_uri.startswith("sqlite:///"):
        return (Path(ctx.tracking_uri[len("sqlite:///"):]).absolute().parent / "mlflow-artifacts").as_uri()
    return None


def start_flow_run(ctx: RunContext, flow_name: str, params: Mapping[str, Any], tags: Mapping[str, str] = {}) -> RunContext:
    client = _client(ctx.tracking_uri)
    run_tags = {"w2s.flow": flow_name, **dict(tags)}
    if ctx.flow_run_id:
        run_tags[TAG_FLOW_RUN] = ctx.flow_run_id
    if ctx.flow_run_url:
        run_tags[TAG_FLOW_URL] = ctx.flow_run_url
    run = client.create_run(experiment_id(ctx), tags=run_tags, run_name=f"{flow_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    _log_params(client, run.info.run_id, params)
    return ctx.model_copy(update={"parent_run_id": run.info.run_id})


def run_url(ctx: RunContext) -> str | None:
    """The MLflow UI page of the flow's parent run when MLflow is a server."""
    if not ctx.parent_run_id or not is_server(ctx.tracking_uri):
        return None
    return f"{ctx.tracking_uri.rstrip('/')}/#/experiments/{experiment_id(ctx)}/runs/{ctx.parent_run_id}?{UI_VIEW}"


def served_artifact_url(ctx: RunContext, run_id: str | None, path: str) -> str | None:
    """A URL at which an MLflow *server* serves file `path` of run `run_id` (with its content type)."""
    if not run_id or not is_server(ctx.tracking_uri):
        return None
    from urllib.parse import urlencode

    return f"{ctx.tracking_uri.rstrip('/')}/get-artifact?{urlencode({'path': path, 'run_uuid': run_id})}"


def log_headline(ctx: RunContext, metrics: Mapping[str, float]) -> None:
    """The flow's results (the report's pgr/, win_rate/, kl/ per policy) on its parent run, where
    MLflow's runs table and compare view put them beside the params (β/λ, seed, …) of every run."""
    from mlflow.entities import Metric

    if ctx.parent_run_id and metrics:
        now = int(time.time() * 1000)
        _client(ctx.tracking_uri).log_batch(ctx.parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def log_stage_table(ctx: RunContext, rows: list[Mapping[str, Any]]) -> None:
    """The flow's stages on its parent run (`stages.json`: stage, cache, wall_s, artifact, and the
    run that computed each artifact, this flow's or an earlier one's): one summary, where a
    reused stage no longer adds a run of its own."""
    if not (ctx.parent_run_id and rows):
        return
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    try:
        StageRun(_client(ctx.tracking_uri), ctx.parent_run_id).log_table(columns, STAGE_TABLE)
    except Exception as exc:  # a summary: never what fails (or hides why) a run
        logging.getLogger(__name__).warning("MLflow: the stage table was not logged (%s)", str(exc).splitlines()[0][:200])


def end_flow_run(ctx: RunContext, status: str = "FINISHED") -> None:
    if ctx.parent_run_id:
        _client(ctx.tracking_uri).set_terminated(ctx.parent_run_id, status=status)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def _log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in flatten(params).items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


class StageRun:
    """A nested MLflow run for one stage; what the stage body logs goes here."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / name
            target.write_text(text)
            self.log_artifact(target)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_table(self, columns: Mapping[str, Any], name: str) -> None:
        """A table MLflow's UI shows under the run's evaluation view (e.g. each answer and its reward)."""
        import pandas as pd

        self.client.log_table(self.run_id, data=pd.DataFrame(dict(columns)), artifact_file=name)


def log_dataset_inputs(client, run_id: str, inputs: Mapping[str, ArtifactRef]) -> None:
    """The stage's input artifacts as MLflow dataset inputs, so the lineage shows in the dataset view:
    name = producing stage, source = artifact URI, digest = the manifest digest (MLflow caps a
    dataset digest at 36 characters: its first 36 hex digits; the whole one is in the profile), context
    = the input's parameter name."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    datasets = [DatasetInput(Dataset(name=ref.stage, digest=ref.digest[:36], source_type="w2s-artifact",
                                     source=json.dumps({"uri": ref.uri}),
                                     profile=json.dumps({"digest": ref.digest, "rows": ref.rows, "key": ref.key})),
                             tags=[InputTag("mlflow.data.context", name)])
                for name, ref in sorted(inputs.items())]
    if datasets:
        client.log_inputs(run_id, datasets=datasets)


@contextmanager
def system_metrics(ctx: RunContext, run_id: str, interval_s: float = 5.0) -> Iterator[None]:
    """CPU, memory, disk, network (and GPU where pynvml finds one) as `system/*` metrics of the run,
    sampled every `interval_s` (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides) while a stage computes."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop lines per stage
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=ctx.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def existing_run(ctx: RunContext, run_id: str | None) -> StageRun | None:
    """A handle on run `run_id` if this tracking store holds it (not deleted), else None."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    client = _client(ctx.tracking_uri)
    try:
        found = client.get_run(run_id)
    except MlflowException:
        return None
    return StageRun(client, run_id) if found.info.lifecycle_stage == "active" else None


@contextmanager
def stage_run(ctx: RunContext, stage: str, key: str, params: Mapping[str, Any], cache: str,
              inputs: Mapping[str, ArtifactRef] = {}) -> Iterator[StageRun]:
    """Opens a nested run under the flow's parent run, its input artifacts logged as datasets;
    marks it FAILED if the body raises."""
    client = _client(ctx.tracking_uri)
    tags = {TAG_STAGE: stage, TAG_CACHE: cache, TAG_KEY: key}
    if ctx.parent_run_id:
        tags[TAG_PARENT] = ctx.parent_run_id
    if ctx.flow_run_id:
        tags[TAG_FLOW_RUN] = ctx.flow_run_id
    run = client.create_run(experiment_id(ctx), tags=tags, run_name=stage)
    _log_params(client, run.info.run_id, params)
    log_dataset_inputs(client, run.info.run_id, inputs)
    handle = StageRun(client, run.info.run_id)
    try:
        yield handle
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def log_artifact_summary(run: StageRun, ref: ArtifactRef, manifest_path: Path | None, metrics: Mapping[str, float]) -> None:
    run.set_tags({"w2s.uri": ref.uri, "w2s.digest": ref.digest})
    if metrics:
        run.log_metrics(metrics)
    if manifest_path is not None and manifest_path.exists():
        run.log_artifact(manifest_path)
