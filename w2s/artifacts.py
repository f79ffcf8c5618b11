"""Content-keyed artifact store (the contract of DESIGN.md "Artifacts, caching, resume").

Layout: `<root>/<stage>/<key>/` holds the stage's files and, written last and atomically,
`manifest.json`. No manifest means not done. A manifest whose files no longer match their recorded
sha256/size (corrupted, truncated, deleted) makes the artifact invalid: the stage recomputes.

Writers write every file atomically (temp file, fsync, rename), so a killed stage leaves only whole
files behind; stages that resume (sampling shards, training checkpoints) may reuse those. The root
is a local folder or, through fsspec, any URL (s3://...): files are then staged locally and uploaded,
manifest last.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
from pydantic import BaseModel, ConfigDict

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"


def local_path_of(root: str) -> Path | None:
    """The local path of a root given as a path or file:// URL; None for remote URLs."""
    if root.startswith("file://"):
        return Path(root[len("file://") :])
    if "://" in root:
        return None
    return Path(root)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(stage: str, version: int, config_slice: Mapping[str, Any], input_digests: Mapping[str, str]) -> str:
    """sha256 over what determines a stage's output: its name, code version, config slice, inputs."""
    payload = canonical_json(
        {"stage": stage, "version": version, "config": dict(config_slice), "inputs": dict(input_digests)}
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    sha256: str
    bytes: int
    rows: int | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str
    key: str
    version: int
    config: dict[str, Any]
    inputs: dict[str, str]
    files: list[FileEntry]
    metrics: dict[str, float] = {}
    info: dict[str, Any] = {}
    created_at: str
    digest: str

    @staticmethod
    def content_digest(files: list[FileEntry]) -> str:
        listing = canonical_json(sorted((f.path, f.sha256) for f in files))
        return hashlib.sha256(listing.encode()).hexdigest()


class ArtifactRef(BaseModel):
    """What tasks pass around: small, JSON-serialisable, never the data itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stage: str
    key: str
    uri: str
    digest: str
    rows: int | None = None

    def file(self, relpath: str) -> str:
        return f"{self.uri.rstrip('/')}/{relpath}"

    def local_dir(self) -> Path:
        local = local_path_of(self.uri)
        if local is None:
            raise ValueError(f"{self.uri} is remote; fetch it with ArtifactStore.materialise first")
        return local


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    def __init__(self, root: str):
        self.root = root.rstrip("/") or "/"
        self.local_root = local_path_of(self.root)
        self.fs, self._base = fsspec.core.url_to_fs(self.root)
        self._verified: dict[tuple, bool] = {}

    def uri(self, stage: str, key: str) -> str:
        if self.local_root is not None:
            return str((self.local_root / stage / key).absolute())
        return f"{self.root}/{stage}/{key}"

    # ------------------------------------------------------------------------------------ reading
    def read_manifest(self, stage: str, key: str) -> Manifest | None:
        path = f"{self._base}/{stage}/{key}/{MANIFEST}"
        try:
            with self.fs.open(path, "rb") as handle:
                return Manifest.model_validate_json(handle.read())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # an unreadable manifest is as good as none: recompute

    def lookup(self, stage: str, key: str) -> ArtifactRef | None:
        """The finished artifact, or None when missing or failing verification."""
        manifest = self.read_manifest(stage, key)
        if manifest is None or self.problems(manifest):
            return None
        return self.ref_of(manifest)

    def ref_of(self, manifest: Manifest) -> ArtifactRef:
        rows = [f.rows for f in manifest.files if f.rows is not None]
        return ArtifactRef(
            stage=manifest.stage,
            key=manifest.key,
            uri=self.uri(manifest.stage, manifest.key),
            digest=manifest.digest,
            rows=sum(rows) if rows else None,
        )

    def problems(self, manifest: Manifest) -> list[str]:
        """Files whose size or sha256 differ from the manifest (empty list: valid)."""
        found = []
        for entry in manifest.files:
            path = f"{self._base}/{manifest.stage}/{manifest.key}/{entry.path}"
            try:
                info = self.fs.info(path)
            except FileNotFoundError:
                found.append(f"{entry.path}: missing")
                continue
            if info.get("size") != entry.bytes:
                found.append(f"{entry.path}: {info.get('size')} bytes, manifest says {entry.bytes}")
                continue
            memo = (path, info.get("size"), info.get("mtime"), entry.sha256)
            if self._verified.get(memo):
                continue
            with self.fs.open(path, "rb") as handle:
                actual = hashlib.file_digest(handle, "sha256").hexdigest()
            if actual != entry.sha256:
                found.append(f"{entry.path}: sha256 mismatch")
            else:
                self._verified[memo] = True
        return found

    def materialise(self, ref: ArtifactRef, cache_dir: str | os.PathLike | None = None) -> Path:
        """A local folder with the artifact's files (a download for remote roots)."""
        local = local_path_of(ref.uri)
        if local is not None:
            return local
        target = Path(cache_dir or tempfile.gettempdir()) / "w2s-remote" / ref.stage / ref.key
        if not (target / MANIFEST).exists():
            self.fs.get(f"{self._base}/{ref.stage}/{ref.key}/", str(target), recursive=True)
        return target

    # ------------------------------------------------------------------------------------ writing
    @contextmanager
    def writer(self, stage: str, key: str, version: int, config: Mapping[str, Any], inputs: Mapping[str, str]) -> Iterator[StageWriter]:
        """Stage output in progress. Leaving the block by an exception writes no manifest."""
        if self.local_root is not None:
            workdir = self.local_root / stage / key
            workdir.mkdir(parents=True, exist_ok=True)
            writer = StageWriter(self, stage, key, version, config, inputs, workdir, remote=False)
            yield writer
        else:
            with tempfile.TemporaryDirectory(prefix=f"w2s-{stage}-") as scratch:
                writer = StageWriter(self, stage, key, version, config, inputs, Path(scratch), remote=True)
                yield writer

    def invalidate(self, stage: str, key: str) -> None:
        """Removes the manifest (the 'done' mark) so the stage recomputes; files stay for resume."""
        path = f"{self._base}/{stage}/{key}/{MANIFEST}"
        if self.fs.exists(path):
            self.fs.rm(path)


class StageWriter:
    """Collects a stage's files under `dir`; `commit` hashes them and writes the manifest last."""

    def __init__(self, store, stage, key, version, config, inputs, workdir: Path, remote: bool):
        self.store, self.stage, self.key, self.version = store, stage, key, version
        self.config, self.inputs = dict(config), dict(inputs)
        self.dir = workdir
        self.remote = remote
        self._rows: dict[str, int] = {}
        # A manifest from an earlier computation under this key is stale once we are rewriting.
        store.invalidate(stage, key)

    def path(self, relpath: str) -> Path:
        target = self.dir / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def has(self, relpath: str) -> bool:
        """A whole file from an earlier, interrupted attempt (atomic writes: never a partial one)."""
        return (self.dir / relpath).exists()

    def write_bytes(self, relpath: str, data: bytes) -> None:
        atomic_write_bytes(self.path(relpath), data)
        self._upload(relpath)

    def write_json(self, relpath: str, value: Any) -> None:
        self.write_bytes(relpath, json.dumps(value, indent=2, sort_keys=True, default=str).encode())

    def write_parquet(self, relpath: str, table) -> None:
        import pyarrow.parquet as pq

        target = self.path(relpath)
        tmp = target.with_name(f"{_TMP_PREFIX}{target.name}.{uuid.uuid4().hex[:8]}")
        pq.write_table(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        self._rows[relpath] = table.num_rows
        self._upload(relpath)

    @contextmanager
    def folder(self, relpath: str) -> Iterator[Path]:
        """A folder written by a library (e.g. save_pretrained), renamed into place only when whole."""
        final = self.path(relpath)
        tmp = final.with_name(f"{_TMP_PREFIX}{final.name}.{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if self.remote:
            self.store.fs.put(str(final), self._remote_path(relpath), recursive=True)

    def _remote_path(self, relpath: str) -> str:
        return f"{self.store._base}/{self.stage}/{self.key}/{relpath}"

    def _upload(self, relpath: str) -> None:
        if self.remote:
            self.store.fs.put_file(str(self.dir / relpath), self._remote_path(relpath))

    def _entries(self) -> list[FileEntry]:
        entries = []
        for path in sorted(self.dir.rglob("*")):
            rel = path.relative_to(self.dir).as_posix()
            if not path.is_file() or rel == MANIFEST or any(p.startswith(_TMP_PREFIX) for p in rel.split("/")):
                continue
            rows = self._rows.get(rel)
            if rows is None and rel.endswith(".parquet"):
                import pyarrow.parquet as pq

                rows = pq.ParquetFile(path).metadata.num_rows
            entries.append(FileEntry(path=rel, sha256=sha256_file(path), bytes=path.stat().st_size, rows=rows))
        return entries

    def commit(self, metrics: Mapping[str, float] | None = None, info: Mapping[str, Any] | None = None) -> ArtifactRef:
        files = self._entries()
        manifest = Manifest(
            stage=self.stage,
            key=self.key,
            version=self.version,
            config=self.config,
            inputs=self.inputs,
            files=files,
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            info=dict(info or {}),
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(),
            digest=Manifest.content_digest(files),
        )
        self.write_bytes(MANIFEST, manifest.model_dump_json(indent=2).encode())
        return self.store.ref_of(manifest)
