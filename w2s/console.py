"""A quiet console for `w2s run` and friends: one line per finished stage and one progress bar per
long stage on the terminal; everything else (Prefect's task-state lines, vLLM, transformers,
DeepSpeed and their child processes) goes to a per-run log file, whose path is printed at the end.
`--verbose` keeps it all on the terminal.

It works on file descriptors, not Python streams: fd 2 points at the log file while the run lasts,
so child processes (vLLM's engine, DeepSpeed's launcher) inherit it too; the terminal stays
reachable through a duplicate of the original fd 2, which the stage lines and w2s.progress bars use.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from w2s.artifacts import local_path_of

STAGES_LOGGER = "w2s.stages"  # one INFO record per finished stage: what the quiet console shows
_console: list[TextIO] = []  # the terminal while a quiet console is active (w2s.progress bars write here)


def terminal() -> TextIO | None:
    return _console[-1] if _console else None


def log_path(artifact_root: str, flow: str) -> Path:
    """<root>/logs/<flow>-<time>-<pid>.log on a local root; a local temp folder for remote roots."""
    local = local_path_of(artifact_root)
    folder = local / "logs" if local is not None else Path(tempfile.gettempdir()) / "w2s-logs"
    return folder / f"{flow}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


@contextmanager
def quiet_console(path: Path) -> Iterator[TextIO]:
    """Inside: fd 2 (and so sys.stderr and every child's stderr) appends to `path`; yields the
    terminal, where the w2s.stages lines and progress bars go."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    terminal_stream = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    with open(path, "a", buffering=1) as log_file:
        os.dup2(log_file.fileno(), 2)
        handler = logging.StreamHandler(terminal_stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        stages = logging.getLogger(STAGES_LOGGER)
        stages.addHandler(handler)
        stages.setLevel(logging.INFO)
        _console.append(terminal_stream)
        try:
            yield terminal_stream
        finally:
            _console.pop()
            stages.removeHandler(handler)
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            terminal_stream.close()
