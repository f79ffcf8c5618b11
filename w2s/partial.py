"""Partial work of an unfinished stage, trusted only while its seal still matches.

A stage that resumes (sampling and scoring shards, training checkpoints, DPO reference log-probs,
DeepSpeed resume state) *seals* each piece right after writing it whole: a JSON listing of every
file under it with sha256 and size, written atomically to `.partial/<rel>.json` in the stage's
folder. A rerun reuses a piece only when every listed file still matches and the piece holds no
file the seal does not list; anything else (a flipped byte, a truncation, a missing seal, an
injected file) discards the piece so it is recomputed.

A seal cannot stop someone who can rewrite seals and manifests alike, so nothing read from a piece
may run code either: training's resume state loads as data only (w2s/training/resume.py); the
threat model is in docs/architecture.md, "Trust".

On a remote root the stage works in a local staging folder; `mirror` pushes each sealed piece (its
files, then the seal) and pulls a piece another machine sealed, so a killed pod resumes on another.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Protocol

from w2s.files import atomic_write_bytes, file_digest

SEALS = ".partial"


class Mirror(Protocol):
    """Where sealed pieces also live (the remote root); local roots have none."""

    def push(self, relpath: str) -> None: ...
    def pull(self, relpath: str) -> bool: ...
    def remove(self, relpath: str) -> None: ...
    def seal_of(self, relpath: str) -> bytes | None: ...


def listing(target: Path, memo: dict | None = None) -> dict[str, list]:
    """{file relative to target's parent folder: [sha256, bytes]} for a file or a whole folder."""
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    return {p.relative_to(target.parent).as_posix(): [file_digest(p, memo), p.stat().st_size] for p in files}


class PartialFiles:
    """Seal / reuse / discard pieces under `workdir` (paths relative to it, or absolute inside it)."""

    def __init__(self, workdir: Path, mirror: Mirror | None = None):
        self.dir = Path(workdir)
        self.mirror = mirror
        self.memo: dict = {}

    def rel(self, path: str | Path) -> str:
        path = Path(path)
        return (path.relative_to(self.dir) if path.is_absolute() else path).as_posix()

    def seal_path(self, path: str | Path) -> Path:
        return self.dir / SEALS / f"{self.rel(path)}.json"

    def seal(self, path: str | Path) -> None:
        """Records the piece as whole. Call only after it is completely written (atomically)."""
        rel = self.rel(path)
        target = self.dir / rel
        if not target.exists():
            raise FileNotFoundError(f"cannot seal {target}: it does not exist")
        seal = {"piece": rel, "files": listing(target, self.memo)}
        atomic_write_bytes(self.seal_path(rel), json.dumps(seal, sort_keys=True).encode())
        if self.mirror is not None:
            self.mirror.push(rel)

    def read_seal(self, path: str | Path) -> dict | None:
        try:
            seal = json.loads(self.seal_path(path).read_text())
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(seal, dict) or seal.get("piece") != self.rel(path) or not isinstance(seal.get("files"), dict):
            return None
        return seal

    def problems(self, path: str | Path) -> list[str]:
        """Why the piece cannot be reused (empty: it matches its seal exactly)."""
        rel = self.rel(path)
        target = self.dir / rel
        seal = self.read_seal(rel)
        if seal is None:
            return [f"{rel}: no valid seal"]
        if not target.exists():
            return [f"{rel}: missing"]
        expected = seal["files"]
        found = []
        actual_files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
        actual = {p.relative_to(target.parent).as_posix(): p for p in actual_files}
        for name in sorted(set(actual) - set(expected)):
            found.append(f"{name}: not in the seal")
        for name, (sha, size) in sorted(expected.items()):
            if name not in actual:
                found.append(f"{name}: missing")
            elif actual[name].stat().st_size != size:
                found.append(f"{name}: {actual[name].stat().st_size} bytes, sealed {size}")
            elif file_digest(actual[name], self.memo) != sha:
                found.append(f"{name}: sha256 differs from its seal")
        return found

    def reuse(self, path: str | Path) -> bool:
        """True when the piece is whole and verified; otherwise it is discarded and False returned.
        With a mirror the bucket's seal is the word: a local piece is reused only under the same
        seal (else the bucket's piece is pulled), and a piece the bucket does not hold is discarded."""
        rel = self.rel(path)
        if self.mirror is not None:
            remote = self.mirror.seal_of(rel)
            if remote is None:
                self.discard(rel)
                return False
            local = self.seal_path(rel).read_bytes() if self.seal_path(rel).is_file() else None
            if local != remote or self.problems(rel):
                self.mirror.pull(rel)
        if not self.problems(rel):
            return True
        self.discard(rel)
        return False

    def discard(self, path: str | Path) -> None:
        """Removes a piece (or a folder of pieces) and its seals, here and on the mirror."""
        rel = self.rel(path)
        for target in (self.dir / rel, self.dir / SEALS / rel):
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        self.seal_path(rel).unlink(missing_ok=True)
        if self.mirror is not None:
            self.mirror.remove(rel)

    def sealed_digest(self, path: Path) -> str | None:
        """The sha256 hashed when `path` was sealed, while the file is unchanged (saves a re-hash)."""
        stat = path.stat()
        return self.memo.get((str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino))
