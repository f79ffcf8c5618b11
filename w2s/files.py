"""Local file primitives every writer of the artifact root shares: atomic writes, directory fsync,
sha256 (memoised by stat). No project imports, so the store, the writer and the seals all build on
it without importing each other in a circle."""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from pathlib import Path

TMP_PREFIX = ".tmp-"


class UnsafePath(ValueError):
    """A path read from the artifact root (a manifest, a seal) that would leave its folder."""


def inside(relpath: str) -> str:
    """`relpath` itself when it names a place strictly inside a folder: relative, POSIX, normalised
    (no '', '.', '..' parts, no backslash or NUL). Manifests and seals on a shared root are written by
    whoever can write the root; a listed path is joined onto a local folder only after this check, so
    an absolute or '../' entry can never direct a download or a write outside it."""
    parts = relpath.split("/") if isinstance(relpath, str) else [""]
    if not relpath or relpath.startswith("/") or "\\" in relpath or "\0" in relpath or any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"{relpath!r} is not a relative path inside its folder")
    return relpath


def refuse_links(base: Path, path: Path) -> None:
    """Raises UnsafePath when a folder or file between `base` (itself may be a link: a root placed on
    another disk) and `path` is a symbolic link: one planted on a shared root would make this process
    write wherever it points."""
    try:
        parts = Path(path).relative_to(base).parts
    except ValueError:
        raise UnsafePath(f"{path} is not inside {base}") from None
    current = Path(base)
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise planted_link(current)


def planted_link(link: str | os.PathLike) -> UnsafePath:
    """The one-line refusal of a link found where this process was about to write."""
    return UnsafePath(f"{link} is a symbolic link: refusing to write through it (who planted it?)")


def refuse_links_in(base: Path, folder: Path) -> None:
    """`refuse_links(base, folder)`, and no link anywhere inside `folder` either: a stage's folder
    holds only files its own runs wrote, so a link found there was planted to be written through."""
    refuse_links(base, folder)
    for top, dirs, files in os.walk(folder):  # does not descend into linked folders
        for name in (*dirs, *files):
            if os.path.islink(path := os.path.join(top, name)):
                raise planted_link(path)


def private_folder(base: str | os.PathLike | None = None) -> Path:
    """`<base>/w2s-<uid>` (default base: the temp dir): this user's working folder in a shared place
    for staging, locks, downloads of remote roots and rendezvous files. Created 0700; refused with one
    line when it is a link, another user's, or open to others, since whoever can write it could plant
    resume state a run unpickles or a lock link it writes through."""
    import tempfile

    base = Path(base or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    folder = base / f"w2s-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UnsafePath(f"{folder} is not this user's private folder (a link, another user's, or open to others): "
                         "remove it, or point W2S_STAGING_DIR / TMPDIR elsewhere")
    return folder


def temp_beside(path: Path) -> Path:
    """A unique temporary name next to `path`, renamed onto it once whole."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def file_digest(path: Path, memo: dict | None = None) -> str:
    """sha256 of a local file; with `memo`, a file whose (size, mtime, inode) did not change since
    it was hashed is not read again."""
    stat = path.stat()
    tag = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if memo is not None and tag in memo:
        return memo[tag]
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    if memo is not None:
        memo[tag] = digest
    return digest
