"""Content-keyed artifact store (the contract of DESIGN.md "Artifacts, caching, resume").

Layout: `<root>/<stage>/<key>/` holds the stage's files and, written last and atomically,
`manifest.json`. No manifest means not done. A manifest whose files no longer match their recorded
sha256/size (corrupted, truncated, deleted) makes the artifact invalid: the stage recomputes.

Writers (w2s/writer.py) write every file atomically (temp file, fsync, rename) and seal it
(w2s/partial.py), so a killed stage leaves only whole, verifiable pieces behind. The root is a local
folder or, through fsspec, any URL (s3://...): files are then staged locally and uploaded, manifest
last, and downloads are verified against the manifest before anything reads them.

One computation per (stage, key): `ArtifactStore.lock` serialises runs that need the same artifact
(w2s/locks.py). One store per root per process (`store_for`) keeps the verification memo, so a
cached sweep hashes every model once, not once per sweep point.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import fsspec
from pydantic import AfterValidator, BaseModel, ConfigDict

from w2s.files import TMP_PREFIX, atomic_write_bytes, file_digest, fsync_dir, inside, private_folder, temp_beside  # noqa: F401  (re-exported)

MANIFEST = "manifest.json"


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
    path: Annotated[str, AfterValidator(inside)]  # a manifest listing '/etc/x' or '../x' is no manifest
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
    return file_digest(path)


# Files a stage keeps beside its outputs while it runs; never part of a manifest.
STRAY = ".stray"  # files found in a stage folder that the stage did not write (w2s/writer.py)
HIDDEN = (".partial", ".resume", ".lock", STRAY, TMP_PREFIX)


def is_hidden(relpath: str) -> bool:
    return any(part.startswith(HIDDEN) for part in relpath.split("/"))


_stores: dict[str, ArtifactStore] = {}
_stores_lock = threading.Lock()


def store_for(root: str) -> ArtifactStore:
    """The process's one store for `root` (its verification memo survives across stage calls)."""
    with _stores_lock:
        if root not in _stores:
            _stores[root] = ArtifactStore(root)
        return _stores[root]


