"""Deterministic fault injection for resume and retry tests: a real SIGKILL, or one exception.

    W2S_DIE_AT="scoring:1"        # die right after scoring wrote its 1st shard
    W2S_DIE_AT="student:3"        # die right after the student's 3rd optimiser step
    W2S_FAIL_ONCE="weights:0"     # raise at the start of the weights stage, once: the retry passes
    W2S_FAULT_DIR=/tmp/faults     # where W2S_FAIL_ONCE remembers that it fired (required with it)

Points are `<stage>:<n>`; a stage calls `checkpoint(stage, n)` as it makes progress, and every stage
task calls `checkpoint(stage, 0)` at the start of each attempt (w2s/orchestration/). The "once"
is a marker file per point in W2S_FAULT_DIR, so it holds across processes and retries. Unset (the
normal case) it costs two dictionary lookups. Never set them outside tests.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "W2S_DIE_AT"
ENV_FAIL_ONCE = "W2S_FAIL_ONCE"
ENV_FAULT_DIR = "W2S_FAULT_DIR"


class InjectedFailure(RuntimeError):
    """Raised by W2S_FAIL_ONCE: stands for a transient error (a lost node, a flaky mount)."""


def _matches(spec: str | None, stage: str, count: int) -> str | None:
    for point in (spec or "").split(","):
        name, _, at = point.strip().partition(":")
        if name == stage and at.isdigit() and int(at) == count:
            return f"{name}:{at}"
    return None


def checkpoint(stage: str, count: int) -> None:
    if _matches(os.environ.get(ENV), stage, count):
        os.kill(os.getpid(), signal.SIGKILL)
    point = _matches(os.environ.get(ENV_FAIL_ONCE), stage, count)
    if point:
        folder = os.environ.get(ENV_FAULT_DIR)
        if not folder:
            raise RuntimeError(f"{ENV_FAIL_ONCE} needs {ENV_FAULT_DIR} (where it records that it fired)")
        marker = Path(folder) / f"fired-{point.replace(':', '-')}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return
        raise InjectedFailure(f"{ENV_FAIL_ONCE}: injected failure at {point} (fires once)")
