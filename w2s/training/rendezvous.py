"""Where the training processes of one machine meet: a file store in a private folder, named in the
environment, instead of torch's TCPStore. Its own module, free of torch, so the trainer
(w2s/training/engine.py), the launcher and the multi-node Job (w2s/training/multinode.py) all read
it without importing each other."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from w2s.files import private_folder

RENDEZVOUS_ENV = "W2S_RENDEZVOUS_FILE"


def rendezvous_value(port: int) -> str:
    """`<port>:<store file>`: a store is used only by ranks whose MASTER_PORT is `port`, so one that
    leaks into another launcher's ranks (torchrun, the multi-node Job) through the environment is
    ignored (`rendezvous_store`)."""
    return f"{port}:{private_rendezvous_file()}"


def rendezvous_store() -> str | None:
    """This rank's file store, when its launcher made one for this very group."""
    port, _, path = os.environ.get(RENDEZVOUS_ENV, "").partition(":")
    return path if path and port == os.environ.get("MASTER_PORT") else None


def private_rendezvous_file() -> str:
    """Where the ranks of one machine meet: a file store in a fresh folder only this user can open
    (mkdtemp in w2s.files.private_folder), removed at exit. torch's default TCPStore listens on every
    interface (`*:MASTER_PORT`) for as long as the process group lives, i.e. from the first training
    stage to the end of the run; gloo's own sockets bind the loopback address. Several nodes cannot
    share a file: they meet over TCP (env://, w2s/training/multinode.py), inside the cluster's network."""
    base = private_folder()
    _sweep_dead(base)
    folder = tempfile.mkdtemp(prefix=f"rendezvous-{os.getpid()}-", dir=base)
    atexit.register(shutil.rmtree, folder, True)
    return str(Path(folder) / "store")


def _sweep_dead(base: Path) -> None:
    """Removes the rendezvous folders of this user's processes that died without their atexit
    (SIGKILL, OOM); the folder names the process that made it."""
    for folder in base.glob("rendezvous-*-*"):
        pid = folder.name.split("-")[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, as another user (the folder is ours, though: leave it)
            pass
