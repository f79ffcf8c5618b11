"""Loading, overriding and pre-flight checking of the pipeline config.

Every failure is a `ConfigError` whose message is one line naming the key and what is allowed; the
CLI turns it into exit code 2. Nothing here writes to the artifact root or MLflow.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import tempfile
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

from w2s.config import ModelSpec, PipelineConfig
from w2s.content import local_paths


S = TypeVar("S", bound=BaseModel)


class ConfigError(ValueError):
    """A config problem found before any compute; the message is one line."""


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None, schema: type[S] = PipelineConfig) -> S:
    """The one loader of every schema (EVE, classification, theory): YAML file, then `--set`
    overrides, then validation; every problem is a one-line ConfigError."""
    from w2s.config.presets import resolve

    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(resolve(path))
    for item in overrides or []:
        apply_override(raw, item)
    return validate_mapping(raw, source=str(path) if path else "defaults", schema=schema)


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return _unshared(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`; keys given beside it override the merged ones, as YAML says
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# A config has a few hundred values; anchors/aliases that expand past this are an alias bomb.
MAX_CONFIG_NODES = 100_000


def _unshared(node: Any, budget: list[int] | None = None) -> Any:
    """A copy with no shared sub-objects: a YAML anchor (&x / *x) loads as one object referenced
    twice, so a `--set` into one section would silently change every section that aliases it.
    Expanding aliases is bounded, so a "billion laughs" file fails fast instead of eating memory."""
    budget = [MAX_CONFIG_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(f"config expands to more than {MAX_CONFIG_NODES:,} values (YAML aliases?)")
    if isinstance(node, dict):
        return {key: _unshared(value, budget) for key, value in node.items()}
    if isinstance(node, list):
        return [_unshared(value, budget) for value in node]
    return node


def apply_override(raw: dict[str, Any], item: str) -> None:
    """`a.b.c=value`; the value is parsed as YAML (so 3, 1e-5, true, [a, b], .inf work)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    key, value_text = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ConfigError(f"--set {item!r}: key must be dotted identifiers like sampling.k")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def validate_mapping(raw: dict[str, Any], source: str = "config", schema: type[S] = PipelineConfig) -> S:
    try:
        return schema.model_validate(copy.deepcopy(raw))
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc, schema)}") from None


def format_validation_error(exc: ValidationError, schema: type[BaseModel] = PipelineConfig) -> str:
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    kind = first["type"]
    if kind == "extra_forbidden":
        parent_model = _model_at(schema, first["loc"][:-1])
        allowed = ", ".join(parent_model.model_fields) if parent_model else "?"
        message = f"unknown key '{key}' (allowed here: {allowed})"
    elif kind == "literal_error":
        message = f"{key}: {first['msg']} (got {first.get('input')!r})"
    else:
        message = f"{key}: {first['msg'].removeprefix('Value error, ')} (got {first.get('input')!r})"
    more = len(exc.errors()) - 1
    return message + (f" [+{more} more]" if more else "")


def _model_at(model: type, loc: tuple) -> type | None:
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        model = next((c for c in candidates if hasattr(c, "model_fields")), None)
        if model is None:
            return None
    return model


# --------------------------------------------------------------------------------------- preflight
def preflight(cfg: PipelineConfig) -> None:
    """Checks that need the filesystem: model paths exist, artifact root writable. Writes nothing."""
    for name in ("weak", "strong"):
        _check_model(f"models.{name}", getattr(cfg.models, name))
    reward = cfg.models.gold_reward
    if reward.kind == "hf_classifier":
        _check_local_or_hub("models.gold_reward.path", reward.path)
    if cfg.data.source == "hf" and cfg.data.hf and cfg.data.hf.data_files:
        files = cfg.data.hf.data_files
        for file in [files] if isinstance(files, str) else files:
            if "://" not in file and not any(ch in file for ch in "*?[") and not Path(file).exists():
                raise ConfigError(f"data.hf.data_files: no such file {file!r}")
    ds_json = cfg.engines.training.deepspeed_config
    if ds_json is not None and not local_paths(ds_json):
        raise ConfigError(f"engines.training.deepspeed_config: no such file {ds_json!r}")
    check_writable_root(cfg.run.artifact_root)
    try:
        uri = cfg.tracking_uri
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_tracking_uri(uri)


def check_machine(cfg: PipelineConfig) -> None:
    """Visible GPUs against the config's ranks and tensor-parallel group (w2s/devices.py): for a run
    on this machine, not for `w2s config validate`, which checks a config meant for a cluster."""
    from w2s.devices import check_gpus

    problem = check_gpus(cfg)
    if problem:
        raise ConfigError(problem)


