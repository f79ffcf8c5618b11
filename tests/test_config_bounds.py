"""Every integer of every config schema has an upper bound, checked when the config loads: an
oversized value is one line and exit 2, before any data is built. The fields are enumerated from the
schemas themselves, so a new integer field without a bound fails here."""

from __future__ import annotations

import subprocess
import sys
import types
import typing

import pytest
from annotated_types import Le
from pydantic import BaseModel

from tests.conftest import REPO
from w2s.config import PipelineConfig
from w2s.config.classification import ClassificationConfig
from w2s.config.loading import ConfigError, load_config
from w2s.config.theory import TheoryConfig

SCHEMAS = (PipelineConfig, ClassificationConfig, TheoryConfig)


def _options(annotation) -> list:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [option for arg in typing.get_args(annotation) for option in _options(arg)]
    return [annotation]


def _int_bound(annotation, metadata=()) -> tuple[bool, int | None]:
    """(is an integer, its `le`) for `int` / `Annotated[int, Field(le=…)]`."""
    extra = list(metadata)
    if typing.get_origin(annotation) is typing.Annotated:
        base, *more = typing.get_args(annotation)
        for item in more:
            extra.extend(getattr(item, "metadata", [item]))
        annotation = base
    if annotation is not int:
        return False, None
    bounds = [m.le for m in extra if isinstance(m, Le)]
    return True, min(bounds) if bounds else None


def integer_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, bool, int | None]]:
    """(dotted path, is a list, upper bound or None) of every integer field below `model`."""
    found = []
    for name, field in model.model_fields.items():
        for option in _options(field.annotation):
            if isinstance(option, type) and issubclass(option, BaseModel):
                found += integer_fields(option, f"{prefix}{name}.")
                continue
            listed = typing.get_origin(option) in (list, tuple)
            inner = typing.get_args(option)[0] if listed and typing.get_args(option) else option
            for candidate in _options(inner):
                is_int, bound = _int_bound(candidate, () if listed else field.metadata)
                if is_int:
                    found.append((f"{prefix}{name}", listed, bound))
    return found


FIELDS = [(schema, *field) for schema in SCHEMAS for field in integer_fields(schema)]


def test_the_enumeration_finds_the_fields_it_must():
    paths = {path for schema, path, _, _ in FIELDS if schema is PipelineConfig}
    for expected in ("data.n_test", "sampling.k", "sampling.max_tokens", "student.batch_size", "sweep.k", "run.seed",
                     "models.weak.truncate_layers", "engines.training.world_size"):
        assert expected in paths
    assert len(FIELDS) > 100


@pytest.mark.parametrize("schema,path,listed,bound", FIELDS, ids=[f"{s.__name__}:{p}" for s, p, _, _ in FIELDS])
def test_every_integer_field_is_bounded_and_the_bound_is_enforced(schema, path, listed, bound):
    assert bound is not None, f"{schema.__name__}.{path} has no upper bound (le=)"
    value = f"[{bound + 1}]" if listed else str(bound + 1)
    with pytest.raises(ConfigError) as raised:
        load_config(None, [f"{path}={value}"], schema=schema)
    assert len(str(raised.value).splitlines()) == 1, str(raised.value)


def test_the_reported_oversized_values_exit_2_before_compute(tmp_path):
    for setting in ("data.n_test=99999999999999999999", "sampling.k=100000000", "data.n_student=10000000"):
        done = subprocess.run([sys.executable, "-m", "w2s.cli", "config", "validate", str(REPO / "pipeline_config.yaml"), "--set", setting,
                               "--set", f"run.artifact_root={tmp_path / 'root'}"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 2, (setting, done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "root").exists(), done.stderr
