"""Local files and folders a stage reads enter its cache key by content, not by path.

A config field marked `content_input()` (data files, model folders, the gold reward model, a
DeepSpeed JSON) names either something on this machine or a hub / builder name. When it names a
local file or folder (or a glob of files), its sha256 (a folder: over the sorted listing of every
file's relative path and sha256) is part of the key, so editing the file or replacing the folder
recomputes what reads it. Hub names stay strings in the config slice (pin a revision in the name to
make them exact). Digests are memoised per process by (path, size, mtime, inode), so a warm rerun
hashes nothing twice.
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from w2s.files import file_digest

MARK = "w2s_content_input"
REPO = Path(__file__).resolve().parents[1]
_memo: dict = {}


def content_input(default: Any = None, **kwargs: Any):
    """A pydantic Field whose local path value is keyed by content."""
    extra = {**kwargs.pop("json_schema_extra", {}), MARK: True}
    return Field(default, json_schema_extra=extra, **kwargs)


def _is_marked(model: type[BaseModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(MARK))


def local_paths(value: str) -> list[Path]:
    """What a path-like value names on this machine: nothing (a hub name), a file, a folder, or the
    files of a glob. Relative paths are tried from the working directory, then the repository."""
    if any(ch in value for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(value, recursive=True) if Path(p).is_file())
    for candidate in (Path(value).expanduser(), REPO / value):
        if candidate.exists():
            return [candidate]
    return []


def path_digest(path: Path) -> str:
    if path.is_file():
        return file_digest(path.resolve(), _memo)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    listing = [(p.relative_to(path).as_posix(), file_digest(p.resolve(), _memo)) for p in files]
    return hashlib.sha256(repr(listing).encode()).hexdigest()


def value_digest(value: str) -> str | None:
    paths = local_paths(value)
    if not paths:
        return None
    return hashlib.sha256("".join(path_digest(p) for p in paths).encode()).hexdigest()


def content_digests(cfg: BaseModel, prefix: str = "") -> dict[str, str]:
    """{'content:<dotted field>': digest} for every marked field of `cfg` naming local content."""
    found: dict[str, str] = {}
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        dotted = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            found |= content_digests(value, f"{dotted}.")
        elif _is_marked(type(cfg), name) and value is not None:
            values = [value] if isinstance(value, str) else list(value)
            for index, item in enumerate(values):
                digest = value_digest(str(item))
                if digest is not None:
                    found[f"content:{dotted}" + (f"[{index}]" if not isinstance(value, str) else "")] = digest
    return found