def check_data(cfg: PipelineConfig) -> str:
    """Split sizes against a local copy of the data (w2s/data/capacity.py); what was checked."""
    from w2s.data.capacity import check_local_data

    try:
        return check_local_data(cfg.data)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_pod(cfg: PipelineConfig, gpu_count: int | None) -> None:
    from w2s.devices import check_pod_gpus

    problem = check_pod_gpus(cfg, gpu_count) if gpu_count is not None else None
    if problem:
        raise ConfigError(problem)


def check_tracking_uri(uri: str, timeout_s: float = 3.0) -> None:
    """A tracking URI MLflow can use, reachable within seconds (not minutes of client retries)."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise ConfigError(f"run.tracking_uri: {uri!r}: expected sqlite:///<path>")
        return
    if scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            urllib.request.urlopen(probe, timeout=timeout_s).close()
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 405):  # a server, but no MLflow API there: a wrong port or path
                raise ConfigError(f"run.tracking_uri: {uri!r} answers, but not as an MLflow tracking server "
                                  f"(HTTP {exc.code} at /api/2.0/mlflow/experiments/search)") from None
            return  # MLflow behind authentication, or busy: it is there
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(f"run.tracking_uri: {uri!r} is not reachable within {timeout_s:g} s ({reason})") from None
        return
    if scheme in ("databricks", "file", "postgresql", "mysql", "mssql") or uri.startswith("/"):
        return
    raise ConfigError(f"run.tracking_uri: {uri!r}: expected sqlite:///<path>, http(s)://host:port or another MLflow backend URI")


def _check_model(key: str, spec: ModelSpec) -> None:
    if spec.source == "smollm2_gguf":
        from w2s.models.smollm2 import find_smollm2_gguf

        try:
            find_smollm2_gguf()
        except FileNotFoundError as exc:
            raise ConfigError(f"{key}.source=smollm2_gguf: {exc}") from None
    elif spec.source == "hf":
        _check_local_or_hub(f"{key}.path", spec.path)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _check_local_or_hub(key: str, path: str | None) -> None:
    assert path is not None
    if Path(path).expanduser().exists():
        if not Path(path).expanduser().is_dir():
            raise ConfigError(f"{key}: {path!r} is a file; expected an HF model folder")
        return
    looks_local = path.startswith(("/", ".", "~")) or not _HUB_ID.match(path)
    if looks_local:
        raise ConfigError(f"{key}: no such model folder {path!r}")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(path):
        raise ConfigError(f"{key}: hub id {path!r} is not in the local cache and HF_HUB_OFFLINE=1")


def _in_hub_cache(repo_id: str) -> bool:
    if importlib.util.find_spec("huggingface_hub") is None:
        return False
    from huggingface_hub import scan_cache_dir

    try:
        return any(repo.repo_id == repo_id for repo in scan_cache_dir().repos)
    except Exception:
        return False


def check_writable_root(root: str) -> None:
    from w2s.artifacts import local_path_of

    local = local_path_of(root)
    if local is None:
        return  # remote fsspec roots are checked by the first write; credentials live there
    probe = local.expanduser().absolute()
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"run.artifact_root: {root!r} is not writable ({probe} is not a folder)")
    try:  # os.access lies for root on read-only mounts; a probe file that deletes itself does not
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(f"run.artifact_root: {root!r} is not writable ({probe}: {exc.strerror})") from None


def dump_yaml(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def with_values(cfg: PipelineConfig, **values: Any) -> PipelineConfig:
    """A copy of `cfg` with dotted keys replaced and re-validated: with_values(cfg, **{"run.seed": 1})."""
    raw = cfg.model_dump(mode="python")
    for key, value in values.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return validate_mapping(raw, "sweep point")


def pipeline_config_of(form, preset: str | None, default):
    """The config a flow run uses: the named preset's, or else the form's. Both at once is an
    error, not a silent choice: a form that differs from the flow's `default` and a preset name
    could each be what the researcher meant."""
    if preset is None:
        return form
    from w2s.config.presets import PipelinePreset

    if preset not in get_args(PipelinePreset):
        raise ConfigError(f"preset {preset!r}: one of {', '.join(get_args(PipelinePreset))}")
    if form != default:
        defaults = default.model_dump()
        changed = sorted(k for k, v in form.model_dump().items() if v != defaults[k])
        raise ConfigError(f"preset {preset!r} and an edited config form ({', '.join(changed)}) were both given; "
                          "choose one (leave the form at its defaults to run a preset)")
    return load_config(preset)  # resolves the shipped preset of that name