class ArtifactStore:
    def __init__(self, root: str):
        self.root = root.rstrip("/") or "/"
        self.local_root = local_path_of(self.root)
        self.fs, self._base = fsspec.core.url_to_fs(self.root)
        self._verified: dict[tuple, bool] = {}
        self._local_memo: dict = {}  # sha256 of downloaded copies, by stat

    def uri(self, stage: str, key: str) -> str:
        if self.local_root is not None:
            return str((self.local_root / stage / key).absolute())
        return f"{self.root}/{stage}/{key}"

    def remote_path(self, stage: str, key: str, relpath: str = "") -> str:
        return f"{self._base}/{stage}/{key}" + (f"/{relpath}" if relpath else "")

    # ------------------------------------------------------------------------------------ reading
    def read_manifest(self, stage: str, key: str) -> Manifest | None:
        try:
            with self.fs.open(self.remote_path(stage, key, MANIFEST), "rb") as handle:
                manifest = Manifest.model_validate_json(handle.read())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # an unreadable manifest is as good as none: recompute
        if (manifest.stage, manifest.key) != (stage, key) or manifest.digest != Manifest.content_digest(manifest.files):
            return None  # moved from another folder, or its listing edited: not this artifact
        return manifest

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
            if is_hidden(entry.path):  # FileEntry already refuses paths that leave the folder
                found.append(f"{entry.path}: not a file a manifest may list")
                continue
            path = self.remote_path(manifest.stage, manifest.key, entry.path)
            try:
                info = self.fs.info(path)
            except FileNotFoundError:
                found.append(f"{entry.path}: missing")
                continue
            if info.get("size") != entry.bytes:
                found.append(f"{entry.path}: {info.get('size')} bytes, manifest says {entry.bytes}")
                continue
            memo = self._memo_key(path, info, entry.sha256)
            if self._verified.get(memo):
                continue
            with self.fs.open(path, "rb") as handle:
                actual = hashlib.file_digest(handle, "sha256").hexdigest()
            if actual != entry.sha256:
                found.append(f"{entry.path}: sha256 mismatch")
            else:
                self._verified[memo] = True
        return found

    @staticmethod
    def _memo_key(path: str, info: dict, sha256: str) -> tuple:
        return (path, info.get("size"), info.get("mtime") or info.get("LastModified"), info.get("ETag"), sha256)

    def remember_verified(self, manifest: Manifest) -> None:
        """The files a writer just hashed and committed need no second hashing by the next lookup."""
        for entry in manifest.files:
            path = self.remote_path(manifest.stage, manifest.key, entry.path)
            self._verified[self._memo_key(path, self.fs.info(path), entry.sha256)] = True

    def materialise(self, ref: ArtifactRef, cache_dir: str | os.PathLike | None = None) -> Path:
        """A local folder with the artifact's files, each verified against the manifest (a
        verified download for remote roots). Raises when the artifact no longer matches `ref`."""
        local = local_path_of(ref.uri)
        if local is not None:
            owner = self if local.parent.parent == self.local_root else store_for(str(local.parent.parent))
            manifest = owner.read_manifest(ref.stage, ref.key)
            if manifest is None or manifest.digest != ref.digest or owner.problems(manifest):
                raise ArtifactChanged(f"{ref.stage} artifact {ref.uri} no longer matches its digest {ref.digest[:12]}: rerun to recompute it")
            return local
        manifest = self.read_manifest(ref.stage, ref.key)
        if manifest is None or manifest.digest != ref.digest:
            raise ArtifactChanged(f"{ref.stage} artifact {ref.uri}: manifest missing or for other files than {ref.digest[:12]}")
        # One folder per content digest, not per (stage, key): runs on other roots (or an earlier
        # computation under this key) whose bytes differ never write into a folder this run reads, and
        # every file a folder can hold belongs to this very manifest.
        cache = Path(cache_dir) / "w2s-remote" if cache_dir else private_folder() / "remote"
        target = cache / ref.stage / f"{ref.key}-{manifest.digest[:16]}"
        for entry in manifest.files:
            self._download_verified(self.remote_path(ref.stage, ref.key, entry.path), target / entry.path, entry)
        atomic_write_bytes(target / MANIFEST, manifest.model_dump_json(indent=2).encode())
        return target

    def _download_verified(self, remote: str, local: Path, entry: FileEntry) -> None:
        if local.exists() and local.stat().st_size == entry.bytes and file_digest(local, self._local_memo) == entry.sha256:
            return  # downloaded and verified before (by this process, or an earlier one)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_beside(local)
        self.fs.get_file(remote, str(tmp))
        if tmp.stat().st_size != entry.bytes or file_digest(tmp) != entry.sha256:
            tmp.unlink(missing_ok=True)
            raise ArtifactChanged(f"download of {remote} does not match its manifest entry")
        os.replace(tmp, local)

    # ------------------------------------------------------------------------------------ writing
    @contextmanager
    def lock(self, stage: str, key: str, on_wait=None) -> Iterator[None]:
        """Exclusive right to compute (stage, key) while held (other runs wait, then reuse)."""
        from w2s.locks import exclusive

        if self.local_root is not None:
            within, path = self.local_root, self.local_root / stage / ".locks" / f"{key}.lock"
        else:  # remote roots: serialises the runs of this machine (docs/architecture.md, "Concurrency")
            where = hashlib.sha256(self.root.encode()).hexdigest()[:12]
            within = private_folder()
            path = within / "locks" / where / stage / f"{key}.lock"
        with exclusive(path, on_wait, within=within):
            yield

    def invalidate(self, stage: str, key: str) -> None:
        """Removes the manifest (the 'done' mark) so the stage recomputes; sealed pieces stay."""
        path = self.remote_path(stage, key, MANIFEST)
        if self.fs.exists(path):
            self.fs.rm(path)


class ArtifactChanged(RuntimeError):
    """An artifact passed as input no longer matches the digest it was passed with."""
