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


@contextmanager
def exclusive(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Holds an exclusive lock on `path` (created if needed); `on_wait` is called once if another
    process holds it, before blocking until it is released."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
