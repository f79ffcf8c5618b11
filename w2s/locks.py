"""Inter-process exclusive locks on lock files (`fcntl.flock`).

The kernel drops an flock when its holder dies, SIGKILL included, so a killed run never leaves a
stale lock behind, and lock files are never deleted (deleting one while another process waits on
it would let a third process lock a new file of the same name). Used for one computation per
(stage, key) and for MLflow's one-time database migration.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from w2s.files import planted_link, refuse_links


@contextmanager
def exclusive(path: Path, on_wait: Callable[[], None] | None = None, within: Path | None = None) -> Iterator[None]:
    """Holds an exclusive lock on `path` (created if needed); `on_wait` is called once if another
    process holds it, before blocking until it is released. The lock file is opened without following
    a symbolic link, and with `within`, no folder between it and `path` may be one: a link planted
    where a lock lives would otherwise have this process truncate and write the file it points to."""
    if within is not None:
        refuse_links(within, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    if within is not None:
        refuse_links(within, path.parent)  # a link placed between the check and mkdir
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if path.is_symlink():
            raise planted_link(path) from error
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person looking
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
