"""Deterministic crash injection for resume tests: a real SIGKILL at a named point.

    W2S_DIE_AT="scoring:1"        # die right after scoring wrote its 1st shard
    W2S_DIE_AT="student:3"        # die right after the student's 3rd optimiser step

Points are `<stage>:<n>`; a stage calls `checkpoint(stage, n)` as it makes progress. Unset (the
normal case) it costs one dictionary lookup. Never set it outside tests.
"""

from __future__ import annotations

import os
import signal

ENV = "W2S_DIE_AT"


def checkpoint(stage: str, count: int) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    for point in spec.split(","):
        name, _, at = point.partition(":")
        if name == stage and at.isdigit() and int(at) == count:
            os.kill(os.getpid(), signal.SIGKILL)
