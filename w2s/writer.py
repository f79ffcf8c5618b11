"""A stage's output in progress: files written atomically and sealed, the manifest written last.

On a local root the stage writes straight into `<root>/<stage>/<key>/`. On a remote root it writes
into a local staging folder (`<W2S_STAGING_DIR or the temp dir>/w2s-<uid>/staging`, private to the
user: w2s.files.private_folder) that mirrors the remote one:
each sealed piece is pushed as soon as it is whole, so a pod killed mid-stage resumes on another
machine from what it had finished; `commit` uploads every remaining file (training writes
`model/`, `checkpoints/` itself), then the manifest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from w2s.artifacts import MANIFEST, STRAY, ArtifactRef, ArtifactStore, FileEntry, Manifest, is_hidden
from w2s.files import atomic_write_bytes, file_digest, fsync_dir, inside, private_folder, refuse_links_in, temp_beside
from w2s.partial import SEALS, PartialFiles

log = logging.getLogger(__name__)


def staging_dir(store: ArtifactStore, stage: str, key: str) -> Path:
    """Where the stage's files are written, refused with one line when a link was planted in it or
    on the way to it (w2s.files.refuse_links_in)."""
    if store.local_root is not None:
        base = store.local_root
        folder = base / stage / key
    else:
        base = private_folder(os.environ.get("W2S_STAGING_DIR") or None)
        folder = base / "staging" / hashlib.sha256(store.root.encode()).hexdigest()[:12] / stage / key
    refuse_links_in(base, folder)
    return folder


class RemoteMirror:
    """Sealed pieces of a staging folder, kept on the remote root too (w2s/partial.py Mirror)."""

    def __init__(self, store: ArtifactStore, stage: str, key: str, local: Path):
        self.store, self.stage, self.key, self.local = store, stage, key, local
        self.pushed: dict[str, str] = {}  # relpath -> sha256 already on the remote

    def _remote(self, rel: str) -> str:
        return self.store.remote_path(self.stage, self.key, rel)

    def upload(self, rel: str, sha: str) -> None:
        if self.pushed.get(rel) != sha:
            self.store.fs.put_file(str(self.local / rel), self._remote(rel))
            self.pushed[rel] = sha

    def push(self, relpath: str) -> None:
        seal_rel = f"{SEALS}/{relpath}.json"
        seal = json.loads((self.local / seal_rel).read_text())
        parent = Path(relpath).parent.as_posix()
        for name, (sha, _) in seal["files"].items():
            self.upload(name if parent == "." else f"{parent}/{name}", sha)
        self.store.fs.put_file(str(self.local / seal_rel), self._remote(seal_rel))  # the seal last

    def seal_of(self, relpath: str) -> bytes | None:
        try:
            return self.store.fs.cat_file(self._remote(f"{SEALS}/{relpath}.json"))
        except FileNotFoundError:
            return None

    def pull(self, relpath: str) -> bool:
        seal_rel = f"{SEALS}/{relpath}.json"
        try:
            raw = self.store.fs.cat_file(self._remote(seal_rel))
            seal = json.loads(raw)
            files = seal["files"]
            parent = Path(relpath).parent.as_posix()
            # the seal is the bucket's word: a listed name that leaves the piece's folder is no piece
            names = [inside(name if parent == "." else f"{parent}/{name}") for name in files]
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
            return False
        for rel in names:
            target = self.local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.store.fs.get_file(self._remote(rel), str(target))
            except FileNotFoundError:
                return False
        atomic_write_bytes(self.local / seal_rel, raw)
        return True  # the caller verifies the pulled files against the seal

    def remove(self, relpath: str) -> None:
        for rel in (relpath, f"{SEALS}/{relpath}", f"{SEALS}/{relpath}.json"):
            remote = self._remote(rel)
            if self.store.fs.exists(remote):
                self.store.fs.rm(remote, recursive=True)
            self.pushed = {k: v for k, v in self.pushed.items() if k != rel and not k.startswith(f"{rel}/")}


class StageWriter:
    """Collects a stage's files under `dir`; `commit` hashes them and writes the manifest last.
    Hold the store's `lock(stage, key)` around it (w2s.stage.execute does)."""

    def __init__(self, store: ArtifactStore, stage: str, key: str, version: int, config: Mapping[str, Any], inputs: Mapping[str, str],
                 fresh: bool = False):
        """`fresh` (`--force`): forget every sealed piece of earlier attempts, so nothing is resumed."""
        self.store, self.stage, self.key, self.version = store, stage, key, version
        self.config, self.inputs = dict(config), dict(inputs)
        self.dir = staging_dir(store, stage, key)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.remote = store.local_root is None
        self.mirror = RemoteMirror(store, stage, key, self.dir) if self.remote else None
        self.partial = PartialFiles(self.dir, self.mirror)
        self._rows: dict[str, int] = {}
        self._produced: set[str] = set()
        # A manifest from an earlier computation under this key is stale once we are rewriting.
        store.invalidate(stage, key)
        if fresh:
            shutil.rmtree(self.dir / SEALS, ignore_errors=True)
            if self.remote and store.fs.exists(seals := store.remote_path(stage, key, SEALS)):
                store.fs.rm(seals, recursive=True)

    def __enter__(self) -> StageWriter:
        return self

    def __exit__(self, *exc) -> None:
        return None  # leaving by an exception writes no manifest; sealed pieces stay for a rerun

    def path(self, relpath: str) -> Path:
        """Where the stage writes `relpath` (a file, or a folder a library fills); only what was
        handed out here, claimed, or sealed becomes part of the artifact."""
        self.claim(relpath)
        target = self.dir / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def claim(self, relpath: str) -> None:
        """`relpath` (a file or folder the stage wrote under `dir` by other means, e.g. the trainer's
        `model/`) is the stage's own output."""
        self._produced.add(inside(relpath))

    def _is_produced(self, rel: str) -> bool:
        return any(rel == own or rel.startswith(f"{own}/") for own in self._produced)

    def _claim_sealed_pieces(self) -> None:
        for seal in (self.dir / SEALS).rglob("*.json"):
            piece = seal.relative_to(self.dir / SEALS).as_posix().removesuffix(".json")
            if self.partial.read_seal(piece) is not None:
                self._produced.add(piece)

    def _set_aside(self, path: Path, rel: str) -> None:
        """A file in the folder that this stage neither wrote nor sealed (a copy someone made beside
        the shards, a leftover of another version) moves to `.stray/`, which no manifest lists: it
        never becomes part of the artifact, and nothing of it is deleted."""
        aside = self.dir / STRAY / rel
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, aside)
        log.warning("%s: %s is not this stage's output; moved to %s, left out of the artifact", self.stage, rel, aside)

    def reuse(self, relpath: str) -> bool:
        """A whole, sealed piece from an earlier, interrupted attempt whose seal still matches;
        anything else there is discarded (so it is recomputed)."""
        return self.partial.reuse(relpath)

    def seal(self, relpath: str) -> None:
        self.partial.seal(relpath)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        atomic_write_bytes(self.path(relpath), data)
        self.seal(relpath)

    def write_json(self, relpath: str, value: Any) -> None:
        self.write_bytes(relpath, json.dumps(value, indent=2, sort_keys=True, default=str).encode())

    def write_parquet(self, relpath: str, table) -> None:
        import pyarrow.parquet as pq

        target = self.path(relpath)
        tmp = temp_beside(target)
        pq.write_table(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
        self._rows[relpath] = table.num_rows
        self.seal(relpath)

    @contextmanager
    def folder(self, relpath: str) -> Iterator[Path]:
        """A folder written by a library (e.g. save_pretrained), renamed into place only when whole."""
        final = self.path(relpath)
        tmp = temp_beside(final)
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        self.seal(relpath)

    def _entries(self) -> list[FileEntry]:
        self._claim_sealed_pieces()
        entries = []
        for path in sorted(self.dir.rglob("*")):
            rel = path.relative_to(self.dir).as_posix()
            if not path.is_file() or rel == MANIFEST or is_hidden(rel):
                continue
            if not self._is_produced(rel):
                self._set_aside(path, rel)
                continue
            rows = self._rows.get(rel)
            if rows is None and rel.endswith(".parquet"):
                import pyarrow.parquet as pq

                rows = pq.ParquetFile(path).metadata.num_rows
            sha = self.partial.sealed_digest(path) or file_digest(path, self.partial.memo)
            entries.append(FileEntry(path=rel, sha256=sha, bytes=path.stat().st_size, rows=rows))
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
        body = manifest.model_dump_json(indent=2).encode()
        if self.mirror is not None:
            for entry in files:
                self.mirror.upload(entry.path, entry.sha256)
            self.store.fs.pipe_file(self.store.remote_path(self.stage, self.key, MANIFEST), body)
        atomic_write_bytes(self.dir / MANIFEST, body)
        self.store.remember_verified(manifest)
        return self.store.ref_of(manifest)

    def manifest_path(self) -> Path:
        return self.dir / MANIFEST
