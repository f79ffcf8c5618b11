"""Every policy a flow trains or evaluates (a stage declared `evaluated_as=...`: the weak teacher,
the EVE student, the strong ceiling, each baseline, the strong base) in MLflow's model registry.

The version points at the model folder inside the stage's artifact (`<artifact uri>/model`): a
reference, never a copy. One version per artifact (tag `w2s.key`); every run that computes or reuses
it moves two aliases onto it: `newest` (MLflow reserves `latest`), and the experiment's name (the
newest run of that config).

    mlflow models: w2s-eve, w2s-weak, w2s-strong_ceiling, …   aliases: newest, w2s-eve (experiment)

An MLflow *server* refuses a local path as a version source unless it lies inside the run's own
artifact folder (its guard against reading the server's disk). With a local artifact root and a
tracking server, the version's source is therefore `runs:/<stage run>/w2s-model`, a pointer file
(`pointer.json`: the model folder's URI and the artifact digest) logged to the stage run; the
model itself is still not copied, and the tag `w2s.uri` names it either way. With an `s3://` root
(a cluster) or the sqlite default (`make run`) the source is the model folder's URI itself.
"""

from __future__ import annotations

import logging
import re

from w2s.artifacts import ArtifactRef

log = logging.getLogger(__name__)
PREFIX = "w2s-"
NEWEST = "newest"
POINTER_DIR = "w2s-model"
_refused: set[str] = set()  # tracking URIs that refused a source: warned once per process


def model_name(label: str) -> str:
    return f"{PREFIX}{label}"


def alias_of(experiment: str) -> str:
    """An MLflow alias: letters, digits, '_' and '-' only; never v<digits> or `latest` (reserved)."""
    alias = re.sub(r"[^A-Za-z0-9_-]", "-", experiment).strip("-") or "experiment"
    return f"x-{alias}" if re.fullmatch(r"[vV]\d+", alias) or alias.lower() in ("latest", NEWEST) else alias


def register_policy(ctx, stage, ref: ArtifactRef, run) -> str | None:
    """The version number, or None (not a policy stage, or the registry failed: the run's tag says why)."""
    if not stage.evaluated_as:
        return None
    from mlflow.exceptions import MlflowException

    client, name = run.client, model_name(stage.evaluated_as)
    try:
        version = _version_for(client, name, ref, run.run_id)
        for alias in (NEWEST, alias_of(ctx.experiment)):
            client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        reason = str(exc).splitlines()[0][:300]
        run.set_tags({"w2s.registry": f"not registered: {reason}"})
        if ctx.tracking_uri not in _refused:
            _refused.add(ctx.tracking_uri)
            log.warning("model registry: %s not registered (%s)", name, reason)
        return None
    run.set_tags({"w2s.registry": f"{name} version {version}"})
    return version


def _version_for(client, name: str, ref: ArtifactRef, run_id: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="w2s policy; each version references a stage artifact's model/ folder")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc):
            raise
    for found in client.search_model_versions(f"name='{name}'"):
        if found.tags.get("w2s.key") == ref.key and found.tags.get("w2s.digest") == ref.digest:
            return found.version
    tags = {"w2s.key": ref.key, "w2s.digest": ref.digest, "w2s.stage": ref.stage, "w2s.uri": ref.file("model")}
    try:
        return client.create_model_version(name, source=ref.file("model"), run_id=run_id, tags=tags).version
    except MlflowException as exc:
        if "Invalid model version source" not in str(exc):
            raise
    pointer = {"uri": ref.file("model"), "digest": ref.digest, "stage": ref.stage, "key": ref.key}
    client.log_dict(run_id, pointer, f"{POINTER_DIR}/pointer.json")
    return client.create_model_version(name, source=f"runs:/{run_id}/{POINTER_DIR}", run_id=run_id, tags=tags).version
