"""What a flow run shows in the Prefect UI beyond task states (the Prefect adapter's second module;
nothing outside w2s/orchestration/ imports Prefect):

* a progress artifact per long stage (sampling, scoring, training), updated while it runs;
* the report of a stage that declares `shows=` (the PGR report), as a markdown artifact (its figures
  inline when MLflow is a server that serves them);
* at the end, the stage table (stage, hit/miss, wall, artifact, MLflow run) as a table artifact and a
  link to the MLflow parent run (a markdown note with the `mlflow ui` command when MLflow is sqlite);
* the project's own loggers (w2s.*, tasks.*, flows.*) in the flow run's logs.

Publishing never fails a run: the UI is a view of the artifacts, not where they live.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from w2s.artifacts import ArtifactRef, store_for
from w2s.tracking import RunContext, run_url, served_artifact_url

log = logging.getLogger(__name__)
PROJECT_LOGGERS = ("w2s", "tasks", "flows")


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def _quietly(what: str):
    def wrap(fn):
        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (a view must not fail the run)
                log.debug("Prefect UI: %s not published: %s", what, exc)
                return None
        return guarded
    return wrap


def progress_listener(stage: str):
    """A w2s.progress listener keeping one progress artifact of the task run up to date."""
    created: dict[str, object] = {}

    @_quietly("progress")
    def listen(description: str, fraction: float) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        if "id" not in created:
            created["id"] = create_progress_artifact(progress=100 * fraction, key=artifact_key("progress", stage),
                                                     description=f"{stage}: {description}")
        else:
            update_progress_artifact(created["id"], progress=100 * fraction)

    return listen


def figure_links(markdown: str, ref: ArtifactRef, shown: str, ctx: RunContext | None = None, run_id: str | None = None) -> str:
    """Images in the report are files beside it, which the UI cannot serve. With an MLflow server
    they stay images, served by MLflow from the stage run's copy (the report stage logs each figure
    there); otherwise they become links to the artifact's files."""
    folder = ref.file(shown.rpartition("/")[0]) if "/" in shown else ref.uri

    def figure(m: re.Match) -> str:
        url = served_artifact_url(ctx, run_id, m.group(2).rsplit("/", 1)[-1]) if ctx is not None else None
        return f"![{m.group(1)}]({url})" if url else f"[figure: {m.group(1)}]({folder.rstrip('/')}/{m.group(2)})"

    return re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", figure, markdown)


@_quietly("report")
def publish_report(stage: str, ref: ArtifactRef, shown: str, ctx: RunContext, run_id: str | None = None) -> None:
    from prefect.artifacts import create_markdown_artifact

    store = store_for(ctx.artifact_root)
    with store.fs.open(store.remote_path(ref.stage, ref.key, shown), "r") as handle:
        text = handle.read()
    create_markdown_artifact(markdown=figure_links(text, ref, shown, ctx, run_id), key=artifact_key(stage),
                             description=f"{stage}: {ref.uri}/{shown}")


@_quietly("stage table")
def publish_run(rows, ctx: RunContext) -> None:
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    table = [{"stage": r.stage, "cache": r.cache, "wall_s": round(r.wall_s, 1), "artifact": r.uri,
              "mlflow_run": r.mlflow_run_id or ""} for r in rows]
    create_table_artifact(table=table, key="stage-table", description=f"{len(rows)} stages under {ctx.artifact_root}")
    url = run_url(ctx)
    if url:
        create_link_artifact(link=url, link_text="MLflow parent run", key="mlflow-run", description=f"experiment {ctx.experiment}")
    elif ctx.parent_run_id:
        create_markdown_artifact(key="mlflow-run", description=f"experiment {ctx.experiment}", markdown=(
            f"MLflow parent run `{ctx.parent_run_id}` (experiment `{ctx.experiment}`): "
            f"`mlflow ui --backend-store-uri {ctx.tracking_uri} --host 127.0.0.1`"))


@contextmanager
def project_logs_in_the_run() -> Iterator[None]:
    """The project's loggers at INFO into the flow run's logs (Prefect's API handler), for the
    duration of the run; records from threads outside a run context are dropped, not warned about."""
    from prefect.exceptions import MissingContextError
    from prefect.logging.handlers import APILogHandler

    class RunLogHandler(APILogHandler):
        def handleError(self, record):
            import sys

            if isinstance(sys.exc_info()[1], MissingContextError):
                return None
            return super().handleError(record)

    handler = RunLogHandler(level=logging.INFO)
    loggers = [logging.getLogger(name) for name in PROJECT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)
